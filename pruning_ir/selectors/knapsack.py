"""Budget-aware selection: keep the most score under a latency (or MACs, or parameter) budget.

Why a MILP solver (scipy's HiGHS ``milp``) and not a greedy ratio rule: within a group the
labels must go in score order (a chain of precedence constraints) and groups can demand a
width that is a multiple of 8; both are a few rows of a 0/1 program, and HiGHS solves the
resulting knapsack over tens of thousands of labels in seconds with a proven optimality gap,
where greedy rules have no guarantee once such side constraints exist. scipy is a wheel on
every platform torch supports; PuLP/CBC would add a binary solver download.

Latency is not linear in the labels (a conv's MACs are ``C_in x C_out x ...``: removing an
input channel saves less once output channels are gone), so the selector re-linearises, as
ENOT describes: each label's cost is recomputed at the previous solution, the knapsack is
solved again, and the candidate is measured with the user's function, until the measured
latency meets the target (within ``tolerance``) or ``max_iterations`` is reached.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sps
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from ..errors import InvalidInputError, LatencyMeasurementError
from .base import LabelSelector
from .budget import ConstraintArg, Evaluator, as_float, resolve_constraints

if TYPE_CHECKING:
    from .._ir.labels import Label
    from ..cost.macs import CostModel
    from ..ir import PruningIR

log = logging.getLogger(__name__)


class KnapsackLabelSelector(LabelSelector):
    """Remove the labels that keep the most total score while ``latency <= target_latency``.

    Args:
        target_latency: the budget, in the units ``latency_calculation_function`` returns.
        latency_calculation_function: ``fn(model) -> float`` for any candidate slim model
            (MACs, measured CPU/GPU latency, a remote device...). Built-ins live in
            :mod:`pruning_ir.latency`; those with a ``cost_model(ir, name)`` method (MACs,
            parameters, the per-layer lookup table) are evaluated from the IR without building
            models. A function may raise :class:`~pruning_ir.LatencyMeasurementError` to refuse
            a candidate (treated as over the budget).
        strict_label_order: within a group, labels are removed in ascending score order.
        constraint: per-group bounds on *kept* labels: a :class:`GroupConstraint` for every group,
            a dict ``group id -> GroupConstraint``, or ``fn(LabelGroup) -> GroupConstraint | None``.
        max_iterations: re-linearisation rounds (each one solve and one measurement).
        solver_execution_time_limit: seconds per solve (HiGHS keeps its best solution so far).
        verbose: log every round at INFO level (``logging.basicConfig(level=logging.INFO)``
            shows them); ``history`` keeps them in any case.
        channels_constraint: alias of ``constraint`` (ENOT's name).
        cost_model: the model used to linearise costs (default: the function's own cost model,
            else :class:`~pruning_ir.MacsModel`); its units need not match the function's.
        tolerance: stop when ``target * (1 - tolerance) <= latency <= target``.

    A candidate that meets the target is measured a second time (functions without a cost
    model) and accepted only if both measurements meet it.

    Bounds: a target at or above the unpruned model's latency returns no labels; a target
    below the smallest model the constraints allow returns that smallest model's labels with
    a warning. The returned selection never exceeds the target otherwise.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from pruning_ir import PruningIR, KnapsackLabelSelector, MacsModel
        >>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> ir = PruningIR(model, example_inputs=(torch.randn(1, 8),))
        >>> macs = MacsModel(ir)
        >>> fn = lambda m: float(sum(l.in_features * l.out_features for l in m if isinstance(l, nn.Linear)))
        >>> labels = KnapsackLabelSelector(0.5 * macs.baseline(), fn, verbose=False).select(ir)
        >>> macs.cost(labels) <= 0.5 * macs.baseline()
        True
    """

    def __init__(self, target_latency: float, latency_calculation_function: Callable[[nn.Module], float], *,
                 strict_label_order: bool = True, constraint: ConstraintArg = None, max_iterations: int = 15,
                 solver_execution_time_limit: float = 60, verbose: bool = True,
                 channels_constraint: ConstraintArg = None, cost_model: CostModel | None = None,
                 tolerance: float = 0.01) -> None:
        if channels_constraint is not None:
            if constraint is not None:
                raise InvalidInputError("KnapsackLabelSelector: pass constraint= or its alias channels_constraint=, "
                                        "not both.")
            constraint = channels_constraint
        self.target_latency = as_float(target_latency, "target_latency")
        if not callable(latency_calculation_function):
            raise InvalidInputError(f"latency_calculation_function={latency_calculation_function!r} is not callable: "
                                    "give a function model -> float.")
        if not isinstance(max_iterations, int) or max_iterations < 1:
            raise InvalidInputError(f"max_iterations={max_iterations!r}: give an int >= 1.")
        if as_float(solver_execution_time_limit, "solver_execution_time_limit") <= 0:
            raise InvalidInputError("solver_execution_time_limit must be > 0 seconds.")
        if not 0 <= tolerance < 1:
            raise InvalidInputError(f"tolerance={tolerance!r}: give a fraction in [0, 1).")
        self.latency_calculation_function = latency_calculation_function
        self.strict_label_order = strict_label_order
        self.constraint = constraint
        self.max_iterations = max_iterations
        self.solver_execution_time_limit = float(solver_execution_time_limit)
        self.verbose = verbose
        self.cost_model = cost_model
        self.tolerance = tolerance
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------ select
    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        from .._ir.labels import Label
        from ..cost.macs import MacsModel

        snap = ir.snapshot(snapshot_name)
        groups = snap.prunable_groups
        self.history = []
        if not groups:
            return []
        scores = {gid: s.double().numpy() for gid, s in ir.label_scores(snapshot_name).items()}
        bounds = resolve_constraints(self.constraint, groups)
        sizes = {g.gid: g.size for g in groups}
        ev = Evaluator(ir, snapshot_name, self.latency_calculation_function)
        proxy = self.cost_model or ev.exact or MacsModel(ir, snapshot_name)
        order = {gid: np.argsort(s, kind="stable") for gid, s in scores.items()}
        target = self.target_latency

        def labels_of(removed: dict[int, np.ndarray]) -> list[Label]:
            out: list[Label] = []
            for gid, m in removed.items():
                idx = np.flatnonzero(m).tolist()
                out.extend(map(Label, repeat(snap.owner, len(idx)), repeat(gid, len(idx)), idx))
            return out

        def kept_score(removed: dict[int, np.ndarray]) -> float:
            return float(sum(float(scores[g][~m].sum()) for g, m in removed.items()))

        base = ev([])
        if base <= target:
            self._log("target %.6g >= unpruned latency %.6g: nothing to remove", target, base)
            return []
        smallest = {gid: np.zeros(n, dtype=bool) for gid, n in sizes.items()}
        for gid, n in sizes.items():
            smallest[gid][order[gid][: n - bounds[gid][0]]] = True
        small_lat = ev(labels_of(smallest))
        if math.isfinite(small_lat) and small_lat > target:
            warnings.warn(f"KnapsackLabelSelector: target {target:.6g} is below the smallest model the constraints "
                          f"allow ({small_lat:.6g}); returning that smallest model's labels.", RuntimeWarning,
                          stacklevel=2)
            return labels_of(smallest)

        # Two loops. Inner: for a proxy budget B (cost-model units), solve the 0/1 program on a
        # linearisation of the proxy, re-linearised at the previous solution until the exact proxy
        # cost of the solution is just under B (model-free, cheap). Outer: measure that solution
        # with the latency function and move B by secant steps inside a bracket; B -> latency is
        # close to monotone because the inner loop makes the solution depend on B only.
        p_base = float(proxy.baseline())
        exact = ev.exact is not None
        budget = target * p_base / base
        b_lo, b_hi = (-math.inf, math.nan), (math.inf, math.nan)  # (B, latency): feasible / over
        best: tuple[float, dict[int, np.ndarray], float] | None = None
        point = {gid: np.zeros(n, dtype=bool) for gid, n in sizes.items()}
        inner_rounds = self.max_iterations if exact else 4
        for it in range(self.max_iterations if not exact else 1):
            t0 = time.perf_counter()
            new, status, solves = self._solve_budget(budget, point, scores, order, bounds, proxy, p_base,
                                                     labels_of, kept_score, inner_rounds)
            solve_s = time.perf_counter() - t0
            lat = ev(labels_of(new))
            if lat <= target:
                lat = ev.confirm(labels_of(new))
            ok = lat <= target
            self.history.append({"iteration": it, "proxy_budget": budget, "latency": lat, "feasible": ok,
                                 "removed": int(sum(m.sum() for m in new.values())), "kept_score": kept_score(new),
                                 "solver_status": status, "solver_s": solve_s, "solves": solves})
            self._log("knapsack round %d: proxy budget %.6g -> latency %.6g (target %.6g, %s), %d labels removed, "
                      "%d solves in %.2fs (%s)", it, budget, lat, target, "ok" if ok else "over",
                      self.history[-1]["removed"], solves, solve_s, status)
            if ok:
                if best is None or kept_score(new) > best[0] + 1e-12 * abs(best[0]):
                    best = (kept_score(new), {g: m.copy() for g, m in new.items()}, lat)
                if lat >= target * (1 - self.tolerance):
                    break
                if budget > b_lo[0]:
                    b_lo = (budget, lat)
            elif budget < b_hi[0]:
                b_hi = (budget, lat)
            nxt = self._next_budget(budget, lat, target, b_lo, b_hi, p_base / base)
            if nxt == budget:
                break
            budget, point = nxt, new
        if best is None and not math.isfinite(small_lat):
            raise LatencyMeasurementError(
                f"KnapsackLabelSelector: the latency function refused or exceeded the target {target:.6g} on every "
                f"candidate in {self.max_iterations} rounds, the smallest model included; relax the constraints "
                "or the target.")
        if best is None:
            warnings.warn(f"KnapsackLabelSelector: no candidate met the target {target:.6g} in {self.max_iterations} "
                          "rounds; returning the smallest model the constraints allow.", RuntimeWarning, stacklevel=2)
            return labels_of(smallest)
        chosen = best[1]
        if ev.exact is not None:
            chosen = self._add_back(chosen, scores, order, bounds, lambda r: ev(labels_of(r)), target)
        return labels_of(chosen)

    # ------------------------------------------------------------------------------------------ pieces
    def _log(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

    @staticmethod
    def _linear_costs(proxy: Any, labels: list[Label], removed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
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

    def _solve(self, scores: dict[int, np.ndarray], costs: dict[int, np.ndarray], order: dict[int, np.ndarray],
               bounds: dict[int, tuple[int, int, int]], need: float) -> tuple[dict[int, np.ndarray], str]:
        """0/1 program: minimise the removed score subject to ``sum(cost * x) >= need``."""
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
            slots = order[gid][: n - lo] if self.strict_label_order else np.arange(n)
            k = len(slots)
            spans[gid] = (start, slots)
            col_score.append(scores[gid][slots])
            col_cost.append(costs[gid][slots])
            col_slot.append(slots)
            idx = np.arange(start, start + k)
            if self.strict_label_order and k > 1:
                for a, b in zip(idx[1:], idx[:-1], strict=True):  # x_next <= x_prev
                    rows.append((np.array([a, b]), np.array([1.0, -1.0]), -np.inf, 0.0))
            if step > 1:
                int_vars.append((gi, step, lo // step, hi // step))
            else:
                rows.append((idx, np.ones(k), float(n - hi), float(n - lo)))
            start += k
        n_x = start
        n_z = len(int_vars)
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
                   integrality=np.ones(n_x + n_z), bounds=Bounds(lo_b, hi_b),
                   options={"time_limit": self.solver_execution_time_limit, "disp": False, "mip_rel_gap": 1e-4})
        if res.x is None:
            # infeasible (the budget needs more than every removable label saves under this
            # linearisation) or no solution within the time limit: take everything removable
            status = "infeasible" if res.status == 2 else f"no solution ({res.message})"
            x = self._max_removal(scores, order, bounds, spans)
        else:
            x = np.round(res.x[:n_x])
            status = "optimal" if res.status == 0 else str(res.message)
        out = {gid: np.zeros(len(scores[gid]), dtype=bool) for gid in gids}
        for gid in gids:
            s0, slots = spans[gid]
            out[gid][slots[x[s0:s0 + len(slots)] > 0.5]] = True
        return out, status

    def _solve_budget(self, budget: float, point: dict[int, np.ndarray], scores: dict[int, np.ndarray],
                      order: dict[int, np.ndarray], bounds: dict[int, tuple[int, int, int]], proxy: Any, p_base: float,
                      labels_of: Callable[[dict[int, np.ndarray]], list[Label]],
                      kept_score: Callable[[dict[int, np.ndarray]], float],
                      rounds: int) -> tuple[dict[int, np.ndarray], str, int]:
        """The most score with exact proxy cost <= ``budget``, by re-linearised solves from ``point``."""
        b_eff = budget
        lo, hi = (-math.inf, math.nan), (math.inf, math.nan)
        best: tuple[float, dict[int, np.ndarray]] | None = None
        new, status, solves = point, "not solved", 0
        for _ in range(rounds):
            labels = labels_of(point)
            p_now = float(proxy.cost_from_removed(point)) if labels else p_base
            costs = self._linear_costs(proxy, labels, point)
            # linear proxy around `point`: P(x) ~ p_now - sum_j c_j (x_j - x_point_j) <= b_eff
            need = p_now - b_eff + sum(float(costs[g][m].sum()) for g, m in point.items())
            new, status = self._solve(scores, costs, order, bounds, need)
            solves += 1
            p = float(proxy.cost_from_removed(new))
            if p <= budget:
                if best is None or kept_score(new) > best[0] + 1e-12 * abs(best[0]):
                    best = (kept_score(new), new)
                if p >= budget * (1 - self.tolerance / 2):
                    break
                if b_eff > lo[0]:
                    lo = (b_eff, p)
            elif b_eff < hi[0]:
                hi = (b_eff, p)
            nxt = self._next_budget(b_eff, p, budget, lo, hi, 1.0)
            # damped re-linearisation: halfway between the previous point and the new solution
            # (linearising at each new solution alone oscillates between two selections)
            nxt_point = self._midpoint(point, new, order) if self.strict_label_order else new
            if nxt == b_eff and all(np.array_equal(nxt_point[g], point[g]) for g in point):
                break
            b_eff, point = nxt, nxt_point
        return (best[1] if best is not None else new), status, solves

    @staticmethod
    def _next_budget(budget: float, lat: float, target: float, lo: tuple[float, float], hi: tuple[float, float],
                     units: float) -> float:
        """Secant step on budget -> latency inside the bracket ``lo`` (feasible) .. ``hi`` (over)."""
        if math.isfinite(lo[0]) and math.isfinite(hi[0]):
            (b1, l1), (b2, l2) = lo, hi
            if math.isfinite(l2) and l2 > l1:
                nxt = b1 + (target - l1) * (b2 - b1) / (l2 - l1)
            else:
                nxt = (b1 + b2) / 2
            if not b1 < nxt < b2:
                nxt = (b1 + b2) / 2
            return nxt
        if not math.isfinite(lat):  # refused: ask for a smaller model
            return budget * 0.9
        nxt = budget + (target - lat) * units
        if math.isfinite(lo[0]) and nxt <= lo[0]:
            nxt = lo[0] + abs(target - lat) * units
        if math.isfinite(hi[0]) and nxt >= hi[0]:
            nxt = hi[0] - abs(target - lat) * units
        return nxt

    @staticmethod
    def _midpoint(a: dict[int, np.ndarray], b: dict[int, np.ndarray],
                  order: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Per group, remove the mean of ``a``'s and ``b``'s counts, in score order."""
        out = {}
        for gid, ma in a.items():
            k = (int(ma.sum()) + int(b[gid].sum()) + 1) // 2
            m = np.zeros_like(ma)
            m[order[gid][:k]] = True
            out[gid] = m
        return out

    def _max_removal(self, scores: dict[int, np.ndarray], order: dict[int, np.ndarray],
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

    def _add_back(self, removed: dict[int, np.ndarray], scores: dict[int, np.ndarray], order: dict[int, np.ndarray],
                  bounds: dict[int, tuple[int, int, int]], cost: Callable[[dict[int, np.ndarray]], float],
                  target: float) -> dict[int, np.ndarray]:
        """Greedy improvement with exact costs: put labels back, highest score first, while the
        budget and the constraints hold (only when a step of 1 makes single labels legal)."""
        out = {g: m.copy() for g, m in removed.items()}
        cands = []
        for gid, m in out.items():
            if bounds[gid][2] != 1:
                continue
            if self.strict_label_order:
                prefix = [int(i) for i in order[gid] if m[i]]
                if prefix:
                    cands.append((float(scores[gid][prefix[-1]]), gid, prefix[-1]))
            else:
                cands.extend((float(scores[gid][i]), gid, int(i)) for i in np.flatnonzero(m))
        tries = 0
        while cands and tries < 256:
            cands.sort(reverse=True)
            _, gid, i = cands.pop(0)
            tries += 1
            if int((~out[gid]).sum()) + 1 > bounds[gid][1]:
                continue
            out[gid][i] = False
            if cost(out) > target:
                out[gid][i] = True
                continue
            if self.strict_label_order:
                prefix = [int(j) for j in order[gid] if out[gid][j]]
                if prefix:
                    cands.append((float(scores[gid][prefix[-1]]), gid, prefix[-1]))
        return out

    def __repr__(self) -> str:
        return (f"KnapsackLabelSelector(target_latency={self.target_latency}, strict_label_order="
                f"{self.strict_label_order}, max_iterations={self.max_iterations})")

