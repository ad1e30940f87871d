"""The test battery every zoo model goes through (see tests/README.md for the oracles)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import dill
import torch
from torch import nn
from torch.utils import _pytree as pytree

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=False).items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.device.type != "meta":
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def outputs(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*args, **kwargs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    flat, _ = pytree.tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def roundtrip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=dill)
    buf.seek(0)
    return torch.load(buf, pickle_module=dill, weights_only=False)


def check_battery(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
                  ratio: float = 0.3, expect_prunable: bool = True) -> PruningIR:
    """IR builds and lints; ratio 0 is identical; uniform ``ratio`` prunes, keeps output
    shapes, reduces parameters, is slim ≡ masked (exact or with listed reasons, exact on
    the groups without reasons), runs backward; the user's model is unchanged; dill
    round-trips give the same pruning."""
    kwargs = kwargs or {}
    before = state_hash(model)
    ref = outputs(model, args, kwargs)
    ir = PruningIR(model, example_inputs=args, example_kwargs=kwargs)
    ir.lint()
    groups = ir.prunable_label_groups()
    assert bool(groups) == expect_prunable, ir.report()

    same = ir.prune(labels=UniformLabelSelector(0.0).select(ir))
    for a, b in zip(ref, outputs(same.model, args, kwargs), strict=True):
        assert torch.equal(a, b)

    labels = UniformLabelSelector(ratio).select(ir)
    assert bool(labels) == expect_prunable
    rep = verify_pruning(ir, labels)
    assert rep.exact or rep.inexact_reasons, f"inexact without a listed reason: {rep}"
    clean = [lab for lab in labels if not ir.label_groups()[lab.group].notes]
    if clean:
        rep_clean = verify_pruning(ir, clean)
        assert rep_clean.exact, f"groups without notes must prune exactly: {rep_clean}"

    pruned = ir.prune(labels=labels)
    pruned.lint()
    got = outputs(pruned.model, args, kwargs)
    assert [t.shape for t in got] == [t.shape for t in ref]
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in pruned.model.parameters())
    assert (n1 < n0) == expect_prunable

    # forward and backward through the slim model
    out = pruned.model(*args, **kwargs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    flat = [t for t in pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    sum(t.float().sum() for t in flat).backward()  # type: ignore[union-attr]
    assert any(p.grad is not None for p in pruned.model.parameters())

    assert state_hash(model) == before, "the user's model was modified"

    loaded = roundtrip(ir)
    again = UniformLabelSelector(ratio).select(loaded)
    assert again == labels
    reloaded_pruned = loaded.prune(labels=again)
    for a, b in zip(outputs(pruned.model, args, kwargs), outputs(reloaded_pruned.model, args, kwargs), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(got, outputs(roundtrip(pruned).model, args, kwargs), strict=True):
        assert torch.equal(a, b)
    return ir
