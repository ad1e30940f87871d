"""Shared pieces of the budget-aware selectors: per-group constraints, measuring a candidate.

A candidate selection is measured either from the IR alone (when the latency function can
give a cost model of the IR, as the built-in MACs and parameter counters do) or by pruning a
slim model and calling the user's function on it.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn

from .._ir.graph import ValueRef
from ..errors import InvalidInputError, LabelError, LatencyMeasurementError

if TYPE_CHECKING:
    from .._ir.labels import Label, LabelGroup
    from .._ir.snapshot import Snapshot
    from ..ir import PruningIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupConstraint:
    """Allowed numbers of *kept* labels in a group: ``low <= kept <= high`` and ``kept % step == 0``.

    ``low`` / ``high`` are label counts (ints) or fractions of the group's size (floats in
    ``(0, 1]``, rounded up for ``low`` and down for ``high``). ``step=8`` keeps widths that are
    multiples of 8 (tensor cores, ``aten._grouped_mm`` alignment). Every group keeps at least
    one label whatever ``low`` says.
    """

    low: float = 1
    high: float | None = None
    step: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.step, int) or isinstance(self.step, bool) or self.step < 1:
            raise InvalidInputError(f"GroupConstraint(step={self.step!r}): step must be an int >= 1.")
        for name, v in (("low", self.low), ("high", self.high)):
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
                raise InvalidInputError(f"GroupConstraint({name}={v!r}): give a label count (int) or a fraction "
                                        "of the group (float in (0, 1]).")

    def bounds(self, size: int) -> tuple[int, int]:
        """Feasible kept counts ``(lo, hi)`` for a group of ``size`` labels, multiples of ``step``."""
        def count(v: float, up: bool) -> int:
            if isinstance(v, float) and v <= 1.0:
                x = v * size
                return math.ceil(x - 1e-9) if up else math.floor(x + 1e-9)
            return int(v)

        lo = max(1, count(self.low, True))
        hi = size if self.high is None else min(size, count(self.high, False))
        lo = -(-lo // self.step) * self.step
        hi = hi // self.step * self.step
        if lo > hi:
            # no multiple of step fits: keep the group whole rather than fail
            return size, size
        return lo, hi


ConstraintArg: TypeAlias = (
    "GroupConstraint | Mapping[int, GroupConstraint] | Callable[[LabelGroup], GroupConstraint | None] | None"
)


def resolve_constraints(constraint: ConstraintArg, groups: list[LabelGroup]) -> dict[int, tuple[int, int, int]]:
    """Kept-count bounds and step ``(lo, hi, step)`` per prunable group id (``lo``, ``hi``
    multiples of ``step``; a group's own :attr:`~LabelGroup.step` is combined with the
    constraint's)."""
    out: dict[int, tuple[int, int, int]] = {}
    for g in groups:
        if constraint is None:
            c: GroupConstraint | None = None
        elif isinstance(constraint, GroupConstraint):
            c = constraint
        elif isinstance(constraint, Mapping):
            c = constraint.get(g.gid)
        elif callable(constraint):
            c = constraint(g)
        else:
            raise InvalidInputError(f"constraint={constraint!r}: give a GroupConstraint, a dict group id -> "
                                    "GroupConstraint, or a function LabelGroup -> GroupConstraint | None.")
        c = c or GroupConstraint()
        if g.step > 1 and c.step % g.step:  # the group's own alignment (a kernel's) comes on top
            c = GroupConstraint(c.low, c.high, math.lcm(c.step, g.step))
        lo, hi = c.bounds(g.size)
        out[g.gid] = (lo, hi, c.step if (lo, hi) != (g.size, g.size) or g.size % c.step == 0 else 1)
    return out


def attention_head_ties(snap: Snapshot) -> list[tuple[int, int]]:
    """Pairs ``(q/k head-dim group, v head-dim group)`` of the prunable groups whose sizes meet
    in a ``scaled_dot_product_attention`` call: the query's last axis is one whole group, the
    value's last axis another of the same size. Fused kernels (CPU flash attention, CUDA flash)
    need the two head sizes equal; with different sizes SDPA falls back to its math kernel,
    2-2.6x slower on CPU (measured), so a selection that prunes them to different counts can
    make a "smaller" model slower."""
    from .._ir.ops import SDPA

    by_leaf = {g.leaf: g for g in snap.prunable_groups}
    sp = snap.spaces
    out: list[tuple[int, int]] = []

    def whole_group(vid: int) -> LabelGroup | None:
        axes = snap.graph.values[vid].axes
        if not axes:
            return None
        norm = sp.normalize(axes[-1])
        if len(norm) != 1 or len(norm[0]) != 1:
            return None
        leaf, start, end = norm[0][0]
        g = by_leaf.get(leaf)
        return g if g is not None and (start, end) == (0, g.size) else None

    for node in snap.graph.primary_nodes():
        if node.op not in SDPA:
            continue
        q, v = node.kwargs.get("query"), node.kwargs.get("value")
        if not (isinstance(q, ValueRef) and isinstance(v, ValueRef)):
            continue
        gq, gv = whole_group(q.vid), whole_group(v.vid)
        if gq is None or gv is None or gq.gid == gv.gid or gq.size != gv.size:
            continue
        pair = (gq.gid, gv.gid)
        if pair not in out:
            out.append(pair)
    return out


def tie_bounds(ties: list[tuple[int, int]], bounds: dict[int, tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Give each tied pair the same kept-count options (the intersection of both groups'); a
    pair whose options do not meet, or that shares a group with an earlier pair, is dropped.
    Returns the pairs kept (``bounds`` is updated in place)."""
    kept: list[tuple[int, int]] = []
    used: set[int] = set()
    for a, b in ties:
        if a in used or b in used or a not in bounds or b not in bounds:
            continue
        (lo_a, hi_a, st_a), (lo_b, hi_b, st_b) = bounds[a], bounds[b]
        step = math.lcm(st_a, st_b)
        lo = -(-max(lo_a, lo_b) // step) * step
        hi = min(hi_a, hi_b) // step * step
        if lo > hi:
            continue
        bounds[a] = bounds[b] = (lo, hi, step)
        used.update((a, b))
        kept.append((a, b))
    return kept


@dataclass
class Ranking:
    """Removal candidates in the order a score-ranked selector takes them (see
    :func:`ranked_units`): label ``k`` is ``(gid[k], idx[k])``; unit ``u`` holds labels
    ``ends[u - 1]:ends[u]``; ``tied[u]`` tells a tied pair's unit from a single label."""

    owner: int
    gid: torch.Tensor
    idx: torch.Tensor
    ends: torch.Tensor
    tied: torch.Tensor

    def __len__(self) -> int:
        return int(self.ends.numel())

    def labels(self, pick: torch.Tensor | slice) -> list[Label]:
        from .._ir.labels import Label

        gids, idx = self.gid[pick].tolist(), self.idx[pick].tolist()
        return list(map(Label, [self.owner] * len(gids), gids, idx))

    def prefix(self, n_units: int) -> list[Label]:
        """The labels of the first ``n_units`` units."""
        return self.labels(slice(0, int(self.ends[n_units - 1]) if n_units > 0 else 0))

    def first_labels(self, n: int) -> list[Label]:
        """About the ``n`` first labels: whole units in rank order while they fit, then the
        single-label units after them until ``n`` (a tied unit that would overshoot is left out,
        and so are the later units of its pair, which keeps score order within groups)."""
        k = int(torch.searchsorted(self.ends, torch.tensor([n], dtype=self.ends.dtype), right=True)[0])
        upto = int(self.ends[k - 1]) if k else 0
        rest = n - upto
        if rest <= 0 or k >= len(self):
            return self.labels(slice(0, upto))
        singles = (~self.tied[k:]).nonzero().flatten()[:rest] + k
        starts = torch.cat([self.ends.new_zeros(1), self.ends[:-1]])
        pick = torch.cat([torch.arange(upto), starts[singles]])
        return self.labels(pick)


def ranked_units(ir: PruningIR, snapshot_name: str, floor: Callable[[LabelGroup], int],
                 tie_attention_head_dims: bool, label_cost: Mapping[int, float] | None = None) -> Ranking:
    """The removal candidates of the prunable groups, ranked for the score-ordered selectors
    (global, binary search): units in ascending order of their labels' mean score (stable).

    A unit is one label, except for a pair of groups tied by :func:`attention_head_ties`
    (``tie_attention_head_dims``): there a unit is the ``k``-th lowest-scored labels of both
    groups together (``lcm`` of their steps from each, the first chunk making the kept count a
    multiple), so any prefix of the ranking removes the same count from both. Within a group
    labels go in ascending score order, and a group's ``floor(group)`` best labels are never
    candidates (a tied pair keeps the larger of its two floors).

    With ``label_cost`` (group id -> what removing one of its labels saves, e.g. MACs) units are
    ranked by score per unit of cost saved instead (the order within a group does not change)."""
    snap = ir.snapshot(snapshot_name)
    scores = ir.label_scores(snapshot_name)
    groups = {g.gid: g for g in snap.prunable_groups if g.gid in scores}
    pairs: list[tuple[int, int]] = []
    if tie_attention_head_dims:
        used: set[int] = set()
        for a, b in attention_head_ties(snap):
            if a in groups and b in groups and not used & {a, b}:
                used.update((a, b))
                pairs.append((a, b))
    tied_gids = {gid for pair in pairs for gid in pair}
    u_score: list[torch.Tensor] = []  # per unit
    u_size: list[torch.Tensor] = []
    u_tied: list[torch.Tensor] = []
    l_gid: list[torch.Tensor] = []  # per label, units in the order of u_*
    l_idx: list[torch.Tensor] = []
    for gid, g in groups.items():
        if gid in tied_gids:
            continue
        s = scores[gid].double()
        order = torch.argsort(s, stable=True)[: max(0, g.size - floor(g))]
        u_score.append(s[order] / (label_cost[gid] if label_cost is not None else 1.0))
        u_size.append(torch.ones(order.numel(), dtype=torch.long))
        u_tied.append(torch.zeros(order.numel(), dtype=torch.bool))
        l_gid.append(torch.full_like(order, gid))
        l_idx.append(order)
    for a, b in pairs:
        step = math.lcm(groups[a].step, groups[b].step)
        removable = groups[a].size - max(floor(groups[a]), floor(groups[b]))
        sa, sb = scores[a].double(), scores[b].double()
        oa, ob = torch.argsort(sa, stable=True), torch.argsort(sb, stable=True)
        start = 0
        while True:
            end = start + ((groups[a].size % step or step) if start == 0 else step)
            if end > removable:
                break
            total = sa[oa[start:end]].sum() + sb[ob[start:end]].sum()
            per = (end - start) * (label_cost[a] + label_cost[b]) if label_cost is not None else 2 * (end - start)
            u_score.append((total / per).reshape(1))
            u_size.append(torch.tensor([2 * (end - start)]))
            u_tied.append(torch.ones(1, dtype=torch.bool))
            l_gid.append(torch.cat([torch.full((end - start,), a), torch.full((end - start,), b)]))
            l_idx.append(torch.cat([oa[start:end], ob[start:end]]))
            start = end
    if not u_score or not any(len(u) for u in u_score):  # nothing above the floors
        empty = torch.zeros(0, dtype=torch.long)
        return Ranking(snap.owner, empty, empty, empty, torch.zeros(0, dtype=torch.bool))
    sizes = torch.cat(u_size)
    rank = torch.argsort(torch.cat(u_score), stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    # the labels of unit u are l_*[starts[u]:starts[u] + sizes[u]]; gather them in rank order
    r_size = sizes[rank]
    r_ends = torch.cumsum(r_size, 0)
    offset = torch.arange(int(r_ends[-1])) - torch.repeat_interleave(r_ends - r_size, r_size)
    label_pos = torch.repeat_interleave(starts[rank], r_size) + offset
    return Ranking(snap.owner, torch.cat(l_gid)[label_pos], torch.cat(l_idx)[label_pos], r_ends,
                   torch.cat(u_tied)[rank])


class Evaluator:
    """Measures candidate selections of one IR snapshot with a latency function.

    Uses ``fn.cost_model(ir, name)`` when the function has one (exact and model-free), else
    prunes a slim model (verified) and calls ``fn(slim)``. Results are cached per selection.
    """

    def __init__(self, ir: PruningIR, name: str, fn: Callable[[nn.Module], float]) -> None:
        if not callable(fn):
            raise InvalidInputError(f"latency_calculation_function={fn!r} is not callable: give a function "
                                    "model -> float (e.g. pruning_ir.latency.MacsLatency(example_inputs)).")
        self.ir = ir
        self.name = name
        self.fn = fn
        make = getattr(fn, "cost_model", None)
        self.exact = make(ir, name) if callable(make) else None
        self.cache: dict[tuple[tuple[int, int], ...], float] = {}
        self.measurements = 0

    def __call__(self, labels: list[Label]) -> float:
        key = tuple(sorted((lab.group, lab.index) for lab in labels))
        got = self.cache.get(key)
        if got is not None:
            return got
        if self.exact is not None:
            value = float(self.exact.cost(labels))
        else:
            try:
                model = self.ir.model if not labels else self.ir.prune(self.name, labels=labels).model
                value = float(self.fn(model))
            except LabelError as exc:  # a selection prune() refuses (an emptied axis): not a candidate
                log.info("candidate with %d labels removed cannot be pruned: %s", len(labels), exc)
                value = math.inf
            except LatencyMeasurementError as exc:
                log.info("candidate with %d labels removed refused by the latency function: %s", len(labels), exc)
                value = math.inf
            self.measurements += 1
        if not math.isfinite(value) and value != math.inf:
            raise InvalidInputError(f"the latency function returned {value!r}; it must return a finite float.")
        self.cache[key] = value
        return value

    def confirm(self, labels: list[Label]) -> float:
        """Measure a candidate once more (functions without a cost model) and keep the worse of
        the two measurements: a candidate is accepted only if a second, independent measurement
        also meets the budget, which guards against a lucky reading on a noisy machine."""
        first = self(labels)
        if self.exact is not None or not math.isfinite(first):
            return first
        key = tuple(sorted((lab.group, lab.index) for lab in labels))
        del self.cache[key]
        value = max(first, self(labels))
        self.cache[key] = value
        return value


    def compare(self, selections: list[list[Label]], passes: int) -> list[float]:
        """Latencies of ``selections`` re-measured side by side with the unpruned model.

        Every pass measures the unpruned model and each selection's slim model once, in an order
        that rotates between passes. A selection's latency is its median ratio to the unpruned
        model's measurement in the same pass, so that a change of the machine's speed since the
        search cancels, times the unpruned model's latency as first measured (``self([])``, which
        the selectors confirm with a second reading: latencies stay in the units of the machine
        as it was when the target was compared with the unpruned model).
        A function that cancels drift itself (``fn.drift_cancelling`` true, as
        ``MeasuredLatency(reference=...)``) is not divided by the unpruned model's readings: a
        selection gets the median of its measurements in the passes and its cached one.
        Refused candidates get ``inf``; functions with a cost model need no re-measurement (their
        exact cost is returned)."""
        if self.exact is not None:
            return [self(labels) for labels in selections]
        base = self([])
        paired = bool(getattr(self.fn, "drift_cancelling", False))
        models = ([] if paired else [self.ir.model]) + [
            self.ir.prune(self.name, labels=labels).model if labels else self.ir.model for labels in selections]
        readings: list[list[float]] = [[] for _ in models]
        for p in range(passes):
            for j in range(len(models)):
                i = (j + p) % len(models)
                try:
                    readings[i].append(float(self.fn(models[i])))
                except LatencyMeasurementError as exc:
                    log.info("candidate refused by the latency function while re-measuring: %s", exc)
                    readings[i].append(math.inf)
                self.measurements += 1
        if paired:
            return [statistics.median([self(labels), *r]) for labels, r in zip(selections, readings, strict=True)]
        out = []
        for r in readings[1:]:
            ratios = [a / b for a, b in zip(r, readings[0], strict=True) if 0 < b < math.inf]
            out.append(base * statistics.median(ratios) if ratios else math.inf)
        return out


def as_float(x: Any, what: str) -> float:
    if isinstance(x, torch.Tensor):
        x = x.item()
    if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
        raise InvalidInputError(f"{what}={x!r}: give a finite number in the latency function's units.")
    return float(x)


def as_count(x: Any, what: str, low: int) -> int:
    """``x`` when it is an int (not a bool) of at least ``low``, else a clear error."""
    if not isinstance(x, int) or isinstance(x, bool) or x < low:
        raise InvalidInputError(f"{what}={x!r}: give an int >= {low}.")
    return x


CostArg: TypeAlias = "str | Callable[[PruningIR, str], Any] | None"
"""A cost to rank by: ``"macs"``, ``"params"``, or a factory ``(ir, snapshot_name) -> CostModel``."""


def label_costs(ir: PruningIR, snapshot_name: str, cost: CostArg, owner: str) -> dict[int, float] | None:
    """Per prunable group: what removing one of its labels saves under ``cost``, at full width
    (``None`` when ``cost`` is ``None``). A group whose labels save nothing gets a tiny positive
    saving, so that score-per-cost ranking puts it last rather than dividing by zero."""
    if cost is None:
        return None
    from ..cost import MacsModel, ParamsModel

    if isinstance(cost, str):
        factories: dict[str, Callable[[PruningIR, str], Any]] = {"macs": MacsModel, "params": ParamsModel}
        if cost not in factories:
            raise InvalidInputError(f"{owner}(cost={cost!r}): give 'macs', 'params' or a factory "
                                    "(ir, snapshot_name) -> CostModel such as MacsModel.")
        model = factories[cost](ir, snapshot_name)
    elif callable(cost):
        model = cost(ir, snapshot_name)
    else:
        raise InvalidInputError(f"{owner}(cost={cost!r}): give 'macs', 'params' or a factory "
                                "(ir, snapshot_name) -> CostModel such as MacsModel.")
    base = float(model.baseline())
    out: dict[int, float] = {}
    for g in ir.snapshot(snapshot_name).prunable_groups:
        step = min(g.step, g.size)
        try:
            after = float(model.cost_for_counts({g.gid: g.size - step}))
        except ValueError:  # a group some axis uses in part: which labels go matters, price a real selection
            after = float(model.cost(ir.labels(g)[:step]))
        out[g.gid] = (base - after) / step
    top = max(out.values(), default=0.0)
    floor = 1e-12 * top if top > 0 else 1.0
    return {gid: max(v, floor) for gid, v in out.items()}
