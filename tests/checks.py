"""The test battery every zoo model goes through (see tests/README.md for the oracles)."""

from __future__ import annotations

import hashlib
import io
import random
from typing import Any

import dill
import torch
from torch import nn
from torch.utils import _pytree as pytree

from pruning_ir import Label, PruningIR, UniformLabelSelector, verify_pruning
from pruning_ir.errors import LabelError


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


def random_selection(ir: PruningIR, seed: int) -> list[Label]:
    """What a selector could produce, drawn at random: every prunable group loses a random
    fraction (0.05-0.9) of its labels, a random subset of them, keeping at least one label and
    a multiple of the group's step."""
    gen = random.Random(seed)
    for _ in range(20):
        out: list[Label] = []
        for g in ir.prunable_label_groups():
            n = int(gen.uniform(0.05, 0.9) * g.size)
            n = min(n, g.size - g.step)
            n = g.size - -(-(g.size - n) // g.step) * g.step  # kept count rounded up to the step grid
            if n > 0:
                out += gen.sample(ir.labels(g), n)
        try:
            ir.check_labels(out)
        except LabelError as exc:  # a sliced/concatenated axis emptied (tested on its own)
            assert "none of" in str(exc), exc
            continue
        return out
    raise AssertionError("no valid random selection in 20 draws")


def check_equivalence(ir: PruningIR, labels: list[Label]) -> None:
    """slim ≡ masked on the example call, in train mode and at another batch size, outputs and
    gradients (exact or with listed reasons), and exact when only the selected labels of groups
    without notes are pruned, all together."""
    rep = verify_pruning(ir, labels)
    assert not [c for c in rep.checks if c.error], f"the slim model fails where the masked original runs: {rep}"
    assert rep.exact or rep.inexact_reasons, f"inexact without a listed reason: {rep}"
    groups = ir.label_groups()
    clean = [lab for lab in labels if not groups[lab.group].notes]
    if clean:
        rep_clean = verify_pruning(ir, clean)
        assert rep_clean.exact, f"groups without notes, pruned together, must prune exactly: {rep_clean}"


def check_battery(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
                  ratio: float = 0.3, expect_prunable: bool = True, random_seeds: int = 2) -> PruningIR:
    """IR builds and lints; ratio 0 is identical; uniform ``ratio`` and ``random_seeds`` random
    selections prune, keep output shapes, reduce parameters, are slim ≡ masked (outputs and
    gradients, example call, train mode and another batch size; exact or with listed reasons,
    exact on the groups without reasons pruned together), run backward; the user's model is
    unchanged; dill round-trips give the same pruning."""
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
    check_equivalence(ir, labels)
    for seed in range(random_seeds if expect_prunable else 0):
        check_equivalence(ir, random_selection(ir, seed))

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
