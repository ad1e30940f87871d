"""The selector interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .._ir.labels import Label, LabelGroup
    from ..ir import PruningIR


class LabelSelector(ABC):
    """Chooses labels to prune. ``select`` may take a while for search-based selectors."""

    @abstractmethod
    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        """Labels to remove from snapshot ``snapshot_name`` of ``ir``."""


def aligned_removal(n_remove: int, size: int, step: int) -> int:
    """``n_remove`` lowered (never raised) so that the kept count is a multiple of ``step``."""
    if step <= 1 or n_remove <= 0:
        return max(0, n_remove)
    kept = -(-(size - n_remove) // step) * step  # round the kept count up
    return max(0, size - kept)


def lowest_labels(ir: PruningIR, counts: Mapping[int, int], floor: Callable[[LabelGroup], int],
                  snapshot_name: str = "main") -> list[Label]:
    """Per group id, its ``count`` lowest-scored labels (lowered to whole steps; the group keeps at
    least ``floor(group)`` labels), aligned by :func:`align_selection` (no parameter axis emptied)."""
    ordered = {labs[0].group: labs for labs in ir.selector_label_groups(snapshot_name) if labs}
    groups = {g.gid: g for g in ir.snapshot(snapshot_name).prunable_groups}
    out: list[Label] = []
    for gid, k in counts.items():
        g = groups[gid]
        n = max(0, min(int(k), g.size - floor(g)))
        out += ordered[gid][:aligned_removal(n, g.size, g.step)]
    return align_selection(ir, out, snapshot_name)


def keep_axes_nonempty(ir: PruningIR, labels: list[Label], snapshot_name: str = "main") -> list[Label]:
    """``labels`` with, for every parameter axis made of parts of groups that they would empty
    (see :func:`~pruning_ir._ir.axes.emptied_axis`), the highest-scoring removed label that
    lies in it put back, until none is empty. A no-op (one cached lookup) for most models."""
    from .._ir.axes import emptied_axis, partial_param_axes, slot_map
    from .._ir.masks import removed_masks

    snap = ir.snapshot(snapshot_name)
    if not labels or not partial_param_axes(snap):
        return labels
    removed = removed_masks(snap, labels)
    if removed is None:  # invalid labels: prune() will say why
        return labels
    by_leaf = {g.leaf: g for g in snap.groups}
    scores = None
    out = list(labels)
    for _ in range(len(out)):
        hit = emptied_axis(snap, removed)
        if hit is None:
            break
        _, _, layout = hit
        scores = scores if scores is not None else ir.label_scores(snapshot_name)
        best: tuple[float, int, int] | None = None
        for leaf, mask in removed.items():
            g = by_leaf[leaf]
            slots = slot_map(snap.spaces, layout, leaf)
            inside = torch.zeros(mask.shape[0], dtype=torch.bool)
            inside[slots[slots >= 0]] = True  # the group's slots this axis holds
            for i in (mask & inside).nonzero().flatten().tolist():
                s = float(scores[g.gid][i]) if g.gid in scores else 0.0
                if best is None or s > best[0]:
                    best = (s, g.gid, i)
        if best is None:
            break
        _, gid, i = best
        removed[snap.groups[gid].leaf][i] = False
        out = [lab for lab in out if not (lab.group == gid and lab.index == i)]
    return out


def align_selection(ir: PruningIR, labels: list[Label], snapshot_name: str = "main") -> list[Label]:
    """``labels`` with, in every group whose kept size must be a multiple of its ``step``, the
    highest-scoring removed labels put back until it is (see :attr:`LabelGroup.step`), and no
    parameter axis emptied (:func:`keep_axes_nonempty`)."""
    labels = keep_axes_nonempty(ir, labels, snapshot_name)
    snap = ir.snapshot(snapshot_name)
    steps = {g.gid: g for g in snap.groups if g.step > 1}
    if not steps:
        return labels
    by_group: dict[int, list[Label]] = {}
    for lab in labels:
        if lab.group in steps:
            by_group.setdefault(lab.group, []).append(lab)
    if not by_group:
        return labels
    scores = ir.label_scores(snapshot_name)
    drop: set[Label] = set()
    for gid, labs in by_group.items():
        g = steps[gid]
        n = aligned_removal(len(labs), g.size, g.step)
        if n < len(labs):
            s = scores[gid]
            drop.update(sorted(labs, key=lambda lab: float(s[lab.index]))[n:])
    return [lab for lab in labels if lab not in drop]
