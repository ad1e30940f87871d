"""Export slim models: ``torch.export`` programs and ONNX files that compute what the slim model does.

A slim model without run-time literal patches exports like any module
(``torch.export.export``, with your ``dynamic_shapes``). A module whose ``forward`` holds channel
sizes as literals (``torch.split(x, [5, 8])``) is patched by forward hooks that rewrite those
literals as ATen calls are dispatched; ``torch.export`` records calls above that level, so it
would record the old literals. For such models :func:`export_pruned` first *bakes* the slim
model: :func:`torch.fx.experimental.proxy_tensor.make_fx` records the ATen calls the patched
model makes on the example inputs, with the new literals, into an ``fx.GraphModule``, and that is
exported, behind a wrapper that keeps the model's calling convention. A baked program is
specialised to the example inputs' shapes (and to the model's train/eval flags at export);
``dynamic_shapes`` is refused for it, naming the patched modules.

Every program is checked before it is returned: its outputs on the example inputs are compared
with the slim model's. :func:`export_onnx` writes the program as ONNX (the dynamo exporter) and,
when ``onnxruntime`` is installed, runs the file and compares it too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._rewrite.hooks import patch_of
from ._trace.run import flat_tensors
from .errors import InvalidInputError, RewriteError
from .ir import PruningIR, _as_call

__all__ = ["export_onnx", "export_pruned", "patched_modules"]

log = logging.getLogger(__name__)

RTOL = 1e-4
"""Relative tolerance of the checks (``|a - b| <= RTOL * max(1, max |a|)``): exported programs may
decompose ops differently (and ONNX Runtime runs its own kernels)."""


def patched_modules(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` that carry run-time literal-size patches."""
    return [path or "<root>" for path, m in model.named_modules() if patch_of(m) is not None]


def _inputs(pruned: PruningIR | nn.Module, example_inputs: Any, example_kwargs: dict[str, Any] | None
            ) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    if isinstance(pruned, PruningIR):
        model = pruned.model
        if example_inputs is None and example_kwargs is None:
            example_args, example_kw = pruned.snapshot().example
            return model, tuple(example_args), dict(example_kw)
    elif isinstance(pruned, nn.Module):
        model = pruned
    else:
        raise InvalidInputError(f"export needs a PruningIR (what ir.prune returns) or an nn.Module, got "
                                f"{type(pruned).__name__}.")
    if example_inputs is None and not example_kwargs:
        raise InvalidInputError(f"exporting {type(model).__name__} needs example inputs: pass example_inputs=(x,) "
                                "(or the PruningIR, whose example call is used).")
    args, kwargs = _as_call(example_inputs, example_kwargs)  # the forms PruningIR takes
    return model, args, kwargs


class _Baked(nn.Module):
    """The ATen calls a patched slim model made on the example inputs (``calls``, an
    ``fx.GraphModule`` taking the model's parameters and buffers, then the call's tensors),
    called with the model's own arguments; ``model`` holds the parameters (under their names)."""

    def __init__(self, model: nn.Module, graph: nn.Module, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.model = model
        self.calls = graph  # not "graph": exported programs are GraphModules, whose .graph is their own
        self._out_spec = spec

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        state = [t for _, t in _state(self.model)]
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        return pytree.tree_unflatten(list(self.calls(*state, *tensors)), self._out_spec)


def _state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """``torch.compiler.is_exporting()`` (and ``is_compiling()``) true for the block: model code
    takes the paths it takes under ``torch.export`` (Hugging Face mask builders skip their
    data-dependent shortcuts, which a recording of ATen calls cannot follow)."""
    flags = ("_is_exporting_flag", "_is_compiling_flag")
    before = [getattr(torch.compiler, f) for f in flags]
    for f in flags:
        setattr(torch.compiler, f, True)
    try:
        yield
    finally:
        for f, v in zip(flags, before, strict=True):
            setattr(torch.compiler, f, v)


def bake(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> nn.Module:
    """``model``'s ATen calls on these inputs, literal patches applied, as a module taking the
    model's arguments (its tensors are the inputs; other arguments are fixed to these values)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    leaves, spec_in = pytree.tree_flatten((args, kwargs))
    where = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    names = [n for n, _ in _state(model)]
    spec_out: list[pytree.TreeSpec] = []

    def run(*tensors: torch.Tensor) -> list[torch.Tensor]:
        state, inputs = tensors[: len(names)], tensors[len(names):]
        filled = list(leaves)
        for i, t in zip(where, inputs, strict=True):
            filled[i] = t
        a, k = pytree.tree_unflatten(filled, spec_in)
        out = torch.func.functional_call(model, dict(zip(names, state, strict=True)), a, k)
        flat, spec = pytree.tree_flatten(out)
        spec_out.append(spec)
        return flat

    with torch.no_grad(), _exporting():
        graph = make_fx(run)(*[t for _, t in _state(model)], *[leaves[i] for i in where])
    # tensors the model made from Python values (torch.tensor(...), aranges cached as plain
    # attributes) are recorded as plain attributes of the graph; buffers, so that torch.export
    # and the ONNX exporter carry them as state of the nested module
    for node in graph.graph.nodes:
        if node.op == "get_attr" and "." not in node.target:
            value = getattr(graph, node.target)
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) \
                    and node.target not in graph._buffers:
                delattr(graph, node.target)
                graph.register_buffer(node.target, value, persistent=False)
    return _Baked(model, graph, spec_out[-1])


def _close(want: list[torch.Tensor], got: list[torch.Tensor]) -> str | None:
    """Why ``got`` is not ``want`` within :data:`RTOL`, or ``None``."""
    if len(want) != len(got):
        return f"{len(got)} outputs instead of {len(want)}"
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        b = torch.as_tensor(b)
        if tuple(a.shape) != tuple(b.shape):
            return f"output {i} has shape {tuple(b.shape)} instead of {tuple(a.shape)}"
        if a.is_floating_point():
            a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
            scale = max(1.0, float(a64.abs().nan_to_num().max())) if a.numel() else 1.0
            diff = float((a64 - b64).abs().nan_to_num(nan=float("inf")).max()) if a.numel() else 0.0
            if diff > RTOL * scale:
                return f"output {i} differs by {diff:.3g} (scale {scale:.3g})"
        elif not torch.equal(a.cpu(), b.cpu().to(a.dtype)):
            return f"output {i} differs"
    return None


def _outputs(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        return flat_tensors(module(*args, **kwargs))


def export_pruned(pruned: PruningIR | nn.Module, example_inputs: Any = None,
                  example_kwargs: dict[str, Any] | None = None, *, dynamic_shapes: Any = None,
                  check: bool = True) -> torch.export.ExportedProgram:
    """A ``torch.export`` program of the slim model of ``pruned`` (an IR returned by
    ``ir.prune``, whose example call is used unless inputs are given, or the slim module).

    Models with run-time literal patches are baked first (see the module docstring): their
    program is specialised to the example shapes and ``dynamic_shapes`` raises
    :class:`~pruning_ir.errors.InvalidInputError`. ``check``: compare the program's outputs with
    the slim model's on the example inputs and raise :class:`~pruning_ir.errors.RewriteError`
    when they differ.
    """
    model, args, kwargs = _inputs(pruned, example_inputs, example_kwargs)
    patched = patched_modules(model)
    if not patched:
        program = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes)
    else:
        if dynamic_shapes is not None:
            raise InvalidInputError(
                f"{type(model).__name__}: modules {patched} hold channel sizes as literals in forward, patched at "
                "run time; their export is baked at the example inputs' shapes, so dynamic_shapes cannot be "
                "honoured. Export with dynamic_shapes=None (one program per input shape), or make those sizes "
                "attributes of the modules.")
        log.info("export: baking %s (literal patches in %s) at the example shapes", type(model).__name__, patched)
        program = torch.export.export(bake(model, args, kwargs), args, kwargs)
    if check:
        why = _close(_outputs(model, args, kwargs), _outputs(program.module(), args, kwargs))
        if why is not None:
            raise RewriteError(f"the exported program of {type(model).__name__} does not compute what the model "
                               f"does on the example inputs: {why}")
    return program


def export_onnx(pruned: PruningIR | nn.Module, path: str | Path, example_inputs: Any = None,
                example_kwargs: dict[str, Any] | None = None, *, dynamic_shapes: Any = None,
                check: bool = True) -> Path:
    """Write the slim model of ``pruned`` as ONNX to ``path`` (via :func:`export_pruned` and the
    dynamo exporter; needs ``onnx`` and ``onnxscript``). ``check``: also run the file in ONNX
    Runtime (when installed) on the example inputs and compare with the slim model."""
    model, args, kwargs = _inputs(pruned, example_inputs, example_kwargs)
    program = export_pruned(model, args, kwargs, dynamic_shapes=dynamic_shapes, check=check)
    out = Path(path)
    onnx_program = torch.onnx.export(program, args, kwargs=kwargs, dynamo=True, verbose=False)
    assert onnx_program is not None
    onnx_program.save(str(out))
    if check:
        why = onnx_mismatch(out, model, args, kwargs)
        if why is not None:
            raise RewriteError(f"the ONNX file of {type(model).__name__} does not compute what the model does on "
                               f"the example inputs in ONNX Runtime: {why}")
    return out


def onnx_mismatch(path: str | Path, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why ONNX Runtime's outputs of ``path`` differ from ``model``'s, or ``None`` (also when
    ``onnxruntime`` is not installed: then nothing is compared, logged)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime is not installed: the ONNX file was not run")
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(tensors):
        return f"the file takes {len(names)} inputs, the example call has {len(tensors)} tensors"
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors, strict=True)}
    got = [torch.from_numpy(x) for x in session.run(None, feed)]
    return _close(_outputs(model, args, kwargs), got)
