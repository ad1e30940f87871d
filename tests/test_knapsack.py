"""Budget-aware selectors against brute force, budgets, constraints, bounds and refusing functions."""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from pruning_ir import (
    BinarySearchLatencyLabelSelector,
    GlobalScoreLabelSelector,
    GroupConstraint,
    InvalidInputError,
    KnapsackLabelSelector,
    LatencyMeasurementError,
    MacsModel,
    PruningIR,
)
from pruning_ir._ir.labels import LabelGroup
from pruning_ir.selectors._mckp import solve_mckp
from pruning_ir.selectors.knapsack.search import Round, between, fresh
from pruning_ir.selectors.knapsack.solvers import solve_counts, solve_labels


class MacsFn:
    """A MACs "latency" evaluated from the IR (the selector never builds a model)."""

    def __call__(self, model: nn.Module) -> float:
        raise AssertionError("an IR-evaluable function must not be called on models")

    def cost_model(self, ir: PruningIR, name: str) -> MacsModel:
        return MacsModel(ir, name)


def linear_macs(model: nn.Module) -> float:
    """The MACs of an MLP's linear layers for one sample, read off the (slim) model itself."""
    return float(sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)))


def _mlp(widths: tuple[int, ...] = (5, 4, 3, 2), seed: int = 0) -> PruningIR:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    ir = PruningIR(nn.Sequential(*layers[:-1]), example_inputs=(torch.randn(1, widths[0]),))
    gen = torch.Generator().manual_seed(seed)
    ir.snapshot().scores = {g.gid: torch.rand(g.size, generator=gen, dtype=torch.float64)
                            for g in ir.prunable_label_groups()}
    return ir


def _brute_force(ir: PruningIR, target: float, strict: bool,
                 bounds: dict[int, tuple[int, int, int]] | None = None) -> float:
    """Best kept score over every legal selection with MACs <= target."""
    macs = MacsModel(ir)
    groups = ir.prunable_label_groups()
    scores = ir.label_scores()
    options = []
    for g in groups:
        lo, hi, step = (bounds or {}).get(g.gid, (1, g.size, 1))
        order = torch.argsort(scores[g.gid], stable=True).tolist()
        if strict:
            subsets = [order[:r] for r in range(g.size - hi, g.size - lo + 1) if (g.size - r) % step == 0]
        else:
            subsets = [list(c) for r in range(g.size - hi, g.size - lo + 1) if (g.size - r) % step == 0
                       for c in itertools.combinations(range(g.size), r)]
        options.append([[ir.labels(g)[i] for i in sub] for sub in subsets])
    total = sum(float(s.sum()) for s in scores.values())
    best = -1.0
    for combo in itertools.product(*options):
        labels = [lab for part in combo for lab in part]
        if macs.cost(labels) <= target:
            best = max(best, total - sum(float(scores[lab.group][lab.index]) for lab in labels))
    return best


def _kept(ir: PruningIR, labels: list) -> float:
    scores = ir.label_scores()
    return sum(float(s.sum()) for s in scores.values()) - sum(float(scores[lab.group][lab.index]) for lab in labels)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knapsack_matches_brute_force_on_tiny_instances(seed: int, strict: bool) -> None:
    ir = _mlp(seed=seed)  # groups of 4 and 3 coupled through a 4x3 layer: MACs are bilinear
    base = MacsModel(ir).baseline()
    for frac in (0.8, 0.6, 0.45):
        target = frac * base
        labels = KnapsackLabelSelector(target, MacsFn(), strict_label_order=strict, verbose=False).select(ir)
        assert MacsModel(ir).cost(labels) <= target
        assert _kept(ir, labels) == pytest.approx(_brute_force(ir, target, strict), rel=1e-9)


def test_budget_never_exceeded_and_strict_order_holds() -> None:
    ir = _mlp((12, 16, 10, 6, 3), seed=3)
    macs = MacsModel(ir)
    scores = ir.label_scores()
    for frac in (0.9, 0.7, 0.5, 0.35, 0.2):
        target = frac * macs.baseline()
        labels = KnapsackLabelSelector(target, MacsFn(), verbose=False).select(ir)
        assert macs.cost(labels) <= target
        for g in ir.prunable_label_groups():
            removed = sorted(lab.index for lab in labels if lab.group == g.gid)
            lowest = sorted(torch.argsort(scores[g.gid], stable=True)[: len(removed)].tolist())
            assert removed == lowest  # ascending score order within every group
        # the same budget through a plain callable that reads the slim model
        plain = KnapsackLabelSelector(target, linear_macs, verbose=False, max_iterations=6).select(ir)
        assert linear_macs(ir.prune(labels=plain).model if plain else ir.model) <= target


def test_constraint_low_high_step_honoured_and_alias() -> None:
    ir = _mlp((12, 16, 10, 6, 3), seed=4)
    macs = MacsModel(ir)
    cons = GroupConstraint(low=4, high=0.75, step=2)
    for kw in ({"constraint": cons}, {"channels_constraint": cons}):
        labels = KnapsackLabelSelector(0.5 * macs.baseline(), MacsFn(), verbose=False, **kw).select(ir)
        assert macs.cost(labels) <= 0.5 * macs.baseline()
        for g in ir.prunable_label_groups():
            kept = g.size - sum(lab.group == g.gid for lab in labels)
            assert kept % 2 == 0 and 4 <= kept <= int(0.75 * g.size), (g.size, kept)
    with pytest.raises(InvalidInputError, match="not both"):
        KnapsackLabelSelector(1.0, MacsFn(), constraint=cons, channels_constraint=cons)
    # per-group dict: only the first group is constrained
    g0 = ir.prunable_label_groups()[0]
    labels = KnapsackLabelSelector(0.7 * macs.baseline(), MacsFn(), verbose=False,
                                   constraint={g0.gid: GroupConstraint(low=g0.size)}).select(ir)
    assert labels and macs.cost(labels) <= 0.7 * macs.baseline()
    assert not any(lab.group == g0.gid for lab in labels)
    ir2 = _mlp((5, 4, 3, 2), seed=5)
    bounds = {g.gid: (*GroupConstraint(step=2).bounds(g.size), 2) for g in ir2.prunable_label_groups()}
    target = 0.6 * MacsModel(ir2).baseline()
    got = KnapsackLabelSelector(target, MacsFn(), constraint=GroupConstraint(step=2), verbose=False).select(ir2)
    assert _kept(ir2, got) == pytest.approx(_brute_force(ir2, target, True, bounds), rel=1e-9)


def test_bounds_above_baseline_and_below_smallest() -> None:
    ir = _mlp(seed=6)
    macs = MacsModel(ir)
    assert KnapsackLabelSelector(macs.baseline(), MacsFn(), verbose=False).select(ir) == []
    assert BinarySearchLatencyLabelSelector(2 * macs.baseline(), MacsFn()).select(ir) == []
    with pytest.warns(RuntimeWarning, match="below the smallest model"):
        labels = KnapsackLabelSelector(1.0, MacsFn(), verbose=False).select(ir)
    assert {g.gid: sum(lab.group == g.gid for lab in labels) for g in ir.prunable_label_groups()} == {
        g.gid: g.size - 1 for g in ir.prunable_label_groups()}
    with pytest.warns(RuntimeWarning, match="below the smallest model"):
        assert len(BinarySearchLatencyLabelSelector(1.0, MacsFn()).select(ir)) == len(labels)


def test_a_latency_function_that_refuses_candidates() -> None:
    ir = _mlp((12, 16, 10, 6, 3), seed=7)
    refused = []

    def picky(model: nn.Module) -> float:
        widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
        if widths[0] < 10:  # e.g. a device that cannot run narrow first layers
            refused.append(widths)
            raise LatencyMeasurementError("first layer narrower than 10")
        return linear_macs(model)

    target = 0.6 * linear_macs(ir.model)
    labels = KnapsackLabelSelector(target, picky, verbose=False, max_iterations=8).select(ir)
    slim = ir.prune(labels=labels).model
    assert picky(slim) <= target
    labels = BinarySearchLatencyLabelSelector(target, picky).select(ir)
    assert picky(ir.prune(labels=labels).model) <= target

    def broken(model: nn.Module) -> float:
        raise ValueError("device offline")

    with pytest.raises(ValueError, match="device offline"):
        KnapsackLabelSelector(target, broken, verbose=False).select(ir)


def test_solver_time_limit_is_honoured() -> None:
    ir = _mlp((64, 256, 256, 256, 8), seed=8)
    macs = MacsModel(ir)
    sel = KnapsackLabelSelector(0.4 * macs.baseline(), MacsFn(), verbose=False, solver_execution_time_limit=0.05,
                                max_iterations=3)
    t0 = time.perf_counter()
    labels = sel.select(ir)
    assert macs.cost(labels) <= 0.4 * macs.baseline()
    assert all(h["solver_s"] < 0.05 + 2.0 for h in sel.history)  # the limit, plus model building slack
    assert time.perf_counter() - t0 < 60


def test_binary_search_meets_the_budget_with_a_prefix_of_the_global_ranking() -> None:
    ir = _mlp((12, 16, 10, 6, 3), seed=9)
    macs = MacsModel(ir)
    for frac in (0.8, 0.5, 0.3):
        sel = BinarySearchLatencyLabelSelector(frac * macs.baseline(), MacsFn())
        labels = sel.select(ir)
        assert macs.cost(labels) <= frac * macs.baseline()
        worst_removed = max(float(ir.label_scores()[lab.group][lab.index]) for lab in labels)
        kept = [(g.gid, i) for g in ir.prunable_label_groups() for i in range(g.size)
                if (g.gid, i) not in {(lab.group, lab.index) for lab in labels}]
        # every kept label either scores at least the threshold or is its group's floor
        floor = {g.gid: int(torch.argmax(ir.label_scores()[g.gid])) for g in ir.prunable_label_groups()}
        assert all(float(ir.label_scores()[g][i]) >= worst_removed or floor[g] == i for g, i in kept)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="target_latency"):
        KnapsackLabelSelector(float("nan"), MacsFn())
    with pytest.raises(InvalidInputError, match="not callable"):
        KnapsackLabelSelector(1.0, 3.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="step"):
        GroupConstraint(step=0)
    with pytest.raises(InvalidInputError, match="max_iterations"):
        KnapsackLabelSelector(1.0, MacsFn(), max_iterations=0)
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidInputError, match="confirmation_passes"):
            KnapsackLabelSelector(1.0, MacsFn(), confirmation_passes=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="confirmation_passes"):
            BinarySearchLatencyLabelSelector(1.0, MacsFn(), confirmation_passes=bad)  # type: ignore[arg-type]


def test_a_lucky_first_measurement_is_not_trusted() -> None:
    """A noisy function whose first reading of every model is 30% low: a selection is accepted
    only when a second reading also meets the budget, so the true latency stays within it."""
    ir = _mlp((12, 16, 10, 6, 3), seed=10)
    seen: dict[tuple[int, ...], int] = {}

    def noisy(model: nn.Module) -> float:
        key = tuple(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
        seen[key] = seen.get(key, 0) + 1
        return linear_macs(model) * (0.7 if seen[key] == 1 else 1.0)

    target = 0.5 * linear_macs(ir.model)
    for sel in (KnapsackLabelSelector(target, noisy, verbose=False, max_iterations=6),
                BinarySearchLatencyLabelSelector(target, noisy)):
        labels = sel.select(ir)
        assert linear_macs(ir.prune(labels=labels).model) <= target, type(sel).__name__


# ------------------------------------------------------------------------------ the count program
def _brute_mckp(scores: list[np.ndarray], savings: list[np.ndarray], need: float) -> float:
    best = math.inf
    for combo in itertools.product(*(range(len(s)) for s in scores)):
        if sum(float(c[i]) for c, i in zip(savings, combo, strict=True)) >= need:
            best = min(best, sum(float(w[i]) for w, i in zip(scores, combo, strict=True)))
    return best


@pytest.mark.parametrize("max_states", [200_000, 1])  # 1: the reduced program goes to HiGHS instead
@pytest.mark.parametrize("seed", range(6))
def test_multiple_choice_knapsack_matches_brute_force(seed: int, max_states: int) -> None:
    """Options of any shape: non-convex, negative scores, zero savings, ties."""
    rng = np.random.default_rng(seed)
    scores, savings = [], []
    for _ in range(4):
        k = int(rng.integers(1, 7))
        w = rng.normal(size=k).round(1) if seed % 2 else np.cumsum(rng.random(k))
        c = np.cumsum(rng.integers(0, 4, size=k)).astype(float)
        scores.append(w)
        savings.append(c)
    top = sum(float(c.max()) for c in savings)
    for need in (0.0, 0.3 * top, 0.7 * top, top):
        res = solve_mckp(scores, savings, need, rel_gap=0.0, max_states=max_states)
        got_c = sum(float(c[i]) for c, i in zip(savings, res.choice, strict=True))
        got_w = sum(float(w[i]) for w, i in zip(scores, res.choice, strict=True))
        assert got_c >= need - 1e-9 and got_w == pytest.approx(res.objective)
        assert res.status == "optimal" and res.lower_bound <= got_w + 1e-9
        assert got_w == pytest.approx(_brute_mckp(scores, savings, need), abs=1e-9), need
    res = solve_mckp(scores, savings, top + 1.0)
    assert res.status == "infeasible"
    assert res.choice == [int(np.flatnonzero(c == c.max())[np.argmin(w[c == c.max()])])  # most saving, least score
                          for c, w in zip(savings, scores, strict=True)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("uniform", [True, False])
def test_count_program_equals_the_label_milp_on_a_larger_instance(seed: int, uniform: bool) -> None:
    """The round's program over counts and the 0/1 program over labels (HiGHS, precedence chains,
    step integers) reach the same optimum within the gap, on 8 groups of 24-96 labels with
    bounds and steps, equal or unequal label costs inside a group."""
    rng = np.random.default_rng(seed)
    scores, costs, order, bounds = {}, {}, {}, {}
    for gid in range(8):
        n = int(rng.integers(24, 97))
        scores[gid] = rng.gamma(0.5, size=n) * 10.0 ** rng.uniform(-3, 0)
        costs[gid] = (np.full(n, rng.uniform(1, 50)) if uniform else rng.uniform(1, 50, size=n)).round(1)
        order[gid] = np.argsort(scores[gid], kind="stable")
        step = [1, 1, 2, 4, 8][gid % 5]
        bounds[gid] = (*GroupConstraint(low=0.1, high=0.9 if gid % 3 else None, step=step).bounds(n), step)
    total = sum(float(c.sum()) for c in costs.values())
    for frac in (0.2, 0.45, 0.7):
        need = frac * total
        new, status_new = solve_counts(scores, costs, order, bounds, need)
        old, status_old = solve_labels(scores, costs, order, bounds, need)
        assert status_new == status_old == "optimal"
        removed = {}
        for name, sol in (("counts", new), ("labels", old)):
            assert sum(float(costs[g][m].sum()) for g, m in sol.items()) >= need * (1 - 1e-6), name
            for g, m in sol.items():
                r = int(m.sum())
                lo, hi, step = bounds[g]
                assert lo <= len(m) - r <= hi and (len(m) - r) % step == 0, (name, g)
                assert np.array_equal(np.flatnonzero(m), np.sort(order[g][:r])), (name, g)  # score order
            removed[name] = sum(float(scores[g][m].sum()) for g, m in sol.items())
        assert removed["counts"] <= removed["labels"] * (1 + 2e-4)
        assert removed["labels"] <= removed["counts"] * (1 + 2e-4)


# ------------------------------------------------------------------------------ drifting measurements
def _drift_case() -> tuple[PruningIR, Callable[[nn.Module], float], Callable[[list], float], float, dict[str, int]]:
    """A machine that gets 20% faster after the unpruned model is measured (twice): every later
    absolute reading is 20% low. Returns the IR, the drifting function, the true cost of a
    selection, the target (half the MACs) and the call counter (reset it between selectors)."""
    ir = _mlp((12, 16, 10, 6, 3), seed=11)
    calls = {"n": 0}

    def drifting(model: nn.Module) -> float:
        calls["n"] += 1
        return linear_macs(model) * (1.0 if calls["n"] <= 2 else 0.8)

    def true_cost(labels: list) -> float:
        return linear_macs(ir.prune(labels=labels).model) if labels else linear_macs(ir.model)

    return ir, drifting, true_cost, 0.5 * linear_macs(ir.model), calls


def test_confirmation_cancels_a_speed_up_of_the_machine() -> None:
    """Trusting the drifted readings returns a model over the target; re-measuring the best
    rounds side by side with the unpruned model (ratios, in the units of the first measurement)
    returns one within it."""
    ir, drifting, true_cost, target, calls = _drift_case()
    fooled = KnapsackLabelSelector(target, drifting, verbose=False, max_iterations=6, confirmation_passes=0)
    assert true_cost(fooled.select(ir)) > target and not fooled.confirmation
    calls["n"] = 0
    sel = KnapsackLabelSelector(target, drifting, verbose=False, max_iterations=6)
    labels = sel.select(ir)
    assert true_cost(labels) <= target
    chosen = [c for c in sel.confirmation if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["latency"] == pytest.approx(true_cost(labels))
    assert any(c["search_latency"] <= target < c["latency"] for c in sel.confirmation)  # a reading it rejected


def test_binary_search_confirmation_cancels_a_speed_up_of_the_machine() -> None:
    """The same drift for the binary search: the prefix it settles on is over the target; side
    by side with the unpruned model it is not, and the search goes on to the right with
    drift-corrected readings until a prefix meets the target."""
    ir, drifting, true_cost, target, calls = _drift_case()
    fooled = BinarySearchLatencyLabelSelector(target, drifting, confirmation_passes=0)
    assert true_cost(fooled.select(ir)) > target and not fooled.confirmation
    calls["n"] = 0
    sel = BinarySearchLatencyLabelSelector(target, drifting)
    labels = sel.select(ir)
    assert true_cost(labels) <= target
    chosen = [c for c in sel.confirmation if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["removed"] == len(labels)
    assert chosen[0]["latency"] == pytest.approx(true_cost(labels))
    # the shortest prefix that meets the target at the true cost (the ranking is fixed)
    shorter = BinarySearchLatencyLabelSelector(target, linear_macs, confirmation_passes=0).select(ir)
    assert len(labels) == len(shorter)


@pytest.mark.parametrize("search_speed", [0.8, 1.25])
def test_search_goes_on_side_by_side_until_a_candidate_lands_in_the_window(search_speed: float) -> None:
    """The machine runs at another speed during the search than before and after it (0.8: 20%
    faster, 1.25: slower), and the latency has a fixed overhead (not proportional to MACs).
    Faster: every round the search settles on is truly over the target, so the side-by-side
    confirmation rejects them all (before: the fastest rejected one was returned, 20% over,
    with a warning). Slower: they are all truly far under it (before: returned, 22% under).
    Either way the selector searches on with side-by-side readings and returns a model within
    ``[1 - tolerance, 1] x target``."""
    ir = _mlp((12, 16, 10, 6, 3), seed=11)
    overhead = 0.3 * linear_macs(ir.model)
    target = 0.5 * (linear_macs(ir.model) + overhead)
    tolerance = 0.05

    def true_cost(labels: list) -> float:
        return linear_macs(ir.prune(labels=labels).model if labels else ir.model) + overhead

    def machine(search_calls: int) -> tuple[Callable[[nn.Module], float], dict[str, int]]:
        calls = {"n": 0}

        def fn(model: nn.Module) -> float:
            calls["n"] += 1
            speed = search_speed if 2 < calls["n"] <= search_calls else 1.0
            return (linear_macs(model) + overhead) * speed
        return fn, calls

    fn, calls = machine(10**9)
    fooled = KnapsackLabelSelector(target, fn, verbose=False, max_iterations=6, confirmation_passes=0,
                                   tolerance=tolerance)
    first_pick = true_cost(fooled.select(ir)) / target
    assert first_pick > 1.1 if search_speed < 1 else first_pick < 0.85
    fn, _ = machine(calls["n"])  # at that speed for exactly the search's calls
    sel = KnapsackLabelSelector(target, fn, verbose=False, max_iterations=6, tolerance=tolerance)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no candidate met the target" warning
        labels = sel.select(ir)
    assert 1 - tolerance <= true_cost(labels) / target <= 1
    first = [c for c in sel.confirmation if not math.isnan(c["search_latency"])]
    if search_speed < 1:
        assert first and all(c["latency"] > target for c in first)
    else:
        assert first and all(c["latency"] < (1 - tolerance) * target for c in first)
    extra = [h for h in sel.history if h.get("side_by_side")]
    assert 1 <= len(extra) <= 3
    chosen = [c for c in sel.confirmation if c["chosen"]]
    assert len(chosen) == 1 and math.isnan(chosen[0]["search_latency"])
    assert chosen[0]["latency"] == pytest.approx(true_cost(labels))


def test_outer_budget_steps() -> None:
    """Over points only: the secant through the two lowest (the unpruned model is one), its slope
    kept within 3x of the proportional one; in a bracket, bisection after two rounds on one side."""
    from pruning_ir.selectors.knapsack.steps import next_budget as step

    units = 10.0  # proxy budget per ms, proportional: baseline 100 units = 10 ms
    assert step(50, 6.0, 5.0, [], [(100, 10.0), (50, 6.0)], units, [False]) == pytest.approx(37.5)
    # two nearby rounds 0.01 ms apart: their slope (100 units/ms) is noise, capped at 30
    assert step(51, 6.01, 5.0, [], [(100, 10.0), (50, 6.0), (51, 6.01)], units, [False, False]) == pytest.approx(25.0)
    # bracket: secant towards the aim, then bisection once two rounds in a row fell on one side
    assert step(40, 6.0, 5.0, [(30, 4.0)], [(40, 6.0)], units, [True, False]) == pytest.approx(35.0)
    assert step(38, 5.5, 5.0, [(30, 4.0)], [(38, 5.5), (40, 6.0)], units, [True, False, False]) == pytest.approx(34.0)
    assert step(50, math.inf, 5.0, [], [(100, 10.0), (50, math.inf)], units, [False]) == pytest.approx(45.0)


# ------------------------------------------------------------------------------ attention head sizes
class PoolAttention(nn.Module):
    """Case: SDPA whose q/k head size (8, k out and the query token) and v head size (8, v out
    and out in) are separate groups of equal size, next to a 2-head group."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Linear(6, 16)
        self.v = nn.Linear(6, 16)
        self.query = nn.Parameter(torch.randn(1, 2, 1, 8))
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        k = self.k(x).view(b, s, 2, 8).transpose(1, 2)
        v = self.v(x).view(b, s, 2, 8).transpose(1, 2)
        a = nn.functional.scaled_dot_product_attention(self.query.expand(b, -1, -1, -1), k, v, scale=0.25)
        return self.out(a.transpose(1, 2).reshape(b, 16))


@pytest.mark.parametrize("strict", [True, False])
def test_knapsack_keeps_attention_head_sizes_equal(strict: bool) -> None:
    """Scores that make the v head features cheap to lose: without the tie the knapsack removes
    more v features than q/k features (SDPA would then run its slow math kernel); with it
    (the default) both lose the same count, within the budget, and the kept score is the best
    over every selection with equal counts (brute force over counts in score order)."""
    from pruning_ir.selectors.budget import attention_head_ties

    torch.manual_seed(0)
    ir = PruningIR(PoolAttention().eval(), example_inputs=(torch.randn(2, 5, 6),))
    groups = {tuple(sorted(m for m, _ in g.members)): g for g in ir.prunable_label_groups()}
    qk = groups[("k.bias", "k.weight", "query")]
    v = groups[("out.weight", "v.bias", "v.weight")]
    assert attention_head_ties(ir.snapshot()) == [(qk.gid, v.gid)]
    gen = torch.Generator().manual_seed(3)
    scores = {g.gid: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in ir.prunable_label_groups()}
    for g in ir.prunable_label_groups():
        if g.gid != v.gid:  # the v features matter least, the heads most
            scores[g.gid] += 10.0 if g.gid == qk.gid else 100.0
    ir.snapshot().scores = scores
    macs = MacsModel(ir)
    target = 0.7 * float(macs.baseline())

    def removed_counts(labels: list) -> dict[int, int]:
        return {g.gid: sum(lab.group == g.gid for lab in labels) for g in ir.prunable_label_groups()}

    free = KnapsackLabelSelector(target, MacsFn(), verbose=False, strict_label_order=strict,
                                 tie_attention_head_dims=False).select(ir)
    assert removed_counts(free)[v.gid] > removed_counts(free)[qk.gid]
    tied = KnapsackLabelSelector(target, MacsFn(), verbose=False, strict_label_order=strict).select(ir)
    counts = removed_counts(tied)
    assert counts[v.gid] == counts[qk.gid] > 0 and macs.cost(tied) <= target
    best = -1.0
    others = [g for g in ir.prunable_label_groups() if g.gid not in (qk.gid, v.gid)]
    order = {g.gid: torch.argsort(scores[g.gid], stable=True).tolist() for g in ir.prunable_label_groups()}
    for r in range(qk.size):
        for rest in itertools.product(*[range(g.size) for g in others]):
            pick = {qk.gid: r, v.gid: r} | {g.gid: k for g, k in zip(others, rest, strict=True)}
            labels = [ir.labels(g)[i] for g in ir.prunable_label_groups() for i in order[g.gid][: pick[g.gid]]]
            if macs.cost(labels) <= target:
                best = max(best, _kept(ir, labels))
    assert _kept(ir, tied) == pytest.approx(best, rel=2e-4)
    assert _kept(ir, free) >= _kept(ir, tied) - 1e-9  # the tie costs score, never gains it


def _pool_attention_ir() -> tuple[PruningIR, LabelGroup, LabelGroup]:
    """PoolAttention with scores that make the v head features the cheapest to lose."""
    torch.manual_seed(0)
    ir = PruningIR(PoolAttention().eval(), example_inputs=(torch.randn(2, 5, 6),))
    groups = {tuple(sorted(m for m, _ in g.members)): g for g in ir.prunable_label_groups()}
    qk, v = groups[("k.bias", "k.weight", "query")], groups[("out.weight", "v.bias", "v.weight")]
    gen = torch.Generator().manual_seed(3)
    scores = {g.gid: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in ir.prunable_label_groups()}
    scores[qk.gid] += 0.5
    ir.snapshot().scores = scores
    return ir, qk, v


def _reference_ranking(ir: PruningIR, qk: LabelGroup, v: LabelGroup, tie: bool,
                       cost: dict[int, float] | None = None) -> list[list]:
    """The ranking written out by hand: single labels by score, and with ``tie`` the k-th lowest
    q/k and v labels as one unit scored by their mean; stable on equal scores. With ``cost`` (group
    -> MACs one label saves) by score per MAC, a tied unit by its two scores over its two costs."""
    scores = ir.label_scores()
    c = cost or {g.gid: 1.0 for g in ir.prunable_label_groups()}
    units: list[tuple[float, list]] = []
    for g in ir.prunable_label_groups():
        if tie and g.gid in (qk.gid, v.gid):
            continue
        order = sorted(range(g.size), key=lambda i: float(scores[g.gid][i]))[: g.size - 1]
        units += [(float(scores[g.gid][i]) / c[g.gid], [ir.labels(g)[i]]) for i in order]
    if tie:
        oq, ov = (sorted(range(g.size), key=lambda i, g=g: float(scores[g.gid][i])) for g in (qk, v))
        for a, b in list(zip(oq, ov, strict=True))[: qk.size - 1]:
            units.append(((float(scores[qk.gid][a]) + float(scores[v.gid][b])) / (c[qk.gid] + c[v.gid]),
                          [ir.labels(qk)[a], ir.labels(v)[b]]))
    return [u for _, u in sorted(units, key=lambda u: u[0])]


@pytest.mark.parametrize(("tie", "by_cost"), [(True, False), (False, False), (True, True), (False, True)])
def test_global_selector_ties_attention_head_sizes(tie: bool, by_cost: bool) -> None:
    """Untied, the global ranking takes more v features than q/k features; tied (the default),
    both lose the same count, and the pick is the ranking written out by hand: whole units
    while they fit, then single labels; with ``cost="macs"`` the same, by score per MAC (each
    group's per-label MACs measured by removing one label with MacsModel)."""
    ir, qk, v = _pool_attention_ir()
    cost = None
    if by_cost:
        macs = MacsModel(ir)
        cost = {g.gid: float(macs.baseline() - macs.cost(ir.labels(g)[:1])) for g in ir.prunable_label_groups()}
    for n in (3, 6, 9, 14):
        got = GlobalScoreLabelSelector(n, tie_attention_head_dims=tie, cost="macs" if by_cost else None).select(ir)
        ranking = _reference_ranking(ir, qk, v, tie, cost)
        want: list = []
        skipping = False
        for unit in ranking:
            if len(want) + len(unit) <= n and not (skipping and len(unit) > 1):
                want += unit
            elif len(unit) > 1:
                skipping = True
        assert set(got) == set(want) and n - 1 <= len(got) <= n
        counts = {g: sum(lab.group == g for lab in got) for g in (qk.gid, v.gid)}
        if tie:
            assert counts[qk.gid] == counts[v.gid]
        elif n == 6 and not by_cost:
            assert counts[v.gid] > counts[qk.gid]


@pytest.mark.parametrize("tie", [True, False])
def test_binary_search_ties_attention_head_sizes(tie: bool) -> None:
    """The binary search returns the longest prefix of the (tied) ranking within the MACs budget."""
    ir, qk, v = _pool_attention_ir()
    macs = MacsModel(ir)
    target = 0.7 * float(macs.baseline())
    got = BinarySearchLatencyLabelSelector(target, MacsFn(), tie_attention_head_dims=tie).select(ir)
    ranking = _reference_ranking(ir, qk, v, tie)
    k = next(k for k in range(len(ranking) + 1) if macs.cost([lab for u in ranking[:k] for lab in u]) <= target)
    assert set(got) == {lab for u in ranking[:k] for lab in u}
    counts = {g: sum(lab.group == g for lab in got) for g in (qk.gid, v.gid)}
    assert (counts[qk.gid] == counts[v.gid]) if tie else (counts[v.gid] > counts[qk.gid])


def test_between_interpolates_kept_counts_within_the_constraints() -> None:
    """Per group, the kept count t of the way between two selections, on the group's step grid
    and lowest scores removed first; groups with equal counts at both ends (tied head sizes)
    stay equal."""
    from types import SimpleNamespace

    order = {0: np.array([3, 1, 0, 2, 4, 5, 6, 7]), 1: np.arange(8)[::-1].copy(), 2: np.arange(16)}
    bounds = {0: (1, 8, 1), 1: (1, 8, 1), 2: (4, 16, 4)}
    st = SimpleNamespace(order=order, bounds=bounds)

    def removal(counts: dict[int, int]) -> dict[int, np.ndarray]:
        out = {}
        for g, k in counts.items():
            m = np.zeros(len(order[g]), dtype=bool)
            m[order[g][:k]] = True
            out[g] = m
        return out

    a = removal({0: 6, 1: 6, 2: 12})  # kept 2, 2, 4
    b = removal({0: 2, 1: 2, 2: 0})  # kept 6, 6, 16
    for t, want in ((0.5, {0: 4, 1: 4, 2: 10}), (0.25, {0: 3, 1: 3, 2: 7})):
        mid = between(a, b, t, st)
        kept = {g: int((~m).sum()) for g, m in mid.items()}
        assert kept[0] == kept[1] == want[0]
        assert kept[2] % 4 == 0 and abs(kept[2] - want[2]) <= 2  # the nearest multiple of the step
        for g, m in mid.items():  # the lowest-ranked labels go
            assert set(np.flatnonzero(m)) == set(order[g][: len(m) - kept[g]].tolist())


def test_a_repeated_solution_is_replaced_by_an_interpolated_one() -> None:
    """When the solve returns a selection already measured, the search measures one between the
    closest rounds under and over the target instead (new information, not a repeat)."""
    from types import SimpleNamespace

    order = {0: np.arange(10)}
    st = SimpleNamespace(order=order, bounds={0: (1, 10, 1)}, target=10.0, aim=9.9, rounds=[])

    def removal(k: int) -> dict[int, np.ndarray]:
        m = np.zeros(10, dtype=bool)
        m[:k] = True
        return {0: m}

    st.rounds = [Round(1.0, removal(8), 8.0), Round(2.0, removal(2), 12.0), Round(1.5, removal(6), 9.0)]
    fresh_one, status = fresh(st, removal(3), "optimal")
    assert status == "optimal" and int(fresh_one[0].sum()) == 3  # not measured yet: kept as it is
    again, status = fresh(st, removal(6), "optimal")
    # between 9.0 (6 removed) and 12.0 (2 removed): t = (9.9 - 9) / 3 = 0.3 -> kept 4 + 0.3 * 4
    assert status == "interpolated" and int(again[0].sum()) == 5
