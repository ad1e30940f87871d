"""Allocations: *how the objective is shared* among the target's label groups.

Every allocation answers one question for one IR: which labels to remove so that the objective's
``measure`` of the model falls to ``budget`` (the step's share of the original cost), removing as
little as it can. Within a group the lowest-scored labels always go first (the metric's order).

* :class:`Uniform`: the same fraction ``r`` of every group, the smallest ``r`` that reaches the
  budget (bisection; ``r`` grows until it does).
* :class:`Global`: one ranking over all the target's labels, the shortest prefix that reaches the
  budget; by score per unit of the objective's cost (``per_cost=True``, the default: a cheap
  layer is not stripped before an expensive one) or by score alone.
* :class:`Knapsack`: :class:`~pruning_ir.KnapsackLabelSelector` at the budget (the most score
  kept for the cost; needs a cost objective: MACs, parameters or latency).
* :class:`Fixed`: per-group fractions given by the caller (module name or group id -> fraction;
  NNI's per-layer ``sparsity``); the objective is not consulted.
* :class:`Annealing`: simulated annealing over per-group fractions (NNI's
  ``SimulatedAnnealingPruner``): each candidate is rescaled to the budget and scored by
  ``evaluator(masked model)``; ``population`` candidates per temperature are split over the
  ``torch.distributed`` ranks.

An allocation that cannot reach the budget (every group at its floor) raises
:class:`~pruning_ir.InvalidInputError` with the most it can remove.
"""

from __future__ import annotations

import math
import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from .._distributed import gather_objects, rank_world, require_same_groups
from ..errors import InvalidInputError
from .objectives import Latency, Macs, Measure, Objective, Params
from .targets import Channels, output_group

if TYPE_CHECKING:
    from .._ir.labels import Label, LabelGroup
    from ..ir import PruningIR


@dataclass
class Problem:
    """One allocation problem: the IR, the target's groups, the objective, its measure of a
    selection (absolute units) and the cost the selection must not exceed. In a schedule's later
    steps ``origin`` holds the groups' sizes in the original model (by
    :func:`~pruning_ir.compose.targets.group_key`: floors and fixed fractions stay fractions of
    those) and ``share`` the part of the final objective this step reaches."""

    ir: PruningIR
    target: Channels
    groups: list[LabelGroup]
    objective: Objective
    measure: Measure
    budget: float
    origin: dict[int, int] = field(default_factory=dict)
    """Group id (in this IR) -> its size in the original model."""
    share: float = 1.0

    def met(self, labels: list[Label]) -> bool:
        """Whether removing ``labels`` reaches the budget; a measured latency (no cost model) must
        reach it in two readings (the worse counts), so a lucky reading on a noisy machine does
        not accept a candidate."""
        confirm = getattr(self.measure, "confirm", None)  # an Evaluator: one reading where the cost is exact
        value = confirm(labels) if callable(confirm) else self.measure(labels)
        return value <= self.budget * (1 + 1e-12)

    def original(self, g: LabelGroup) -> int:
        return self.origin.get(g.gid, g.size)

    def floor(self, g: LabelGroup) -> int:
        """Labels ``g`` keeps at least (the target's floor of its original size)."""
        return self.target.floor(g, self.original(g))

    def unreachable(self, owner: str, most: list[Label]) -> InvalidInputError:
        base = self.measure([])
        got = 1 - self.measure(most) / base if base else 0.0
        asked = 1 - self.budget / base if base else 0.0
        return InvalidInputError(
            f"{owner}: the target's groups cannot remove {asked:.3f} of the {type(self.objective).__name__} cost "
            f"of this model (at most {got:.3f} with every group at its floor); widen the target (more modules, "
            "a larger max_ratio) or lower the fraction.")


def at_counts(ir: PruningIR, counts: Mapping[int, int], floor: Callable[[LabelGroup], int]) -> list[Label]:
    """Per group id, its ``count`` lowest-scored labels (whole steps; the group keeps at least
    ``floor(group)`` labels), aligned so that no parameter axis is emptied (the selectors' own
    :func:`~pruning_ir.selectors.base.lowest_labels`)."""
    from ..selectors.base import lowest_labels

    return lowest_labels(ir, counts, floor)


def at_ratios(ir: PruningIR, ratios: Mapping[int, float], floor: Callable[[LabelGroup], int]) -> list[Label]:
    """Per group id, its ``floor(ratio * size)`` lowest-scored labels (see :func:`at_counts`)."""
    sizes = {g.gid: g.size for g in ir.prunable_label_groups()}
    return at_counts(ir, {gid: math.floor(r * sizes[gid] + 1e-9) for gid, r in ratios.items()}, floor)


def scale_to_budget(p: Problem, ratios: Mapping[int, float], owner: str) -> tuple[float, list[Label]]:
    """The smallest factor ``a`` for which ``min(cap, a * ratios)`` reaches the budget, and its labels
    (bisection: removal grows with ``a``)."""
    caps = {g.gid: 1 - p.floor(g) / g.size for g in p.groups}

    def labels(a: float) -> list[Label]:
        return at_ratios(p.ir, {g: min(caps[g], max(0.0, a * r)) for g, r in ratios.items()}, p.floor)

    hi = 1.0
    while not p.met(labels(hi)):
        if all(min(caps[g], hi * r) >= caps[g] for g, r in ratios.items() if r > 0) or hi > 1e6:
            raise p.unreachable(owner, labels(hi))
        hi *= 2
    lo = 0.0
    if p.met(labels(lo)):
        return 0.0, []
    for _ in range(40):
        mid = (lo + hi) / 2
        if p.met(labels(mid)):
            hi = mid
        else:
            lo = mid
    return hi, labels(hi)


class Allocation(ABC):
    """Chooses the labels of one step (see the module docstring)."""

    @abstractmethod
    def allocate(self, p: Problem) -> list[Label]:
        """Labels whose removal brings ``p.measure`` to ``p.budget``."""


@dataclass
class Uniform(Allocation):
    """The same fraction of every group of the target; ``ratio`` is the one found by the last call."""

    ratio: float = field(default=0.0, init=False)

    def allocate(self, p: Problem) -> list[Label]:
        self.ratio, labels = scale_to_budget(p, {g.gid: 1.0 for g in p.groups}, "Uniform")
        return labels


def cost_factory(objective: Objective, ir: PruningIR) -> Any:
    """The objective as a cost-model factory ``(ir, snapshot_name) -> CostModel`` for score-per-cost
    ranking, or ``None`` (a ratio, or a latency function without a cost model for this IR)."""
    if isinstance(objective, Macs):
        return "macs"
    if isinstance(objective, Params):
        return "params"
    if isinstance(objective, Latency):
        make = getattr(objective.fn, "cost_model", None)
        model = make(ir, "main") if callable(make) else None
        return None if model is None else (lambda _ir, _name: model)
    return None


@dataclass
class Global(Allocation):
    """The lowest-ranked labels of all the target's groups together (see the module docstring)."""

    per_cost: bool = True
    tie_attention_head_dims: bool = True

    def allocate(self, p: Problem) -> list[Label]:
        from ..selectors.base import align_selection
        from ..selectors.budget import label_costs, ranked_units

        inside = {g.gid for g in p.groups}
        factory = cost_factory(p.objective, p.ir) if self.per_cost else None
        costs = label_costs(p.ir, "main", factory, "Global") if factory is not None else None
        ranking = ranked_units(p.ir, "main", lambda g: p.floor(g) if g.gid in inside else g.size,
                               self.tie_attention_head_dims, costs)

        def labels(n: int) -> list[Label]:
            return align_selection(p.ir, ranking.prefix(n))

        if p.met([]):
            return []
        if not p.met(labels(len(ranking))):
            err = p.unreachable("Global", labels(len(ranking)))
            if self.tie_attention_head_dims and self._tied_outside(p):
                err = InvalidInputError(f"{err} Some of its groups are attention head sizes tied to a group outside "
                                        "the target (tie_attention_head_dims keeps q/k and v head sizes equal for "
                                        "the fused kernel): widen the target or pass "
                                        "Global(tie_attention_head_dims=False).")
            raise err
        lo, hi = 0, len(ranking)  # removing lo units misses the budget, hi reaches it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if p.met(labels(mid)):
                hi = mid
            else:
                lo = mid
        return labels(hi)


    @staticmethod
    def _tied_outside(p: Problem) -> bool:
        from ..selectors.budget import attention_head_ties

        inside = {g.gid for g in p.groups}
        return any((a in inside) != (b in inside) for a, b in attention_head_ties(p.ir.snapshot()))


@dataclass
class Knapsack(Allocation):
    """:class:`~pruning_ir.KnapsackLabelSelector` at the step's budget, restricted to the target's
    groups (each keeping its floor); ``options`` go to the selector (``tolerance``,
    ``constraint`` is built here)."""

    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        taken = {"constraint", "channels_constraint", "target_latency", "latency_calculation_function"} & set(
            self.options)
        if taken:
            raise InvalidInputError(f"Knapsack(options={sorted(taken)}): these come from the target and the objective "
                                    "(Channels(min_kept, max_ratio), Macs / Params / Latency); give the others only.")

    def allocate(self, p: Problem) -> list[Label]:
        from ..selectors import KnapsackLabelSelector
        from ..selectors.budget import GroupConstraint

        fn = p.objective.function(p.ir)
        if fn is None:
            raise InvalidInputError("Knapsack allocates a cost: give objective=Macs(f), Params(f) or Latency(f, fn) "
                                    "(for a fraction of the labels use Uniform or Global).")
        inside = {g.gid: g for g in p.groups}
        constraint = {g.gid: GroupConstraint(low=p.floor(inside[g.gid]) if g.gid in inside else g.size)
                      for g in p.ir.prunable_label_groups()}
        if p.met([]):
            return []
        options = {"verbose": False, **self.options}
        labels = list(KnapsackLabelSelector(p.budget, fn, constraint=constraint, **options).select(p.ir))
        if not p.met(labels):
            raise p.unreachable("Knapsack", labels)
        return labels


@dataclass
class Fixed(Allocation):
    """Given fractions per group, of its size in the original model: keys are module names (the
    outer group of the module's output channels: whole heads of a query projection) or group ids;
    groups of the target not named keep everything. In a schedule, a step reaches its share of
    each fraction."""

    ratios: Mapping[str, float] | Mapping[int, float]

    def resolve(self, ir: PruningIR) -> dict[int, float]:
        """Group id -> fraction (the smallest when several modules name one group)."""
        named = dict(ir.model.named_modules())
        known = {g.gid for g in ir.prunable_label_groups()}
        out: dict[int, float] = {}
        for key, r in self.ratios.items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise InvalidInputError(f"Fixed: {key!r}: {r!r}: give a fraction in [0, 1).")
            if isinstance(key, str):
                if key not in named:
                    raise InvalidInputError(f"Fixed: no module named {key!r} in {type(ir.model).__name__}; see "
                                            "model.named_modules().")
                g = output_group(ir, key)
                if g is None:
                    raise InvalidInputError(f"Fixed: the output channels of {key!r} are not a prunable group "
                                            "(ir.report() says why).")
                gid = g.gid
            elif isinstance(key, int) and not isinstance(key, bool) and key in known:
                gid = key
            else:
                raise InvalidInputError(f"Fixed: {key!r} is neither a module name nor a prunable group id of this IR.")
            out[gid] = min(float(r), out.get(gid, float(r)))
        return out

    def allocate(self, p: Problem) -> list[Label]:
        inside = {g.gid: g for g in p.groups}
        wanted = self.resolve(p.ir)
        groups = {g.gid: g for g in p.ir.prunable_label_groups()}
        outside = [groups[gid].describe() for gid in wanted if gid not in inside]
        if outside:
            warnings.warn(f"Fixed: groups {outside[:3]} are outside the target (excluded, or not its modules); "
                          "they keep everything.", stacklevel=3)
        counts = {}
        for gid, r in wanted.items():
            if gid not in inside:
                continue
            g, size = inside[gid], p.original(inside[gid])
            # this step's share of the fraction of the original size, less what earlier steps removed
            counts[gid] = math.floor(r * p.share * size + 1e-9) - (size - g.size)
        return at_counts(p.ir, counts, p.floor)


@dataclass
class Annealing(Allocation):
    """Simulated annealing over per-group fractions (see the module docstring): from uniform
    fractions, every temperature draws ``population`` candidates (each fraction perturbed by up to
    ``perturbation_magnitude``, then rescaled to the budget), scores them with
    ``evaluator(masked model) -> float`` (higher = better; rank-local under ``torch.distributed``:
    candidate ``i`` runs on rank ``i % world``), and moves to the best with Metropolis' rule
    (a worse one with probability ``exp(delta / T)``); ``T`` falls from ``start_temperature`` to
    ``stop_temperature`` by ``cool_down_rate``. ``history`` lists every candidate (fractions by
    group id, cost in the objective's units, score); ``best`` the best fractions (both of the last
    :meth:`allocate`: a schedule's last step)."""

    evaluator: Callable[[nn.Module], float]
    start_temperature: float = 100.0
    stop_temperature: float = 20.0
    cool_down_rate: float = 0.9
    perturbation_magnitude: float = 0.35
    population: int = 1
    seed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list, init=False)
    best: dict[int, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if not callable(self.evaluator):
            raise InvalidInputError("Annealing(evaluator=...): give a function model -> float (higher = better).")
        if not 0 < self.cool_down_rate < 1 or not self.start_temperature > self.stop_temperature > 0:
            raise InvalidInputError("Annealing: need start_temperature > stop_temperature > 0 and "
                                    "0 < cool_down_rate < 1.")
        if not isinstance(self.population, int) or isinstance(self.population, bool) or self.population < 1:
            raise InvalidInputError(f"Annealing(population={self.population!r}): give an int >= 1.")

    def _score(self, p: Problem, labels: list[Label]) -> float:
        from ..oracle import masked_model

        value = self.evaluator(masked_model(p.ir, labels))
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInputError(f"Annealing: the evaluator returned {type(value).__name__}; give a function "
                                    "model -> float (higher = better).") from None

    def _scores(self, p: Problem, selections: list[list[Label]]) -> list[float]:
        """Every selection's score, candidate ``i`` evaluated on rank ``i % world``, the same list on
        every rank (each score comes from one rank: decisions agree even if ranks see other data)."""
        rank, world = rank_world()
        mine = {i: self._score(p, labels) for i, labels in enumerate(selections) if i % world == rank}
        got = {i: s for part in gather_objects(mine, world) for i, s in part.items()}
        return [got[i] for i in range(len(selections))]

    def allocate(self, p: Problem) -> list[Label]:
        require_same_groups(p.groups, rank_world()[1])
        rng = random.Random(self.seed)
        self.history = []
        _, current_labels = scale_to_budget(p, {g.gid: 1.0 for g in p.groups}, "Annealing")
        current = self._fractions(p, current_labels)
        cur_score = best_score = self._scores(p, [current_labels])[0]
        self.history.append({"fractions": current, "cost": p.measure(current_labels), "score": cur_score})
        best, best_labels = current, current_labels
        temperature = self.start_temperature
        while temperature > self.stop_temperature:
            cands = []
            for _ in range(self.population):  # every rank draws the same candidates (same seed)
                drawn = {g: min(1.0, max(1e-3, r + rng.uniform(-self.perturbation_magnitude,
                                                               self.perturbation_magnitude)))
                         for g, r in current.items()}
                _, labels = scale_to_budget(p, drawn, "Annealing")
                cands.append((self._fractions(p, labels), labels))
            scores = self._scores(p, [labels for _, labels in cands])
            for i, (fr, labels) in enumerate(cands):
                self.history.append({"fractions": fr, "cost": p.measure(labels), "score": scores[i]})
            top = max(range(len(cands)), key=lambda i: (scores[i], -i))
            delta = scores[top] - cur_score
            if delta > 0 or rng.random() < math.exp(delta / temperature):
                current, current_labels, cur_score = cands[top][0], cands[top][1], scores[top]
            if scores[top] > best_score:
                best, best_labels, best_score = cands[top][0], cands[top][1], scores[top]
            temperature *= self.cool_down_rate
        self.best = best
        return best_labels

    @staticmethod
    def _fractions(p: Problem, labels: list[Label]) -> dict[int, float]:
        counts: dict[int, int] = {}
        for lab in labels:
            counts[lab.group] = counts.get(lab.group, 0) + 1
        return {g.gid: counts.get(g.gid, 0) / g.size for g in p.groups}


__all__ = ["Allocation", "Annealing", "Fixed", "Global", "Knapsack", "Problem", "Uniform", "at_ratios",
           "cost_factory", "scale_to_budget"]
