"""The selector interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._ir.labels import Label
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


def align_selection(ir: PruningIR, labels: list[Label], snapshot_name: str = "main") -> list[Label]:
    """``labels`` with, in every group whose kept size must be a multiple of its ``step``, the
    highest-scoring removed labels put back until it is (see :attr:`LabelGroup.step`)."""
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
