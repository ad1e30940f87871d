"""The cheap baseline for budgets: binary search over a global score threshold."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import InvalidInputError, LatencyMeasurementError
from .base import LabelSelector, align_selection
from .budget import Evaluator, as_count, as_float, ranked_units

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
        confirmation_passes: for latency functions without a cost model (measurements), passes
            of the final side-by-side re-measurement (0: trust the search's measurements).
        tie_attention_head_dims: at every ``scaled_dot_product_attention`` whose q/k head size
            and v head size are two groups of equal size, rank their ``k``-th lowest-scored
            labels as one unit (by their mean score), so every prefix removes the same count from
            both and SDPA keeps its fused kernel (see
            :func:`~pruning_ir.selectors.budget.attention_head_ties`).

    Measurements are noisy and drift on a shared machine. In the search, a prefix that meets
    the target is measured a second time and counts only if both readings do. Before
    returning, the shortest prefixes read within 10% of the target and the best one that met it
    are re-measured side by side with the unpruned model, ``confirmation_passes`` times in
    rotating order (as :class:`~pruning_ir.KnapsackLabelSelector` does; ``confirmation`` lists
    them), and the shortest that meets the target that way is returned.
    """

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float], *,
                 min_kept: int = 1, verbose: bool = False, confirmation_passes: int = 2,
                 tie_attention_head_dims: bool = True) -> None:
        self.target_latency = as_float(target_latency, "target_latency")
        if not callable(latency_calculation_function):
            raise InvalidInputError(f"latency_calculation_function={latency_calculation_function!r} is not callable.")
        if not isinstance(min_kept, int) or min_kept < 1:
            raise InvalidInputError(f"min_kept={min_kept!r}: give an int >= 1.")
        as_count(confirmation_passes, "confirmation_passes", 0)
        self.latency_calculation_function = latency_calculation_function
        self.min_kept = min_kept
        self.verbose = verbose
        self.confirmation_passes = confirmation_passes
        self.tie_attention_head_dims = bool(tie_attention_head_dims)
        self.measurements = 0
        self.confirmation: list[dict[str, Any]] = []
        """The prefixes re-measured side by side with the unpruned model before returning:
        ``removed`` (how many units of the score ranking: labels, a tied pair of head-size
        labels counting as one), latency in the search and when re-measured, chosen."""

    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        self.confirmation = []
        ev = Evaluator(ir, snapshot_name, self.latency_calculation_function)
        target = self.target_latency
        ranking = ranked_units(ir, snapshot_name, lambda g: min(self.min_kept, g.size),
                               self.tie_attention_head_dims)
        if not len(ranking):
            return []

        def prefix(n: int) -> list[Label]:
            """The ``n`` lowest-ranked units, groups that prune in multiples rounded to them."""
            return align_selection(ir, ranking.prefix(n), snapshot_name)

        level = logging.INFO if self.verbose else logging.DEBUG
        if ev([]) <= target:
            return []
        total = len(ranking)
        smallest = ev(prefix(total))
        if math.isfinite(smallest) and smallest > target:  # even the smallest model is too slow
            warnings.warn(f"BinarySearchLatencyLabelSelector: target {target:.6g} is below the smallest model "
                          f"({smallest:.6g}); returning that model's labels.", RuntimeWarning, stacklevel=2)
            return prefix(total)
        # removing `lo` labels is over the budget; removing `hi` is within it or refused.
        # A refused candidate (LatencyMeasurementError) counts as over-pruned: search left of it.
        lo, hi = 0, total
        best = total if smallest <= target else None
        read: dict[int, float] = {total: smallest}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lat = ev(prefix(mid))
            if lat <= target:
                lat = ev.confirm(prefix(mid))
            read[mid] = lat
            log.log(level, "binary search: first %d ranked units removed -> %.6g (target %.6g)", mid, lat, target)
            if lat <= target:
                hi = best = mid
            elif math.isinf(lat) and lat > 0:
                hi = mid
            else:
                lo = mid
        if best is not None and ev.exact is None and self.confirmation_passes:
            best = self._confirm(ev, prefix, total, read, best, target, level)
        self.measurements = ev.measurements
        if best is None:
            raise LatencyMeasurementError(
                f"BinarySearchLatencyLabelSelector: no prefix of the score ranking met the target {target:.6g} "
                "(candidates were over the budget or refused by the latency function).")
        return prefix(best)

    def _confirm(self, ev: Evaluator, prefix: Callable[[int], list[Label]], total: int, read: dict[int, float],
                 best: int, target: float, level: int) -> int:
        """Re-measure the shortest prefixes read within 10% of the target and ``best`` side by
        side with the unpruned model (see :meth:`Evaluator.compare`); the shortest that meets
        the target that way, else the fastest with a warning."""
        near = sorted(n for n, lat in read.items() if lat <= target * 1.1 and n < best)[-2:]
        picks = [*near, best]
        got = ev.compare([prefix(n) for n in picks], self.confirmation_passes)
        self.confirmation = [{"removed": n, "search_latency": read[n], "latency": lat, "chosen": False}
                             for n, lat in zip(picks, got, strict=True)]
        for c in self.confirmation:
            log.log(level, "confirmation: first %d ranked units removed, latency %.6g in the search, %.6g side "
                    "by side with the unpruned model (target %.6g)", c["removed"], c["search_latency"], c["latency"],
                    target)
        ok = [i for i, lat in enumerate(got) if lat <= target]
        if ok:
            self.confirmation[ok[0]]["chosen"] = True
            return picks[ok[0]]
        # the machine sped up during the search: go on bisecting to the right of ``best``, every
        # prefix measured side by side with the unpruned model
        lo, hi = best, total
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lat = ev.compare([prefix(mid)], self.confirmation_passes)[0]
            self.confirmation.append({"removed": mid, "search_latency": read.get(mid, math.nan), "latency": lat,
                                      "chosen": False})
            log.log(level, "confirmation search: first %d ranked units removed -> %.6g side by side "
                    "(target %.6g)", mid, lat, target)
            if lat <= target:
                hi = mid
            else:
                lo = mid
        if hi == total and not any(c["removed"] == hi and c["latency"] <= target for c in self.confirmation):
            lat = ev.compare([prefix(total)], self.confirmation_passes)[0]
            self.confirmation.append({"removed": hi, "search_latency": read[hi], "latency": lat, "chosen": False})
            if lat > target:
                warnings.warn(f"BinarySearchLatencyLabelSelector: no prefix met the target {target:.6g} when "
                              f"re-measured side by side with the unpruned model; returning the smallest model "
                              f"({lat:.6g}).", RuntimeWarning, stacklevel=3)
        for c in reversed(self.confirmation):
            if c["removed"] == hi:
                c["chosen"] = True
                break
        return hi

    def __repr__(self) -> str:
        return (f"BinarySearchLatencyLabelSelector(target_latency={self.target_latency}, min_kept={self.min_kept}, "
                f"confirmation_passes={self.confirmation_passes}, "
                f"tie_attention_head_dims={self.tie_attention_head_dims})")
