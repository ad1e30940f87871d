"""The knapsack of one round: keep the most score while the linearised cost saves at least ``need``.

In score order (or in free order when every group's labels cost the same, where the ``k`` lowest
scores are the best ``k`` labels anyway) a group's decision is a count: the multiple-choice
knapsack of :mod:`pruning_ir.selectors._mckp`. Free order with unequal costs inside a group needs
the 0/1 program over labels, solved by scipy's HiGHS ``milp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sps
from scipy.optimize import Bounds as VarBounds
from scipy.optimize import LinearConstraint, milp

from .._mckp import solve_mckp
from .search import Bounds, Removal

if TYPE_CHECKING:
    from ..._ir.labels import Label

REL_GAP = 1e-4
"""Relative optimality gap of every round's program (on the removed score)."""


def uniform(costs: np.ndarray) -> bool:
    """Whether every label of a group costs the same (up to rounding)."""
    return costs.size == 0 or float(costs.max() - costs.min()) <= 1e-9 * max(float(np.abs(costs).max()), 1e-300)


@dataclass(frozen=True)
class Program:
    """How a round's program is solved: label order, groups tied to remove equal counts, the
    solver's time limit per solve."""

    strict_label_order: bool = True
    ties: tuple[tuple[int, int], ...] = ()
    time_limit: float = 60.0

    def solve(self, scores: dict[int, np.ndarray], costs: dict[int, np.ndarray], order: dict[int, np.ndarray],
              bounds: Bounds, need: float) -> tuple[Removal, str]:
        """Minimise the removed score subject to ``sum(cost * removed) >= need``."""
        if self.strict_label_order or all(uniform(costs[g]) for g in scores):
            return solve_counts(scores, costs, order, bounds, need, self.ties, self.time_limit)
        return solve_labels(scores, costs, order, bounds, need, self.ties, self.time_limit, strict=False)


def linear_costs(proxy: Any, labels: list[Label], removed: Removal) -> dict[int, np.ndarray]:
    """Per-label savings at the current selection; a removed label gets what putting it back
    would cost (the mean saving of its group's kept labels)."""
    saving = proxy.label_costs(labels)
    out: dict[int, np.ndarray] = {}
    for gid, m in removed.items():
        c = np.asarray(saving[gid], dtype=np.float64).copy()
        kept = ~m
        if m.any():
            c[m] = float(c[kept].mean()) if kept.any() else 0.0
        out[gid] = np.maximum(c, 0.0)
    return out


def solve_counts(scores: dict[int, np.ndarray], costs: dict[int, np.ndarray], order: dict[int, np.ndarray],
                 bounds: Bounds, need: float, ties: Sequence[tuple[int, int]] = (),
                 time_limit: float = 60.0) -> tuple[Removal, str]:
    """The round's program over removal counts (labels go in ascending score order)."""
    partner = {b: a for a, b in ties if a in scores and b in scores}
    classes = [[gid] + [b for b, a in partner.items() if a == gid] for gid in scores if gid not in partner]
    counts, w_opts, c_opts = [], [], []
    for members in classes:  # a tied pair is one class: both groups remove the same count
        n = len(scores[members[0]])
        lo, hi, step = bounds[members[0]]
        r = n - np.arange(lo, hi + 1, step)[::-1]  # removed counts, ascending
        w_sum, c_sum = np.zeros(len(r)), np.zeros(len(r))
        for gid in members:
            w_sum += np.concatenate([[0.0], np.cumsum(scores[gid][order[gid]])])[r]
            c_sum += np.concatenate([[0.0], np.cumsum(costs[gid][order[gid]])])[r]
        counts.append(r)
        w_opts.append(w_sum)
        c_opts.append(c_sum)
    res = solve_mckp(w_opts, c_opts, need, rel_gap=REL_GAP, time_limit=time_limit)
    out = {}
    for members, r, i in zip(classes, counts, res.choice, strict=True):
        for gid in members:
            m = np.zeros(len(scores[gid]), dtype=bool)
            m[order[gid][: int(r[i])]] = True
            out[gid] = m
    return {gid: out[gid] for gid in scores}, res.status


def solve_labels(scores: dict[int, np.ndarray], costs: dict[int, np.ndarray], order: dict[int, np.ndarray],
                 bounds: Bounds, need: float, ties: Sequence[tuple[int, int]] = (), time_limit: float = 60.0,
                 strict: bool = True) -> tuple[Removal, str]:
    """0/1 program over labels: minimise the removed score subject to ``sum(cost * x) >= need``
    (precedence rows ``x_next <= x_prev`` in strict order, an integer per stepped group)."""
    gids = list(scores)
    col_score: list[np.ndarray] = []
    col_cost: list[np.ndarray] = []
    col_slot: list[np.ndarray] = []
    rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []  # (cols, coefs, lb, ub)
    int_vars: list[tuple[int, int, int, int]] = []  # (gid position, step, z_lo, z_hi)
    start = 0
    spans = {}
    for gi, gid in enumerate(gids):
        n = len(scores[gid])
        lo, hi, step = bounds[gid]
        slots = order[gid][: n - lo] if strict else np.arange(n)
        k = len(slots)
        spans[gid] = (start, slots)
        col_score.append(scores[gid][slots])
        col_cost.append(costs[gid][slots])
        col_slot.append(slots)
        idx = np.arange(start, start + k)
        if strict and k > 1:
            for a, b in zip(idx[1:], idx[:-1], strict=True):  # x_next <= x_prev
                rows.append((np.array([a, b]), np.array([1.0, -1.0]), -np.inf, 0.0))
        if step > 1:
            int_vars.append((gi, step, lo // step, hi // step))
        else:
            rows.append((idx, np.ones(k), float(n - hi), float(n - lo)))
        start += k
    n_x = start
    n_z = len(int_vars)
    for a, b in ties:  # tied head sizes: both groups remove the same number of labels
        if a in spans and b in spans:
            (sa, slots_a), (sb, slots_b) = spans[a], spans[b]
            cols = np.concatenate([np.arange(sa, sa + len(slots_a)), np.arange(sb, sb + len(slots_b))])
            rows.append((cols, np.concatenate([np.ones(len(slots_a)), -np.ones(len(slots_b))]), 0.0, 0.0))
    for zi, (gi, step, _zl, _zh) in enumerate(int_vars):
        gid = gids[gi]
        s0, slots = spans[gid]
        idx = np.arange(s0, s0 + len(slots))
        n = len(scores[gid])  # sum x + step * z = n
        rows.append((np.append(idx, n_x + zi), np.append(np.ones(len(idx)), float(step)), float(n), float(n)))
    obj_s = np.concatenate(col_score) if col_score else np.zeros(0)
    scale_s = float(np.abs(obj_s).max()) if obj_s.size else 1.0
    obj = np.concatenate([obj_s / (scale_s or 1.0), np.zeros(n_z)])
    cost_vec = np.concatenate(col_cost) if col_cost else np.zeros(0)
    scale_c = float(cost_vec.max()) if cost_vec.size and cost_vec.max() > 0 else 1.0
    data, ri, ci, lbs, ubs = [], [], [], [], []
    all_rows = [(np.arange(n_x), cost_vec / scale_c, need / scale_c, np.inf), *rows]
    for r, (cols, coefs, lb, ub) in enumerate(all_rows):
        ri.append(np.full(len(cols), r))
        ci.append(cols)
        data.append(coefs)
        lbs.append(lb)
        ubs.append(ub)
    a = sps.csr_array((np.concatenate(data), (np.concatenate(ri), np.concatenate(ci))),
                      shape=(len(all_rows), n_x + n_z))
    lo_b = np.concatenate([np.zeros(n_x), np.array([z[2] for z in int_vars], dtype=float)])
    hi_b = np.concatenate([np.ones(n_x), np.array([z[3] for z in int_vars], dtype=float)])
    res = milp(obj, constraints=LinearConstraint(a, np.array(lbs), np.array(ubs)),
               integrality=np.ones(n_x + n_z), bounds=VarBounds(lo_b, hi_b),
               options={"time_limit": time_limit, "disp": False, "mip_rel_gap": REL_GAP})
    if res.x is None:
        # infeasible (the budget needs more than every removable label saves under this
        # linearisation) or no solution within the time limit: take everything removable
        status = "infeasible" if res.status == 2 else f"no solution ({res.message})"
        x = _max_removal(scores, order, bounds, spans)
    else:
        x = np.round(res.x[:n_x])
        status = "optimal" if res.status == 0 else str(res.message)
    out = {gid: np.zeros(len(scores[gid]), dtype=bool) for gid in gids}
    for gid in gids:
        s0, slots = spans[gid]
        out[gid][slots[x[s0:s0 + len(slots)] > 0.5]] = True
    return out, status


def _max_removal(scores: dict[int, np.ndarray], order: dict[int, np.ndarray],
                 bounds: dict[int, tuple[int, int, int]], spans: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
    n_x = sum(len(s) for _, s in spans.values())
    x = np.zeros(n_x)
    for gid, (s0, slots) in spans.items():
        n = len(scores[gid])
        drop = set(order[gid][: n - bounds[gid][0]].tolist())
        for j, slot in enumerate(slots.tolist()):
            if slot in drop:
                x[s0 + j] = 1.0
    return x
