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
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ...errors import InvalidInputError, LatencyMeasurementError
from ..base import LabelSelector, align_selection
from ..budget import ConstraintArg, Evaluator, as_count, as_float, attention_head_ties, resolve_constraints, tie_bounds
from .confirm import confirm, search_on
from .search import Removal, Round, Search, fresh
from .solvers import Program
from .steps import next_budget, solve_budget

if TYPE_CHECKING:
    from ..._ir.labels import Label
    from ...cost.base import CostModel
    from ...ir import PruningIR

log = logging.getLogger(__name__)

INNER_ROUNDS = 15
"""Re-linearised solves per proxy budget (at least; ``max_iterations`` when larger)."""


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
        as_count(confirmation_passes, "confirmation_passes", 0)
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

    # ------------------------------------------------------------------------------------------ select
    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list[Label]:
        from ...cost.macs import MacsModel

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
        st = Search(ev, snap.owner, scores, {gid: np.argsort(s, kind="stable") for gid, s in scores.items()},
                     bounds, proxy, float(proxy.baseline()), base, target,
                     target if exact else target * (1 - self.tolerance / 2),
                     max(self.max_iterations, INNER_ROUNDS))
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
            new, status, solves = solve_budget(st, self.program(), budget, point, self.tolerance)
            new, status = fresh(st, new, status, self._log)
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
                if best is None or st.rounds[-1].kept > best.kept + 1e-12 * abs(best.kept):
                    best = st.rounds[-1]
                if lat >= target * (1 - self.tolerance):
                    break
                feasible.append((cost, lat))
            else:
                over.append((cost, lat))
            sides.append(ok)
            nxt = next_budget(cost, lat, st.aim, feasible, over, st.p_base / base, sides)
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
            confirmed = confirm(self, st, Round(0.0, smallest, small_lat))
            if confirmed is not None and not target * (1 - self.tolerance) <= confirmed.latency <= target:
                # nothing meets the target side by side (the machine sped up, or the search's
                # readings were lucky), or only with more than `tolerance` to spare: search on,
                # every candidate measured that way
                confirmed = search_on(self, st, confirmed)
            best = confirmed or best
        if best is None:
            warnings.warn(f"KnapsackLabelSelector: no candidate met the target {target:.6g} in {self.max_iterations} "
                          "rounds; returning the smallest model the constraints allow.", RuntimeWarning, stacklevel=2)
            return align_selection(ir, st.labels_of(smallest), snapshot_name)
        chosen = best.removed
        if exact:
            chosen = self._add_back(chosen, scores, st.order, bounds, lambda r: ev(st.labels_of(r)), target)
        return align_selection(ir, st.labels_of(chosen), snapshot_name)

    def program(self) -> Program:
        """How this selector's rounds are solved (order, tied groups, time limit)."""
        return Program(self.strict_label_order, tuple(self._ties), self.solver_execution_time_limit)

    def _record(self, st: Search, budget: float, new: Removal, lat: float, ok: bool, status: str, solve_s: float,
                solves: int, side_by_side: bool = False) -> int:
        """Keep a measured round (in ``st.rounds``, ``st.starts`` and ``history``); returns the
        number of labels it removes."""
        removed = int(sum(m.sum() for m in new.values()))
        kept = st.kept_score(new)
        cost = float(st.proxy.cost_from_removed(new)) if removed else st.p_base
        st.rounds.append(Round(kept, {g: m.copy() for g, m in new.items()}, lat))
        st.starts.append((budget, st.rounds[-1].removed))
        entry = {"iteration": len(self.history), "proxy_budget": budget, "proxy_cost": cost, "latency": lat,
                 "feasible": ok,
                 "removed": removed, "kept_score": kept, "solver_status": status, "solver_s": solve_s,
                 "solves": solves}
        if side_by_side:
            entry["side_by_side"] = True
        self.history.append(entry)
        return removed

    def _log(self, msg: str, *args: Any) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, msg, *args)

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
