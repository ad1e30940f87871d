"""The equivalence oracle: slim model == original with the removed labels masked to zero."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._ir.axes import keep_mask
from ._ir.measure import named_tensors
from ._rewrite.verify import run_model
from .ir import _as_call

if TYPE_CHECKING:
    from ._ir.labels import Label
    from .ir import PruningIR


@dataclass
class VerificationReport:
    """Result of :func:`verify_pruning`.

    ``exact`` is true when every output matches within float rounding
    (``max_abs_diff <= 1e-4 * max(1, max |reference|)``). ``inexact_reasons``
    lists the places where exactness is not expected (a normalisation, a mean or a
    softmax over a pruned axis); they are reported, never hidden.
    """

    max_abs_diff: float
    max_reference: float
    exact: bool
    inexact_reasons: list[str] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def expected_exact(self) -> bool:
        return not self.inexact_reasons


def masked_model(ir: PruningIR, labels: Sequence[Label], name: str = "main") -> torch.nn.Module:
    """A copy of ``ir.model`` whose parameter entries touched by ``labels`` are zero."""
    snap = ir.snapshot(name)
    removed = ir.check_labels(labels, name)
    model = copy.deepcopy(ir.model)
    tensors = named_tensors(model)
    with torch.no_grad():
        for pname, vid in snap.graph.params.items():
            t = tensors[pname]
            for d, ax in enumerate(snap.graph.values[vid].axes):
                m = keep_mask(snap.spaces, ax, removed)
                if m is not None:
                    idx = (~m).nonzero().squeeze(1).to(t.device)
                    t.index_fill_(d, idx, 0)
    return model


def verify_pruning(ir: PruningIR, labels: Sequence[Label], example_inputs: Any = None,
                   example_kwargs: dict[str, Any] | None = None, name: str = "main") -> VerificationReport:
    """Prune ``labels`` and compare the slim model with the masked original.

    Runs on the IR's example inputs unless ``example_inputs`` are given.
    """
    snap = ir.snapshot(name)
    pruned = ir.prune(name, labels=labels)
    if example_inputs is not None or example_kwargs:
        call = _as_call(example_inputs, example_kwargs)
        snap_like = copy.copy(snap)
        snap_like.example = call
    else:
        snap_like = snap
    ref = run_model(masked_model(ir, labels, name), snap_like)
    got = run_model(pruned.model, snap_like)
    diff = 0.0
    scale = 0.0
    for r, g in zip(ref, got, strict=True):
        if r.is_floating_point():
            diff = max(diff, float((r.double() - g.double()).abs().max()) if r.numel() else 0.0)
            scale = max(scale, float(r.double().abs().max()) if r.numel() else 0.0)
        elif not torch.equal(r, g):
            diff = float("inf")
    removed_groups = {lab.group for lab in labels}
    reasons = sorted({n for g in snap.groups if g.gid in removed_groups for n in g.notes})
    n_before = sum(p.numel() for p in ir.model.parameters())
    n_after = sum(p.numel() for p in pruned.model.parameters())
    return VerificationReport(diff, scale, diff <= 1e-4 * max(1.0, scale), reasons, n_before, n_after)
