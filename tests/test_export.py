"""export_pruned / export_onnx: programs and ONNX files of slim models compute what the slim model does.

Oracles: the exported program's and ONNX Runtime's outputs equal the slim model's (within float
rounding of other kernels), on the example inputs and, for programs exported with dynamic
shapes, at another batch size; literal-patched models export baked, at their example shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from checks import outputs, random_selection
from toy_zoo import TOY_CASES

from pruning_ir import InvalidInputError, PruningIR
from pruning_ir.export import RTOL, export_onnx, export_pruned, patched_modules

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _pruned(name: str, seed: int = 0) -> tuple[PruningIR, tuple[torch.Tensor, ...]]:
    model, args = TOY_CASES[name]()
    ir = PruningIR(model, example_inputs=args)
    return ir.prune(labels=random_selection(ir, seed)), args


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and float((x - y).abs().max()) <= RTOL * max(1.0, float(x.abs().max()))
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["residual", "mha_torch", "gqa", "split_chunk", "literal_groups_slice"])
def test_program_computes_the_slim_model(name: str) -> None:
    pruned, args = _pruned(name)
    program = export_pruned(pruned)
    assert _same(outputs(pruned.model, args, {}), outputs(program.module(), args, {}))
    # the program's parameters are the slim model's (also when baked): same names, same values
    state = program.state_dict
    for key, p in pruned.model.state_dict().items():
        match = [v for k, v in state.items() if k.endswith(key)]
        assert match and torch.equal(match[0], p), key


def test_literal_patched_model_is_baked_at_its_shapes() -> None:
    pruned, args = _pruned("split_chunk")
    assert patched_modules(pruned.model) == ["<root>"]
    # torch.export alone records the literals as written: the program would not run
    with pytest.raises(Exception, match="split"):
        torch.export.export(pruned.model, args).module()(*args)
    batch = torch.export.Dim("batch", min=2, max=64)
    with pytest.raises(InvalidInputError, match="literals"):
        export_pruned(pruned, dynamic_shapes=({0: batch},))


def test_dynamic_batch_without_patches() -> None:
    pruned, args = _pruned("residual", seed=1)
    program = export_pruned(pruned, dynamic_shapes=({0: torch.export.Dim("batch", min=2, max=64)},))
    other = (torch.randn(5, *args[0].shape[1:]),)
    assert _same(outputs(pruned.model, other, {}), outputs(program.module(), other, {}))


@pytest.mark.parametrize("name", ["inception", "split_add"])
def test_onnx_runs_in_onnxruntime(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    pruned, args = _pruned(name)
    path = export_onnx(pruned, tmp_path / "slim.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: args[0].numpy()})
    assert _same(outputs(pruned.model, args, {}), [torch.from_numpy(g) for g in got])


def test_export_needs_inputs_for_a_bare_module() -> None:
    pruned, _ = _pruned("residual")
    with pytest.raises(InvalidInputError, match="example inputs"):
        export_pruned(pruned.model)
