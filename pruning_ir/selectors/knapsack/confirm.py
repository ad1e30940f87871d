"""The end of a search measured by a noisy latency function: the best rounds re-measured side by
side with the unpruned model (:func:`confirm`), and the search continued from those readings when
none lands in the tolerance window (:func:`search_on`)."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Protocol

import numpy as np

from .search import Removal, Round, Search, fresh
from .solvers import Program
from .steps import next_budget, solve_budget


class Selector(Protocol):
    """What confirmation reads and writes of the selector (:class:`KnapsackLabelSelector`)."""

    confirmation: list[dict[str, Any]]
    confirmation_passes: int
    history: list[dict[str, Any]]
    max_iterations: int
    tolerance: float

    def program(self) -> Program: ...

    def _log(self, msg: str, *args: Any) -> None: ...

    def _record(self, st: Search, budget: float, new: Removal, lat: float, ok: bool, status: str,
                solve_s: float, solves: int, side_by_side: bool = False) -> int: ...


def confirm(sel: Selector, st: Search, smallest: Round) -> Round | None:
    """Re-measure the most promising rounds side by side with the unpruned model and keep the
    highest-scoring one whose drift-corrected latency meets the target (else the fastest one,
    which is over the target: the caller searches on).

    Candidates: the two highest-scoring rounds measured at most 10% over the target (a round
    read over the target while the machine was slow may well meet it), the best round that
    met it, and the round that met it with the most margin. Each of ``confirmation_passes``
    passes measures the unpruned model and every candidate once, in rotating order; a
    candidate's latency is its median ratio to the unpruned model in the same pass times the
    unpruned model's latency at the start (see :meth:`~pruning_ir.selectors.budget.Evaluator.compare`).
    """
    uniq: dict[tuple[tuple[int, int], ...], Round] = {}
    for r in st.rounds:
        key = tuple((g, int(i)) for g, m in sorted(r.removed.items()) for i in np.flatnonzero(m))
        uniq.setdefault(key, r)
    pool = sorted(uniq.values(), key=lambda r: -r.kept)
    near = [r for r in pool if r.latency <= st.target * 1.1][:2]
    met = [r for r in pool if r.latency <= st.target]
    if not met and math.isfinite(smallest.latency):
        met = [smallest]
    picks = near + [r for r in (met[:1] + sorted(met, key=lambda r: r.latency)[:1]) if not any(r is q for q in near)]
    picks = [r for i, r in enumerate(picks) if not any(r is q for q in picks[:i])]
    if not picks:
        return None
    got = st.ev.compare([st.labels_of(r.removed) for r in picks], sel.confirmation_passes)
    budget_of = {id(m): b for b, m in st.starts}  # a start shares its solution dict with its round
    sel.confirmation = [{"kept_score": r.kept, "search_latency": r.latency, "latency": lat,
                          "removed": int(sum(m.sum() for m in r.removed.values())),
                          "proxy_budget": budget_of.get(id(r.removed), math.nan), "chosen": False}
                         for r, lat in zip(picks, got, strict=True)]
    ok = [i for i, lat in enumerate(got) if lat <= st.target]
    for c in sel.confirmation:
        sel._log("confirmation: kept score %.6g, latency %.6g in the search, %.6g side by side with the "
                  "unpruned model (target %.6g)", c["kept_score"], c["search_latency"], c["latency"], st.target)
    i = max(ok, key=lambda i: picks[i].kept) if ok else min(range(len(picks)), key=lambda i: got[i])
    sel.confirmation[i]["chosen"] = True
    return Round(picks[i].kept, picks[i].removed, got[i])


def search_on(sel: Selector, st: Search, current: Round) -> Round:
    """Search on after a confirmation whose choice ``current`` is over the target (no candidate
    met it side by side) or under ``target * (1 - tolerance)``: the outer loop again, from
    the side-by-side readings (at their proxy budgets), each new candidate measured side by
    side with the unpruned model (:meth:`~pruning_ir.selectors.budget.Evaluator.compare`), for at most
    ``max(2, max_iterations // 2)`` rounds or until one lands in the tolerance window.
    Returns the highest-scoring candidate that met the target side by side, else
    ``current`` (over the target: with a warning)."""
    target = st.target
    seen = [(c["proxy_budget"], c["latency"]) for c in sel.confirmation if math.isfinite(c["proxy_budget"])]
    over = [p for p in seen if p[1] > target] + [(st.p_base, st.base)]
    feasible = [p for p in seen if p[1] <= target]
    sides: list[bool] = []
    budget, lat = max(feasible) if feasible else min(over)
    found: Round | None = current if current.latency <= target else None
    found_at = next(i for i, c in enumerate(sel.confirmation) if c["chosen"])  # where `current` is listed
    for _ in range(max(2, sel.max_iterations // 2)):
        nxt = next_budget(budget, lat, st.aim, feasible, over, st.p_base / st.base, sides)
        point = min(st.starts, key=lambda bs: abs(bs[0] - nxt))[1]
        budget = nxt
        t0 = time.perf_counter()
        new, status, solves = solve_budget(st, sel.program(), budget, point, sel.tolerance)
        new, status = fresh(st, new, status, sel._log)
        solve_s = time.perf_counter() - t0
        lat = st.ev.compare([st.labels_of(new)], sel.confirmation_passes)[0]
        ok = lat <= target
        removed = sel._record(st, budget, new, lat, ok, status, solve_s, solves, side_by_side=True)
        kept = st.rounds[-1].kept
        if status == "infeasible":  # as in the search: the point is the smallest selection's cost
            budget = sel.history[-1]["proxy_cost"]
        sel.confirmation.append({"kept_score": kept, "search_latency": math.nan, "latency": lat,
                                  "removed": removed, "proxy_budget": budget, "chosen": False})
        sel._log("confirmation search: proxy budget %.6g -> %.6g side by side (target %.6g), %d labels removed",
                  budget, lat, target, removed)
        sides.append(ok)
        if ok:
            feasible.append((budget, lat))
            if found is None or kept > found.kept + 1e-12 * abs(found.kept):
                found, found_at = st.rounds[-1], len(sel.confirmation) - 1
            if lat >= target * (1 - sel.tolerance):
                break
        else:
            over.append((budget, lat))
    if found is None:
        warnings.warn(f"KnapsackLabelSelector: no candidate met the target {target:.6g} when measured side by "
                      f"side with the unpruned model; returning the fastest one ({current.latency:.6g}).",
                      RuntimeWarning, stacklevel=3)
        found = current
    for i, c in enumerate(sel.confirmation):
        c["chosen"] = i == found_at
    return found
