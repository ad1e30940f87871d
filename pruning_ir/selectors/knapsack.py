"""Budget-aware selection: keep the most score under a latency (or MACs, or parameter) budget.

Each round solves a knapsack exactly (up to a proven relative gap of 1e-4), not by a greedy
ratio rule: within a group the labels go in score order and groups can demand a width that is
a multiple of 8, and greedy rules have no guarantee once such side constraints exist.

* **Strict label order** (the default): a group's decision is one count, how many of its
  lowest-score labels go, from the counts its :class:`~pruning_ir.GroupConstraint` allows. The
  round is a multiple-choice knapsack over counts with one budget row, solved by
  :mod:`pruning_ir.selectors._mckp`: LP bound from the groups' convex hulls, reduced-cost
  fixing, then an exact dynamic programme over the few counts left (HiGHS when that frontier
  grows too large). Milliseconds per solve on ViT's 3.5k labels and ResNet-50's 11k, where the
  same program as a 0/1 MILP over labels (a precedence chain per group) took HiGHS about 5 s
  per solve on both (a third of the MACs: 15 solves in 73 s and 84 s, against 0.1 s and 0.7 s).
* **Free order**: the same count program when every group's labels cost the same (the ``k``
  lowest scores are then the best ``k`` labels anyway); otherwise the 0/1 program over labels,
  solved by scipy's HiGHS ``milp`` (a wheel on every platform torch supports; PuLP/CBC would add
  a binary solver download).

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
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import scipy.sparse as sps
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from ..errors import InvalidInputError, LatencyMeasurementError
from ._mckp import MCKPResult, solve_mckp
from .base import LabelSelector, align_selection
from .budget import ConstraintArg, Evaluator, as_float, attention_head_ties, resolve_constraints, tie_bounds

if TYPE_CHECKING:
    from .._ir.labels import Label
    from ..cost.macs import CostModel
    from ..ir import PruningIR

log = logging.getLogger(__name__)

_REL_GAP = 1e-4
"""Relative optimality gap of every round's program (on the removed score)."""

_INNER_ROUNDS = 15
"""Re-linearised solves per proxy budget (at least; ``max_iterations`` when larger)."""


def _uniform(costs: np.ndarray) -> bool:
    """Whether every label of a group costs the same (up to rounding)."""
    return costs.size == 0 or float(costs.max() - costs.min()) <= 1e-9 * max(float(np.abs(costs).max()), 1e-300)


Removal: TypeAlias = "dict[int, np.ndarray]"  # group id -> mask of the removed labels
Round: TypeAlias = "tuple[float, dict[int, np.ndarray], float]"  # (kept score, removal, latency)



def _key(removed: Removal) -> tuple[tuple[int, bytes], ...]:
    """A hashable identity of a selection."""
    return tuple((g, np.packbits(m).tobytes()) for g, m in sorted(removed.items()))


@dataclass
class _Search:
    """The state of one :meth:`KnapsackLabelSelector.select` call that its phases (search,
    confirmation, continuation) share: the problem, and the rounds measured so far."""

    ev: Evaluator
    owner: int
    scores: dict[int, np.ndarray]
    order: dict[int, np.ndarray]  # labels of each group in ascending score order
    bounds: dict[int, tuple[int, int, int]]
    proxy: Any  # the cost model the inner loop linearises
    p_base: float  # its cost of the unpruned model
    base: float  # the latency function's reading of the unpruned model
    target: float
    aim: float
    inner_rounds: int
    rounds: list[Round] = field(default_factory=list)
    starts: list[tuple[float, Removal]] = field(default_factory=list)  # (proxy budget, solution) per round

    def labels_of(self, removed: Removal) -> list[Label]:
        from .._ir.labels import Label

        out: list[Label] = []
        for gid, m in removed.items():
            idx = np.flatnonzero(m).tolist()
            out.extend(map(Label, repeat(self.owner, len(idx)), repeat(gid, len(idx)), idx))
        return out

    def kept_score(self, removed: Removal) -> float:
        return float(sum(float(self.scores[g][~m].sum()) for g, m in removed.items()))


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
        confirmation_passes: for latency functions without a cost model (measurements), passes
            of the final side-by-side re-measurement (0: trust the search's measurements).
        tie_attention_head_dims: keep the q/k and v head sizes of every
            ``scaled_dot_product_attention`` call equal (their groups remove the same number of
            labels; see :func:`~pruning_ir.selectors.budget.attention_head_ties`). Fused
            attention kernels need equal sizes: on CPU, SDPA with different ones runs its math
            kernel, 2-2.6x slower, so a "smaller" model could be slower. ``False`` lets the
            solver size them apart (more score kept at the same MACs).

    Measured latencies (functions without a cost model) are noisy, and on a shared machine they
    drift. In the search, a candidate that meets the target is measured a second time and
    counts as meeting it only if both measurements do. Before returning, the best few rounds
    (including rounds measured at most 10% over the target) are re-measured side by side with
    the unpruned model, ``confirmation_passes`` times in rotating order, and each gets its median
    ratio to the unpruned model times the unpruned model's latency as measured at the start: the
    highest-scoring one that meets the target that way is returned (``confirmation`` lists
    them). When none does, or the one chosen is faster than ``target * (1 - tolerance)``, the
    search goes on from those readings for up to ``max(2, max_iterations // 2)`` more rounds,
    each candidate measured side by side with the unpruned model (``history`` marks them
    ``side_by_side``), until one lands in the tolerance window; the highest-scoring candidate
    that met the target side by side is returned, and only if none did, the fastest one, with
    a warning. A machine-wide slowdown or speed-up since the start thus cancels in the final
    choice.
    On a shared machine, prefer a drift-cancelling function, ``MeasuredLatency(...,
    reference=unpruned_model)``, which also steers the search with drift-free readings (its
    readings are re-measured as they are, without the unpruned model next to them).

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
                 tolerance: float = 0.01, confirmation_passes: int = 2, tie_attention_head_dims: bool = True) -> None:
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
        if not isinstance(confirmation_passes, int) or isinstance(confirmation_passes, bool) or confirmation_passes < 0:
            raise InvalidInputError(f"confirmation_passes={confirmation_passes!r}: give an int >= 0.")
        self.latency_calculation_function = latency_calculation_function
        self.strict_label_order = strict_label_order
        self.constraint = constraint
        self.max_iterations = max_iterations
        self.solver_execution_time_limit = float(solver_execution_time_limit)
        self.verbose = verbose
        self.cost_model = cost_model
        self.tolerance = tolerance
        self.confirmation_passes = confirmation_passes
        self.tie_attention_head_dims = tie_attention_head_dims
        self._ties: list[tuple[int, int]] = []
        self.history: list[dict[str, Any]] = []
        """One entry per round: proxy budget, latency, feasible, labels removed, kept score, solver
        status and time, number of solves."""
        self.confirmation: list[dict[str, Any]] = []
        """The candidates re-measured side by side with the unpruned model before returning (see
        ``confirmation_passes``): kept score, latency in the search and when re-measured, chosen."""
        self._last_solve: MCKPResult | None = None

    # ------------------------------------------------------------------------------------------ select
    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        from ..cost.macs import MacsModel

        snap = ir.snapshot(snapshot_name)
        groups = snap.prunable_groups
        self.history = []
        self.confirmation = []
        if not groups:
            return []
        scores = {gid: s.double().numpy() for gid, s in ir.label_scores(snapshot_name).items()}
        bounds = resolve_constraints(self.constraint, groups)
        self._ties = tie_bounds(attention_head_ties(snap), bounds) if self.tie_attention_head_dims else []
        sizes = {g.gid: g.size for g in groups}
        ev = Evaluator(ir, snapshot_name, self.latency_calculation_function)
        proxy = self.cost_model or ev.exact or MacsModel(ir, snapshot_name)
        target = self.target_latency
        exact = ev.exact is not None
        base = ev.confirm([])  # two readings: the scale of every later comparison
        # the inner loop is model-free and each solve takes milliseconds: let it converge, so that
        # the outer loop's budget -> solution is (close to) a function.
        # Aim at the middle of the accepted window [target * (1 - tolerance), target], not its edge.
        st = _Search(ev, snap.owner, scores, {gid: np.argsort(s, kind="stable") for gid, s in scores.items()},
                     bounds, proxy, float(proxy.baseline()), base, target,
                     target if exact else target * (1 - self.tolerance / 2),
                     max(self.max_iterations, _INNER_ROUNDS))
        if base <= target:
            self._log("target %.6g >= unpruned latency %.6g: nothing to remove", target, base)
            return []
        smallest = {gid: np.zeros(n, dtype=bool) for gid, n in sizes.items()}
        for gid, n in sizes.items():
            smallest[gid][st.order[gid][: n - bounds[gid][0]]] = True
        small_lat = ev(st.labels_of(smallest))
        if math.isfinite(small_lat) and small_lat > target:
            warnings.warn(f"KnapsackLabelSelector: target {target:.6g} is below the smallest model the constraints "
                          f"allow ({small_lat:.6g}); returning that smallest model's labels.", RuntimeWarning,
                          stacklevel=2)
            return align_selection(ir, st.labels_of(smallest), snapshot_name)

        # Two loops. Inner: for a proxy budget B (cost-model units), solve the 0/1 program on a
        # linearisation of the proxy, re-linearised at the previous solution until the exact proxy
        # cost of the solution is just under B (model-free, cheap). Outer: measure that solution
        # with the latency function and move B by secant steps inside a bracket; B -> latency is
        # close to monotone because the inner loop makes the solution depend on B only.
        budget = st.aim * st.p_base / base
        feasible: list[tuple[float, float]] = []  # (B, latency) of the rounds that met the target
        over: list[tuple[float, float]] = [(st.p_base, base)]  # ... and of those over it: the baseline is one
        best: Round | None = None
        sides: list[bool] = []  # whether each round met the target
        point = {gid: np.zeros(n, dtype=bool) for gid, n in sizes.items()}
        for it in range(self.max_iterations if not exact else 1):
            t0 = time.perf_counter()
            new, status, solves = self._solve_budget(st, budget, point)
            new, status = self._fresh(st, new, status)
            solve_s = time.perf_counter() - t0
            lat = ev(st.labels_of(new))
            if lat <= target:
                lat = ev.confirm(st.labels_of(new))
            ok = lat <= target
            self._record(st, budget, new, lat, ok, status, solve_s, solves)
            # the outer loop's point: (budget, latency), or the solution's own proxy cost when the
            # budget was out of the solver's reach (it returned the smallest selection, whose
            # latency says nothing about that budget; the next secant would not go below it)
            cost = self.history[-1]["proxy_cost"] if status == "infeasible" else budget
            self._log("knapsack round %d: proxy budget %.6g -> latency %.6g (target %.6g, %s), %d labels removed, "
                      "%d solves in %.2fs (%s)", it, budget, lat, target, "ok" if ok else "over",
                      self.history[-1]["removed"], solves, solve_s, status)
            if ok:
                if best is None or st.rounds[-1][0] > best[0] + 1e-12 * abs(best[0]):
                    best = st.rounds[-1]
                if lat >= target * (1 - self.tolerance):
                    break
                feasible.append((cost, lat))
            else:
                over.append((cost, lat))
            sides.append(ok)
            nxt = self._next_budget(cost, lat, st.aim, feasible, over, st.p_base / base, sides)
            if nxt == budget:
                break
            # re-linearise from the solution of the nearest budget tried, not from the last one: a
            # linearisation at a far smaller model (costs shrink with the neighbours) can take
            # more than the inner rounds to come back
            budget, point = nxt, min(st.starts, key=lambda bs: abs(bs[0] - nxt))[1]
        if best is None and not math.isfinite(small_lat):
            raise LatencyMeasurementError(
                f"KnapsackLabelSelector: the latency function refused or exceeded the target {target:.6g} on every "
                f"candidate in {self.max_iterations} rounds, the smallest model included; relax the constraints "
                "or the target.")
        if not exact and self.confirmation_passes:
            confirmed = self._confirm(st, (0.0, smallest, small_lat))
            if confirmed is not None and not target * (1 - self.tolerance) <= confirmed[2] <= target:
                # nothing meets the target side by side (the machine sped up, or the search's
                # readings were lucky), or only with more than `tolerance` to spare: search on,
                # every candidate measured that way
                confirmed = self._continue(st, confirmed)
            best = confirmed or best
        if best is None:
            warnings.warn(f"KnapsackLabelSelector: no candidate met the target {target:.6g} in {self.max_iterations} "
                          "rounds; returning the smallest model the constraints allow.", RuntimeWarning, stacklevel=2)
            return align_selection(ir, st.labels_of(smallest), snapshot_name)
        chosen = best[1]
        if exact:
            chosen = self._add_back(chosen, scores, st.order, bounds, lambda r: ev(st.labels_of(r)), target)
        return align_selection(ir, st.labels_of(chosen), snapshot_name)

    def _confirm(self, st: _Search, smallest: Round) -> Round | None:
        """Re-measure the most promising rounds side by side with the unpruned model and keep the
        highest-scoring one whose drift-corrected latency meets the target (else the fastest one,
        which is over the target: the caller searches on).

        Candidates: the two highest-scoring rounds measured at most 10% over the target (a round
        read over the target while the machine was slow may well meet it), the best round that
        met it, and the round that met it with the most margin. Each of ``confirmation_passes``
        passes measures the unpruned model and every candidate once, in rotating order; a
        candidate's latency is its median ratio to the unpruned model in the same pass times the
        unpruned model's latency at the start (see :meth:`Evaluator.compare`).
        """
        uniq: dict[tuple[tuple[int, int], ...], Round] = {}
        for r in st.rounds:
            key = tuple((g, int(i)) for g, m in sorted(r[1].items()) for i in np.flatnonzero(m))
            uniq.setdefault(key, r)
        pool = sorted(uniq.values(), key=lambda r: -r[0])
        near = [r for r in pool if r[2] <= st.target * 1.1][:2]
        met = [r for r in pool if r[2] <= st.target]
        if not met and math.isfinite(smallest[2]):
            met = [smallest]
        picks = near + [r for r in (met[:1] + sorted(met, key=lambda r: r[2])[:1]) if not any(r is q for q in near)]
        picks = [r for i, r in enumerate(picks) if not any(r is q for q in picks[:i])]
        if not picks:
            return None
        got = st.ev.compare([st.labels_of(r[1]) for r in picks], self.confirmation_passes)
        budget_of = {id(m): b for b, m in st.starts}  # a start shares its solution dict with its round
        self.confirmation = [{"kept_score": r[0], "search_latency": r[2], "latency": lat,
                              "removed": int(sum(m.sum() for m in r[1].values())),
                              "proxy_budget": budget_of.get(id(r[1]), math.nan), "chosen": False}
                             for r, lat in zip(picks, got, strict=True)]
        ok = [i for i, lat in enumerate(got) if lat <= st.target]
        for c in self.confirmation:
            self._log("confirmation: kept score %.6g, latency %.6g in the search, %.6g side by side with the "
                      "unpruned model (target %.6g)", c["kept_score"], c["search_latency"], c["latency"], st.target)
        i = max(ok, key=lambda i: picks[i][0]) if ok else min(range(len(picks)), key=lambda i: got[i])
        self.confirmation[i]["chosen"] = True
        return picks[i][0], picks[i][1], got[i]

    def _continue(self, st: _Search, current: Round) -> Round:
        """Search on after a confirmation whose choice ``current`` is over the target (no candidate
        met it side by side) or under ``target * (1 - tolerance)``: the outer loop again, from
        the side-by-side readings (at their proxy budgets), each new candidate measured side by
        side with the unpruned model (:meth:`Evaluator.compare`), for at most
        ``max(2, max_iterations // 2)`` rounds or until one lands in the tolerance window.
        Returns the highest-scoring candidate that met the target side by side, else
        ``current`` (over the target: with a warning)."""
        target = st.target
        seen = [(c["proxy_budget"], c["latency"]) for c in self.confirmation if math.isfinite(c["proxy_budget"])]
        over = [p for p in seen if p[1] > target] + [(st.p_base, st.base)]
        feasible = [p for p in seen if p[1] <= target]
        sides: list[bool] = []
        budget, lat = max(feasible) if feasible else min(over)
        found: Round | None = current if current[2] <= target else None
        found_at = next(i for i, c in enumerate(self.confirmation) if c["chosen"])  # where `current` is listed
        for _ in range(max(2, self.max_iterations // 2)):
            nxt = self._next_budget(budget, lat, st.aim, feasible, over, st.p_base / st.base, sides)
            point = min(st.starts, key=lambda bs: abs(bs[0] - nxt))[1]
            budget = nxt
            t0 = time.perf_counter()
            new, status, solves = self._solve_budget(st, budget, point)
            new, status = self._fresh(st, new, status)
            solve_s = time.perf_counter() - t0
            lat = st.ev.compare([st.labels_of(new)], self.confirmation_passes)[0]
            ok = lat <= target
            removed = self._record(st, budget, new, lat, ok, status, solve_s, solves, side_by_side=True)
            kept = st.rounds[-1][0]
            if status == "infeasible":  # as in the search: the point is the smallest selection's cost
                budget = self.history[-1]["proxy_cost"]
            self.confirmation.append({"kept_score": kept, "search_latency": math.nan, "latency": lat,
                                      "removed": removed, "proxy_budget": budget, "chosen": False})
            self._log("confirmation search: proxy budget %.6g -> %.6g side by side (target %.6g), %d labels removed",
                      budget, lat, target, removed)
            sides.append(ok)
            if ok:
                feasible.append((budget, lat))
                if found is None or kept > found[0] + 1e-12 * abs(found[0]):
                    found, found_at = st.rounds[-1], len(self.confirmation) - 1
                if lat >= target * (1 - self.tolerance):
                    break
            else:
                over.append((budget, lat))
        if found is None:
            warnings.warn(f"KnapsackLabelSelector: no candidate met the target {target:.6g} when measured side by "
                          f"side with the unpruned model; returning the fastest one ({current[2]:.6g}).",
                          RuntimeWarning, stacklevel=3)
            found = current
        for i, c in enumerate(self.confirmation):
            c["chosen"] = i == found_at
        return found

    # ------------------------------------------------------------------------------------------ pieces
    def _record(self, st: _Search, budget: float, new: Removal, lat: float, ok: bool, status: str, solve_s: float,
                solves: int, side_by_side: bool = False) -> int:
        """Keep a measured round (in ``st.rounds``, ``st.starts`` and ``history``); returns the
        number of labels it removes."""
        removed = int(sum(m.sum() for m in new.values()))
        kept = st.kept_score(new)
        cost = float(st.proxy.cost_from_removed(new)) if removed else st.p_base
        st.rounds.append((kept, {g: m.copy() for g, m in new.items()}, lat))
        st.starts.append((budget, st.rounds[-1][1]))
        entry = {"iteration": len(self.history), "proxy_budget": budget, "proxy_cost": cost, "latency": lat,
                 "feasible": ok,
                 "removed": removed, "kept_score": kept, "solver_status": status, "solver_s": solve_s,
                 "solves": solves}
        if side_by_side:
            entry["side_by_side"] = True
        self.history.append(entry)
        return removed

    def _fresh(self, st: _Search, new: Removal, status: str) -> tuple[Removal, str]:
        """``new``, unless a round already measured it: then a selection between the closest
        measured rounds on both sides of the target (see :meth:`_between`), which the proxy
        could not produce (the budget -> solution map of the inner loop can jump over a range
        of latencies when the proxy is off there, and the outer loop would measure the same
        solution again)."""
        seen = {_key(r[1]) for r in st.rounds}
        if _key(new) not in seen:
            return new, status
        under = [r for r in st.rounds if r[2] <= st.target]
        above = [r for r in st.rounds if st.target < r[2] < math.inf]
        if not under or not above:
            return new, status
        a, b = max(under, key=lambda r: r[2]), min(above, key=lambda r: r[2])
        t = min(max((st.aim - a[2]) / (b[2] - a[2]), 0.1), 0.9)
        mid = self._between(a[1], b[1], t, st)
        if _key(mid) in seen:
            return new, status
        self._log("the solve repeated a measured selection: interpolating %.2f of the way between the rounds at "
                  "latency %.6g and %.6g", t, a[2], b[2])
        return mid, "interpolated"

    @staticmethod
    def _between(a: Removal, b: Removal, t: float, st: _Search) -> Removal:
        """Per group, the kept count ``t`` of the way from ``a``'s to ``b``'s (the nearest count
        between them that the group's constraint allows; both ends do), lowest scores removed
        first. Tied groups have equal bounds and counts in ``a`` and ``b``, so they stay equal."""
        out = {}
        for gid, ma in a.items():
            n = len(ma)
            ka, kb = n - int(ma.sum()), n - int(b[gid].sum())
            step = st.bounds[gid][2]
            lo, hi = min(ka, kb), max(ka, kb)
            allowed = [k for k in range(-(-lo // step) * step, hi + 1, step)] + [ka, kb]
            want = ka + t * (kb - ka)
            keep = min(allowed, key=lambda k: (abs(k - want), k))
            m = np.zeros_like(ma)
            m[st.order[gid][: n - keep]] = True
            out[gid] = m
        return out

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
        """Minimise the removed score subject to ``sum(cost * removed) >= need``.

        In score order (or in free order when every group's labels cost the same, where the
        ``k`` lowest scores are the best ``k`` labels anyway) a group's decision is a count: the
        multiple-choice knapsack of :mod:`._mckp`. Free order with unequal costs inside a group
        needs the 0/1 program over labels (:meth:`_solve_labels`)."""
        if self.strict_label_order or all(_uniform(costs[g]) for g in scores):
            return self._solve_counts(scores, costs, order, bounds, need)
        return self._solve_labels(scores, costs, order, bounds, need)

    def _solve_counts(self, scores: dict[int, np.ndarray], costs: dict[int, np.ndarray],
                      order: dict[int, np.ndarray], bounds: dict[int, tuple[int, int, int]],
                      need: float) -> tuple[dict[int, np.ndarray], str]:
        """The round's program over removal counts (labels go in ascending score order)."""
        partner = {b: a for a, b in self._ties if a in scores and b in scores}
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
        res = solve_mckp(w_opts, c_opts, need, rel_gap=_REL_GAP, time_limit=self.solver_execution_time_limit)
        self._last_solve = res
        out = {}
        for members, r, i in zip(classes, counts, res.choice, strict=True):
            for gid in members:
                m = np.zeros(len(scores[gid]), dtype=bool)
                m[order[gid][: int(r[i])]] = True
                out[gid] = m
        return {gid: out[gid] for gid in scores}, res.status

    def _solve_labels(self, scores: dict[int, np.ndarray], costs: dict[int, np.ndarray],
                      order: dict[int, np.ndarray], bounds: dict[int, tuple[int, int, int]],
                      need: float) -> tuple[dict[int, np.ndarray], str]:
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
        for a, b in self._ties:  # tied head sizes: both groups remove the same number of labels
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
                   integrality=np.ones(n_x + n_z), bounds=Bounds(lo_b, hi_b),
                   options={"time_limit": self.solver_execution_time_limit, "disp": False, "mip_rel_gap": _REL_GAP})
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

    def _solve_budget(self, st: _Search, budget: float, point: Removal) -> tuple[Removal, str, int]:
        """The most score with exact proxy cost <= ``budget``, by re-linearised solves from ``point``."""
        b_eff = budget
        lo, hi = (-math.inf, math.nan), (math.inf, math.nan)
        best: tuple[float, dict[int, np.ndarray]] | None = None
        new, status, solves = point, "not solved", 0
        for _ in range(st.inner_rounds):
            labels = st.labels_of(point)
            p_now = float(st.proxy.cost_from_removed(point)) if labels else st.p_base
            costs = self._linear_costs(st.proxy, labels, point)
            # linear proxy around `point`: P(x) ~ p_now - sum_j c_j (x_j - x_point_j) <= b_eff
            need = p_now - b_eff + sum(float(costs[g][m].sum()) for g, m in point.items())
            new, status = self._solve(st.scores, costs, st.order, st.bounds, need)
            solves += 1
            p = float(st.proxy.cost_from_removed(new))
            if p <= budget:
                kept = st.kept_score(new)
                if best is None or kept > best[0] + 1e-12 * abs(best[0]):
                    best = (kept, new)
                if p >= budget * (1 - self.tolerance / 2):
                    break
                if b_eff > lo[0]:
                    lo = (b_eff, p)
            elif b_eff < hi[0]:
                hi = (b_eff, p)
            nxt = self._inner_budget(b_eff, p, budget, lo, hi, 1.0)
            # damped re-linearisation: halfway between the previous point and the new solution
            # (linearising at each new solution alone oscillates between two selections)
            nxt_point = self._midpoint(point, new, st.order) if self.strict_label_order else new
            if nxt == b_eff and all(np.array_equal(nxt_point[g], point[g]) for g in point):
                break
            b_eff, point = nxt, nxt_point
        return (best[1] if best is not None else new), status, solves

    @staticmethod
    def _next_budget(budget: float, lat: float, aim: float, feasible: list[tuple[float, float]],
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
            return KnapsackLabelSelector._bracket_step(lo, hi, aim)
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

    @staticmethod
    def _bracket_step(lo: tuple[float, float], hi: tuple[float, float], target: float) -> float:
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

    @staticmethod
    def _inner_budget(budget: float, lat: float, target: float, lo: tuple[float, float], hi: tuple[float, float],
                      units: float) -> float:
        """The inner loop's next budget: secant step on budget -> proxy cost inside the bracket
        ``lo`` (feasible) .. ``hi`` (over)."""
        if math.isfinite(lo[0]) and math.isfinite(hi[0]):
            return KnapsackLabelSelector._bracket_step(lo, hi, target)
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
            if bounds[gid][2] != 1 or any(gid in t for t in self._ties):
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

