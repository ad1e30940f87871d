"""Uniform selection: the same fraction of every prunable label group."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import InvalidInputError
from .base import LabelSelector, lowest_labels

if TYPE_CHECKING:
    from .._ir.labels import Label
    from ..ir import PruningIR


class UniformLabelSelector(LabelSelector):
    """Remove ``floor(pruning_ratio * size)`` labels from every prunable group.

    Within a group the lowest-scored labels go first: the IR's scores when a
    criterion has run, otherwise the mean absolute weight each label removes.
    Structured groups (attention heads, conv groups) are groups like any other,
    so heads are removed as whole units. At least one label per group is kept, and a group
    whose kept size must be a multiple of its ``step`` (a kernel's alignment) keeps the next
    multiple up.

    Args:
        pruning_ratio: fraction in ``[0, 1)`` of each group's labels to remove.
    """

    def __init__(self, pruning_ratio: float) -> None:
        if not isinstance(pruning_ratio, (int, float)) or isinstance(pruning_ratio, bool) or not (
                0.0 <= pruning_ratio < 1.0):
            raise InvalidInputError(
                f"UniformLabelSelector(pruning_ratio={pruning_ratio!r}): the ratio must be a number in "
                "[0, 1), the fraction of each group's labels to remove (e.g. 0.3)."
            )
        self.pruning_ratio = float(pruning_ratio)

    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        counts = {g.gid: math.floor(self.pruning_ratio * g.size + 1e-9)
                  for g in ir.snapshot(snapshot_name).prunable_groups}
        return lowest_labels(ir, counts, lambda g: 1, snapshot_name)  # one label kept, steps, no emptied axis

    def __repr__(self) -> str:
        return f"UniformLabelSelector(pruning_ratio={self.pruning_ratio})"
