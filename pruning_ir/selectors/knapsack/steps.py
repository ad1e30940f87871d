"""Budget steps: the outer loop's next proxy budget from measured rounds, and the inner loop that
finds the most score within a proxy budget by re-linearised solves (ENOT's re-linearisation:
each label's cost recomputed at the previous solution)."""

from __future__ import annotations

import math

import numpy as np

from .search import Removal, Search, midpoint
from .solvers import Program, linear_costs


def next_budget(budget: float, lat: float, aim: float, feasible: list[tuple[float, float]],
                 over: list[tuple[float, float]], units: float, sides: list[bool]) -> float:
    """The outer loop's next proxy budget from the ``(budget, latency)`` points measured so far
    (``feasible``: met the target; ``over``: did not, the unpruned model included).

    Inside a bracket (a feasible point below an over point): a secant step towards ``aim``,
    or bisection when the last two rounds fell on the same side (a secant step from an end
    that does not move can creep towards the target for many rounds). With over points only:
    the secant through the two lowest, i.e. the proxy's scale calibrated on the real latency
    (a proxy that predicts too much saving, like the latency lookup table on a loaded CPU,
    then costs one round less)."""
    lo = max(feasible, default=(-math.inf, math.nan))
    hi = min(over, default=(math.inf, math.nan))
    if not math.isfinite(lat):  # refused: ask for a smaller model
        return budget * 0.9 if not math.isfinite(lo[0]) else (lo[0] + budget) / 2
    if math.isfinite(lo[0]) and math.isfinite(hi[0]):
        if len(sides) >= 2 and sides[-1] == sides[-2] and lo[0] < hi[0]:
            return (lo[0] + hi[0]) / 2
        return bracket_step(lo, hi, aim)
    finite = sorted(p for p in over if math.isfinite(p[1]))
    if len(finite) >= 2 and finite[1][1] > finite[0][1] and finite[1][0] > finite[0][0]:
        (b1, l1), (b2, l2) = finite[0], finite[1]
        # budget per unit of latency: measured, but within [1/3, 3] x the proportional one
        # (two nearby points can differ by noise alone; their slope then means nothing)
        slope = min(max((b2 - b1) / (l2 - l1), units / 3), 3 * units)
        return max(b1 + (aim - l1) * slope, 0.5 * b1)
    nxt = budget + (aim - lat) * units
    if math.isfinite(lo[0]) and nxt <= lo[0]:
        nxt = lo[0] + abs(aim - lat) * units
    return nxt


def bracket_step(lo: tuple[float, float], hi: tuple[float, float], target: float) -> float:
    """Secant step between a feasible point ``lo`` and an over point ``hi`` (bisection when the
    step leaves the bracket or the latencies are not ordered)."""
    (b1, l1), (b2, l2) = lo, hi
    if math.isfinite(l2) and l2 > l1:
        nxt = b1 + (target - l1) * (b2 - b1) / (l2 - l1)
    else:
        nxt = (b1 + b2) / 2
    if not b1 < nxt < b2:
        nxt = (b1 + b2) / 2
    return nxt


def inner_budget(budget: float, lat: float, target: float, lo: tuple[float, float], hi: tuple[float, float],
                  units: float) -> float:
    """The inner loop's next budget: secant step on budget -> proxy cost inside the bracket
    ``lo`` (feasible) .. ``hi`` (over)."""
    if math.isfinite(lo[0]) and math.isfinite(hi[0]):
        return bracket_step(lo, hi, target)
    nxt = budget + (target - lat) * units
    if math.isfinite(lo[0]) and nxt <= lo[0]:
        nxt = lo[0] + abs(target - lat) * units
    if math.isfinite(hi[0]) and nxt >= hi[0]:
        nxt = hi[0] - abs(target - lat) * units
    return nxt


def solve_budget(st: Search, program: Program, budget: float, point: Removal, tolerance: float
                 ) -> tuple[Removal, str, int]:
    """The most score with exact proxy cost <= ``budget``, by re-linearised solves from ``point``."""
    b_eff = budget
    lo, hi = (-math.inf, math.nan), (math.inf, math.nan)
    best: tuple[float, dict[int, np.ndarray]] | None = None
    new, status, solves = point, "not solved", 0
    for _ in range(st.inner_rounds):
        labels = st.labels_of(point)
        p_now = float(st.proxy.cost_from_removed(point)) if labels else st.p_base
        costs = linear_costs(st.proxy, labels, point)
        # linear proxy around `point`: P(x) ~ p_now - sum_j c_j (x_j - x_point_j) <= b_eff
        need = p_now - b_eff + sum(float(costs[g][m].sum()) for g, m in point.items())
        new, status = program.solve(st.scores, costs, st.order, st.bounds, need)
        solves += 1
        p = float(st.proxy.cost_from_removed(new))
        if p <= budget:
            kept = st.kept_score(new)
            if best is None or kept > best[0] + 1e-12 * abs(best[0]):
                best = (kept, new)
            if p >= budget * (1 - tolerance / 2):
                break
            if b_eff > lo[0]:
                lo = (b_eff, p)
        elif b_eff < hi[0]:
            hi = (b_eff, p)
        nxt = inner_budget(b_eff, p, budget, lo, hi, 1.0)
        # damped re-linearisation: halfway between the previous point and the new solution
        # (linearising at each new solution alone oscillates between two selections)
        nxt_point = midpoint(point, new, st.order) if program.strict_label_order else new
        if nxt == b_eff and all(np.array_equal(nxt_point[g], point[g]) for g in point):
            break
        b_eff, point = nxt, nxt_point
    return (best[1] if best is not None else new), status, solves
