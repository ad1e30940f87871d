"""The cheap baseline for budgets: binary search over a global score threshold."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import InvalidInputError, LatencyMeasurementError
from .base import LabelSelector
from .budget import Evaluator, as_float

if TYPE_CHECKING:
    from .._ir.labels import Label
    from ..ir import PruningIR

log = logging.getLogger(__name__)


class BinarySearchLatencyLabelSelector(LabelSelector):
    """Remove every label whose score is below a global threshold, with the threshold found
    by binary search so that ``latency_calculation_function(slim) <= target_latency``.

    The labels of all prunable groups are ranked by score together (as in
    :class:`~pruning_ir.GlobalScoreLabelSelector`, each group keeping its ``min_kept``
    best labels); the search finds the longest prefix of that ranking that meets the budget,
    in ``log2(#labels)`` measurements. It ignores costs (a cheap label and an expensive one
    with the same score are alike), which is what :class:`~pruning_ir.KnapsackLabelSelector`
    adds. Latency functions with a ``cost_model`` (MACs, parameters) need no slim models.

    Args:
        target_latency: the budget, in the function's units.
        latency_calculation_function: ``fn(model) -> float``; may raise
            :class:`~pruning_ir.LatencyMeasurementError` (counted as over the budget).
        min_kept: labels each group keeps at least.
        verbose: log every probe at INFO level.
    """

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float], *,
                 min_kept: int = 1, verbose: bool = False) -> None:
        self.target_latency = as_float(target_latency, "target_latency")
        if not callable(latency_calculation_function):
            raise InvalidInputError(f"latency_calculation_function={latency_calculation_function!r} is not callable.")
        if not isinstance(min_kept, int) or min_kept < 1:
            raise InvalidInputError(f"min_kept={min_kept!r}: give an int >= 1.")
        self.latency_calculation_function = latency_calculation_function
        self.min_kept = min_kept
        self.verbose = verbose
        self.measurements = 0

    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        from .._ir.labels import Label

        snap = ir.snapshot(snapshot_name)
        ev = Evaluator(ir, snapshot_name, self.latency_calculation_function)
        target = self.target_latency
        cand_s, cand_g, cand_i = [], [], []
        for gid, s in ir.label_scores(snapshot_name).items():
            order = torch.argsort(s, stable=True)[: max(0, s.numel() - self.min_kept)]
            cand_s.append(s[order])
            cand_g.append(torch.full_like(order, gid))
            cand_i.append(order)
        if not cand_s:
            return []
        pick = torch.argsort(torch.cat(cand_s), stable=True)
        gids = torch.cat(cand_g)[pick].tolist()
        idx = torch.cat(cand_i)[pick].tolist()
        ranked = list(map(Label, repeat(snap.owner, len(gids)), gids, idx))
        level = logging.INFO if self.verbose else logging.DEBUG
        if ev([]) <= target:
            return []
        if math.isfinite(ev(ranked)) and ev(ranked) > target:  # even the smallest model is too slow
            warnings.warn(f"BinarySearchLatencyLabelSelector: target {target:.6g} is below the smallest model "
                          f"({ev(ranked):.6g}); returning that model's labels.", RuntimeWarning, stacklevel=2)
            return ranked
        # removing `lo` labels is over the budget; removing `hi` is within it or refused.
        # A refused candidate (LatencyMeasurementError) counts as over-pruned: search left of it.
        lo, hi = 0, len(ranked)
        best = len(ranked) if ev(ranked) <= target else None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lat = ev(ranked[:mid])
            if lat <= target:
                lat = ev.confirm(ranked[:mid])
            log.log(level, "binary search: %d labels removed -> %.6g (target %.6g)", mid, lat, target)
            if lat <= target:
                hi = best = mid
            elif math.isinf(lat) and lat > 0:
                hi = mid
            else:
                lo = mid
        self.measurements = ev.measurements
        if best is None:
            raise LatencyMeasurementError(
                f"BinarySearchLatencyLabelSelector: no prefix of the score ranking met the target {target:.6g} "
                "(candidates were over the budget or refused by the latency function).")
        return ranked[:best]

    def __repr__(self) -> str:
        return f"BinarySearchLatencyLabelSelector(target_latency={self.target_latency}, min_kept={self.min_kept})"
