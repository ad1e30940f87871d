"""The state one knapsack search shares between its phases, and the selections it moves between."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from ..budget import Evaluator

if TYPE_CHECKING:
    from ..._ir.labels import Label

log = logging.getLogger(__name__)

Removal: TypeAlias = "dict[int, np.ndarray]"  # group id -> mask of the removed labels
Bounds: TypeAlias = "dict[int, tuple[int, int, int]]"  # group id -> (kept low, kept high, step)


@dataclass(frozen=True)
class Round:
    """A measured selection: the score it keeps, what it removes, its latency."""

    kept: float
    removed: Removal
    latency: float


def key(removed: Removal) -> tuple[tuple[int, bytes], ...]:
    """A hashable identity of a selection."""
    return tuple((g, np.packbits(m).tobytes()) for g, m in sorted(removed.items()))


@dataclass
class Search:
    """The state of one :meth:`KnapsackLabelSelector.select` call that its phases (search,
    confirmation, continuation) share: the problem, and the rounds measured so far."""

    ev: Evaluator
    owner: int
    scores: dict[int, np.ndarray]
    order: dict[int, np.ndarray]  # labels of each group in ascending score order
    bounds: Bounds
    proxy: Any  # the cost model the inner loop linearises
    p_base: float  # its cost of the unpruned model
    base: float  # the latency function's reading of the unpruned model
    target: float
    aim: float
    inner_rounds: int
    rounds: list[Round] = field(default_factory=list)
    starts: list[tuple[float, Removal]] = field(default_factory=list)  # (proxy budget, solution) per round

    def labels_of(self, removed: Removal) -> list[Label]:
        from ..._ir.labels import Label

        out: list[Label] = []
        for gid, m in removed.items():
            idx = np.flatnonzero(m).tolist()
            out.extend(map(Label, repeat(self.owner, len(idx)), repeat(gid, len(idx)), idx))
        return out

    def kept_score(self, removed: Removal) -> float:
        return float(sum(float(self.scores[g][~m].sum()) for g, m in removed.items()))


def between(a: Removal, b: Removal, t: float, st: Any) -> Removal:
    """Per group, the kept count ``t`` of the way from ``a``'s to ``b``'s (the nearest count
    between them that the group's constraint allows; both ends do), lowest scores removed
    first. Tied groups have equal bounds and counts in ``a`` and ``b``, so they stay equal.
    ``st`` gives ``order`` and ``bounds`` (a :class:`Search`)."""
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


def fresh(st: Any, new: Removal, status: str, say: Callable[..., None] = log.debug) -> tuple[Removal, str]:
    """``new``, unless a round already measured it: then a selection between the closest
    measured rounds on both sides of the target (see :func:`between`), which the proxy could not
    produce (the budget -> solution map of the inner loop can jump over a range of latencies
    when the proxy is off there, and the outer loop would measure the same solution again)."""
    seen = {key(r.removed) for r in st.rounds}
    if key(new) not in seen:
        return new, status
    under = [r for r in st.rounds if r.latency <= st.target]
    above = [r for r in st.rounds if st.target < r.latency < math.inf]
    if not under or not above:
        return new, status
    a, b = max(under, key=lambda r: r.latency), min(above, key=lambda r: r.latency)
    t = min(max((st.aim - a.latency) / (b.latency - a.latency), 0.1), 0.9)
    mid = between(a.removed, b.removed, t, st)
    if key(mid) in seen:
        return new, status
    say("the solve repeated a measured selection: interpolating %.2f of the way between the rounds at "
        "latency %.6g and %.6g", t, a.latency, b.latency)
    return mid, "interpolated"


def midpoint(a: Removal, b: Removal, order: dict[int, np.ndarray]) -> Removal:
    """Per group, remove the mean of ``a``'s and ``b``'s counts, in score order."""
    out = {}
    for gid, ma in a.items():
        k = (int(ma.sum()) + int(b[gid].sum()) + 1) // 2
        m = np.zeros_like(ma)
        m[order[gid][:k]] = True
        out[gid] = m
    return out
