"""The composable core (target x metric x allocation x schedule x objective) against the selectors it
composes, hand counts, the objective's own cost on the slim model, and slim == masked at every step."""

from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pruning_ir import (
    GlobalScoreLabelSelector,
    InvalidInputError,
    L1NormCriterion,
    LossAwareCriterion,
    PruningIR,
    RandomCriterion,
    UniformLabelSelector,
    verify_pruning,
)
from pruning_ir.compose import (
    AGP,
    NM,
    Annealing,
    Blocks,
    Channels,
    Elements,
    Fixed,
    Global,
    Knapsack,
    Latency,
    Linear,
    Macs,
    Params,
    Pruner,
    Ratio,
    Uniform,
    calibrated,
    output_group,
    schedule_fractions,
)
from pruning_ir.latency import MacsLatency, ParamsLatency
from pruning_ir.sparsity import sparsity_report


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


class Res(nn.Module):
    """stem conv/BN (8 channels, coupled with the block's output by the add), a block whose inner
    12 channels are a group of their own, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.c2, self.bn2 = nn.Conv2d(12, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        h = h + self.bn2(self.c2(torch.relu(self.bn1(self.c1(h)))))
        return self.head(torch.relu(h).mean((2, 3)))


def _res(seed: int = 0) -> Res:
    torch.manual_seed(seed)
    m = Res().eval()
    with torch.no_grad():
        for bn in (m.bn0, m.bn1, m.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_mean.uniform_(-0.3, 0.3)
    return m


X = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
XR = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---------------------------------------------------------------------------- against the selectors
def test_uniform_at_a_ratio_is_the_uniform_selector() -> None:
    ir = PruningIR(_mlp(), example_inputs=(X,))
    pruner = Pruner(Channels(), L1NormCriterion, Uniform(), objective=Ratio(0.5))
    labels = pruner.select(ir)
    # by hand: groups of 8 and 6 labels; half of the 14 = 7 = floor(0.5 * 8) + floor(0.5 * 6)
    assert len(labels) == 7 and pruner.allocation.ratio == pytest.approx(0.5)  # type: ignore[attr-defined]
    assert sorted(labels) == sorted(UniformLabelSelector(0.5).select(ir))


def test_global_at_a_ratio_is_the_global_selector() -> None:
    ir = PruningIR(_mlp(), example_inputs=(X,))
    labels = Pruner(Channels(), L1NormCriterion, Global(per_cost=False), objective=Ratio(0.5)).select(ir)
    assert sorted(labels) == sorted(GlobalScoreLabelSelector(7).select(ir))


@pytest.mark.parametrize("objective", [Macs(0.4), Params(0.4)])
def test_global_per_cost_is_the_shortest_prefix_of_the_cost_ranking(objective: Any) -> None:
    """Oracle: GlobalScoreLabelSelector(n, cost=...) for n and n - 1 around the objective's budget."""
    model = _res()
    ir = PruningIR(model, example_inputs=(XR,))
    labels = Pruner(Channels(), RandomCriterion, Global(), objective=objective).select(ir)
    fn = MacsLatency((XR,)) if isinstance(objective, Macs) else ParamsLatency()
    cost = "macs" if isinstance(objective, Macs) else "params"
    budget = 0.6 * fn(model)
    assert sorted(labels) == sorted(GlobalScoreLabelSelector(len(labels), cost=cost).select(ir))
    assert fn(ir.prune(labels=labels, verify=False).model) <= budget
    fewer = GlobalScoreLabelSelector(len(labels) - 1, cost=cost).select(ir)
    assert fn(ir.prune(labels=fewer, verify=False).model) > budget


# ---------------------------------------------------------------------------- every allocation, one objective
def _allocations() -> list[Any]:
    def evaluator(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(m(XR).square().mean())

    return [Uniform(), Global(), Global(per_cost=False), Knapsack(),
            Annealing(evaluator, start_temperature=1.0, stop_temperature=0.5, cool_down_rate=0.6, population=2)]


@pytest.mark.parametrize("allocation", _allocations(), ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_every_allocation_reaches_the_macs_objective_and_slim_equals_masked(allocation: Any, seed: int) -> None:
    """Oracle: the MACs of the slim model counted on it (not by the IR), and verify_pruning (slim ==
    the original with the removed labels masked) on random scores; the user's model is untouched."""
    model = _res(seed)
    before = copy.deepcopy(model)
    pruner = Pruner(Channels(), functools.partial(_random, seed=seed), allocation, objective=Macs(0.45))
    slim = pruner.run(model, XR)
    count = MacsLatency((XR,))
    assert count(slim) <= 0.55 * count(model)
    step = pruner.history[0]
    assert step.reached == pytest.approx(1 - count(slim) / count(model)) and step.reached >= 0.45
    assert step.ir is not None and verify_pruning(step.ir, step.labels).exact
    assert _same(model, before)
    if isinstance(allocation, Uniform):  # the smallest uniform ratio: a bit less misses the budget
        ir = step.ir
        less = UniformLabelSelector(max(0.0, allocation.ratio - 0.02)).select(ir)
        assert count(ir.prune(labels=less, verify=False).model) > 0.55 * count(model)


def _random(ir: PruningIR, seed: int) -> None:
    RandomCriterion(ir, seed=seed).score()


def annealing_evaluator(m: nn.Module) -> float:
    """The annealing tests' score (also run by tests/dist_annealing_worker.py)."""
    with torch.no_grad():
        return -float(m(XR).square().mean())


def test_annealing_candidates_all_meet_the_budget_and_the_best_is_returned() -> None:
    evaluator = annealing_evaluator
    model = _res(3)
    ann = Annealing(evaluator, start_temperature=1.0, stop_temperature=0.3, cool_down_rate=0.7, population=3, seed=2)
    pruner = Pruner(Channels(), L1NormCriterion, ann, objective=Params(0.3))
    slim = pruner.run(model, XR)
    base = ParamsLatency()(model)
    assert len(ann.history) == 1 + 3 * 4  # the start, then 3 candidates at each of 4 temperatures (1 .. 0.343)
    assert all(h["cost"] <= 0.7 * base for h in ann.history)
    best = max(ann.history, key=lambda h: h["score"])
    assert best["fractions"] == ann.best
    assert evaluator(slim) == pytest.approx(best["score"], abs=1e-6)  # slim == the best masked candidate


def test_annealing_over_two_gloo_ranks_equals_one_process(tmp_path: Path) -> None:
    """Oracle: the one-process run. Two ranks split each temperature's candidates and both end with the
    same history, best fractions and slim weights as one process."""
    from gloo import two_ranks_and_one

    two_ranks_and_one("dist_annealing_worker.py", tmp_path)
    one = torch.load(tmp_path / "one.0.pt")
    assert len(one["history"]) == 1 + 3 * 4
    for r in range(2):
        two = torch.load(tmp_path / f"two.{r}.pt")
        assert two["history"] == one["history"] and two["best"] == one["best"]
        assert all(torch.equal(two["state"][k], v) for k, v in one["state"].items())


# ---------------------------------------------------------------------------- targets
def test_channels_target_by_module_and_exclusion_of_a_coupled_op() -> None:
    model = _res()
    ir = PruningIR(model, example_inputs=(XR,))
    inner, outer = output_group(ir, "c1"), output_group(ir, "stem")
    assert inner is not None and outer is not None and output_group(ir, "c2") == outer  # the add couples them
    labels = Pruner(Channels(["c1"]), L1NormCriterion, Uniform(), objective=Ratio(0.5)).select(ir)
    assert {lab.group for lab in labels} == {inner.gid} and len(labels) == 6
    # excluding c2 freezes the residual group (stem, bn0, c2, bn2 and the head's input) with it
    labels = Pruner(Channels(exclude=["c2"]), L1NormCriterion, Uniform(), objective=Ratio(0.5)).select(ir)
    assert {lab.group for lab in labels} == {inner.gid}
    by_type = Channels([nn.Conv2d]).groups(ir)
    assert {g.gid for g in by_type} == {inner.gid, outer.gid}
    with pytest.raises(InvalidInputError, match="no module named 'nope'"):
        Channels(["nope"]).groups(ir)
    with pytest.warns(UserWarning, match="head"):  # the model's output is not prunable: said, not skipped
        Channels(["head", "c1"]).groups(ir)


def test_fixed_fractions_by_module_name_and_max_ratio() -> None:
    ir = PruningIR(_res(), example_inputs=(XR,))
    labels = Pruner(Channels(), L1NormCriterion, Fixed({"c1": 0.5, "stem": 0.25})).select(ir)
    per = {g: sum(1 for lab in labels if lab.group == g) for g in {lab.group for lab in labels}}
    assert per == {output_group(ir, "c1").gid: 6, output_group(ir, "stem").gid: 2}  # type: ignore[union-attr]
    # max_ratio caps every group: a quarter of 12 and of 8 at most, whatever the objective asks
    capped = Pruner(Channels(max_ratio=0.25), L1NormCriterion, Global(per_cost=False), objective=Ratio(0.2))
    labels = capped.select(ir)
    assert all(sum(1 for lab in labels if lab.group == g.gid) <= g.size // 4 for g in ir.prunable_label_groups())


# ---------------------------------------------------------------------------- schedules, metric, rewind
def test_agp_steps_rescore_each_slim_model_and_fine_tune_between() -> None:
    model = _res(4)
    sizes, tuned = [], []

    def metric(ir: PruningIR) -> None:
        sizes.append(sum(g.size for g in ir.prunable_label_groups()))
        L1NormCriterion(ir).score()

    def finetune(m: nn.Module, step: int) -> None:
        tuned.append(step)
        with torch.no_grad():
            m.c1.weight.mul_(1.01)

    pruner = Pruner(Channels(), metric, Knapsack(), AGP(3), Macs(0.5), finetune=finetune)
    slim = pruner.run(model, XR)
    assert [s.asked for s in pruner.history] == pytest.approx(schedule_fractions("agp", 0.5, 3))
    assert all(s.reached >= s.asked for s in pruner.history)
    assert sizes[0] > sizes[1] > sizes[2] and tuned == [0, 1, 2]
    for s in pruner.history:
        assert s.ir is not None and verify_pruning(s.ir, s.labels).exact
    count = MacsLatency((XR,))
    assert count(slim) <= 0.5 * count(model)


def test_calibrated_metric_equals_the_manual_criterion_loop() -> None:
    model = _res(5)
    batches = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 3]))
               for i in range(3)]
    ir_a = PruningIR(model, example_inputs=(XR,))
    calibrated(LossAwareCriterion, batches, nn.functional.cross_entropy)(ir_a)
    ir_b = PruningIR(copy.deepcopy(model), example_inputs=(XR,))
    with LossAwareCriterion(ir_b) as collect:
        for x, y in batches:
            nn.functional.cross_entropy(collect(x), y).backward()
    a, b = ir_a.label_scores(), ir_b.label_scores()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
    assert all(p.grad is None for p in model.parameters())


def test_rewind_gives_the_kept_weights_their_rewound_values() -> None:
    model = _res(6)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    pruner = Pruner(Channels(), L1NormCriterion, Uniform(), objective=Ratio(0.25), rewind=init)
    slim = pruner.run(model, XR)
    fresh = _res(6)  # the rewind weights, pruned with the same labels
    fresh_ir = PruningIR(fresh, example_inputs=(XR,))
    want = fresh_ir.prune(labels=[fresh_ir.labels(lab.group)[lab.index] for lab in pruner.history[0].labels]).model
    assert _same(slim, want)


# ---------------------------------------------------------------------------- fine-grained targets
def test_elements_local_and_global_exact_counts_and_agp_masks_that_only_grow() -> None:
    model = _mlp(7)
    local = Pruner(Elements(), "l1", Uniform(), objective=Ratio(0.6)).run(model)
    for r in sparsity_report(local).layers:
        assert r.zeros == round(0.6 * r.numel)
    assert all(p.ne(0).all() for p in model.parameters() if p.dim() > 1)  # a masked copy: the user's model is whole
    glob = Pruner(Elements(), "l1", Global(), objective=Ratio(0.6)).run(model)
    rep = sparsity_report(glob)
    assert rep.zeros == round(0.6 * rep.numel)
    masks: list[torch.Tensor] = []

    def snapshot(m: nn.Module, step: int) -> None:
        masks.append(m[2].weight_mask.clone())

    pruner = Pruner(Elements(modules=["2"]), "l1", Uniform(), Linear(3), Ratio(0.75), finetune=snapshot)
    pruner.run(model)
    assert [s.reached for s in pruner.history] == pytest.approx([0.25, 0.5, 0.75], abs=1 / 48)
    assert all(bool((b <= a).all()) for a, b in itertools.pairwise(masks))  # zeros stay zero


def test_n_m_and_blocks_targets() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    nm = Pruner(NM(2, 4)).run(model)
    for layer in (nm[0], nm[2]):
        assert bool(((layer.weight.reshape(-1, 4) == 0).sum(1) == 2).all())
    blk = Pruner(Blocks((2, 2)), "l1", Uniform(), objective=Ratio(0.5)).run(model)
    w = blk[0].weight.detach()
    tiles = (w.reshape(4, 2, 4, 2) == 0).all(3).all(1)
    assert int(tiles.sum()) == 8 and float((w == 0).float().mean()) == 0.5


# ---------------------------------------------------------------------------- errors
def test_compositions_that_cannot_work_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidInputError, match="Knapsack allocates a cost"):
        Pruner(Channels(), None, Knapsack(), objective=Ratio(0.3)).run(_mlp(), X)
    with pytest.raises(InvalidInputError, match="keeps every shape"):
        Pruner(Elements(), "l1", Uniform(), objective=Macs(0.3))
    with pytest.raises(InvalidInputError, match=r"calibrated\(LossAwareCriterion"):
        Pruner(Channels(), LossAwareCriterion).run(_mlp(), X)
    with pytest.raises(InvalidInputError, match="one step"):
        Pruner(NM(2, 4), schedule=AGP(2))
    with pytest.raises(InvalidInputError, match="Uniform"):
        Pruner(Elements(), "l1", Knapsack(), objective=Ratio(0.3))
    with pytest.raises(InvalidInputError, match=r"cannot remove 0\.900"):
        Pruner(Channels(max_ratio=0.25), None, Uniform(), objective=Macs(0.9)).run(_res(), XR)
    with pytest.raises(InvalidInputError, match="fraction"):
        Macs(1.5)


def test_iterative_pruning_is_the_knapsack_composition() -> None:
    """The workflows' IterativePruning and the same parts composed by hand pick the same labels."""
    from pruning_ir.compose import Schedule
    from pruning_ir.workflows import IterativePruning

    model = _res(9)
    job = IterativePruning(model, (XR,), target=0.4, steps=2)
    a = job.run()
    pruner = Pruner(Channels(), L1NormCriterion, Knapsack(), Schedule("agp", 2), Macs(0.4))
    b = pruner.run(model, XR)
    def key(steps: list[Any]) -> list[list[tuple[int, int]]]:
        return [[(lab.group, lab.index) for lab in s.labels] for s in steps]

    assert key(job.history) == key(pruner.history) and _same(a, b)



# ---------------------------------------------------------------------------- review regressions
def test_ratio_over_steps_counts_what_earlier_steps_removed() -> None:
    """A group that shrinks to its kernel step stops being prunable on the next step's IR; its kept
    labels must still count as kept (they were counted as removed, over-reporting the objective).
    Oracle: the widths of the final slim model."""
    from test_probe import GroupedExperts

    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))

    def widths(m: nn.Module) -> int:
        return int(m.inp.out_features + m.w1.shape[2] + m.w2.shape[2])

    for schedule in (Linear(2), AGP(3)):
        torch.manual_seed(0)
        model = GroupedExperts().eval()
        pruner = Pruner(Channels(), L1NormCriterion, Uniform(), schedule, Ratio(0.5))
        slim = pruner.run(model, x)
        real = 1 - widths(slim) / widths(model)
        assert real >= 0.5 and pruner.history[-1].reached == pytest.approx(real), (schedule, real)


def test_floors_and_fixed_fractions_are_of_the_original_sizes_across_steps() -> None:
    model = _res(11)
    capped = Pruner(Channels(max_ratio=0.5), L1NormCriterion, Global(per_cost=False), Linear(2), Ratio(0.45))
    slim = capped.run(model, XR)
    assert slim.c1.out_channels >= 6 and slim.stem.out_channels >= 4  # half of 12 and of 8, not compounded
    fixed = Pruner(Channels(), L1NormCriterion, Fixed({"c1": 0.5}), Linear(2)).run(model, XR)
    assert fixed.c1.out_channels == 6  # 0.5 of the original 12 over two steps, not 0.5 twice


def test_excluding_a_product_axis_freezes_every_factor() -> None:
    """A query projection's output is heads x head width: two groups. Excluding the attention keeps both,
    and a Linear target holds both."""
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=48, attn_implementation="eager")).eval()
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    ir = PruningIR(bert, example_inputs=(ids,))
    q = "encoder.layer.0.attention.self.query"
    from pruning_ir.compose import output_groups

    heads, width = output_groups(ir, q)
    assert (heads.size, width.size) == (4, 8)  # outer factor first
    attention = [q, q.replace("query", "key"), q.replace("query", "value"), "encoder.layer.0.attention.output.dense"]
    target = Channels(exclude=attention)
    assert {heads.gid, width.gid}.isdisjoint(g.gid for g in target.groups(ir))
    slim = Pruner(target, L1NormCriterion, Uniform(), objective=Ratio(0.4)).run(bert, ids)
    assert slim.encoder.layer[0].attention.self.query.out_features == 32
    assert {heads.gid, width.gid} <= {g.gid for g in Channels([nn.Linear]).groups(ir)}
    assert {g.gid for g in Channels([nn.Linear], outer=True).groups(ir)} >= {heads.gid}
    assert width.gid not in {g.gid for g in Channels([q], outer=True).groups(ir)}


def test_unreachable_and_empty_targets_are_errors_for_every_allocation() -> None:
    for allocation in (Uniform(), Global(), Knapsack()):
        with pytest.raises(InvalidInputError, match="cannot remove"):
            Pruner(Channels(max_ratio=0.25), None, allocation, objective=Macs(0.9)).run(_res(), XR)
    with pytest.raises(InvalidInputError, match="selects no prunable group"):
        Pruner(Channels([nn.BatchNorm1d]), None, Uniform(), objective=Macs(0.3)).run(_res(), XR)
    with pytest.raises(InvalidInputError, match="neither a module name"):
        Pruner(Channels(), None, Fixed({12345: 0.5})).run(_res(), XR)
    with pytest.raises(InvalidInputError, match="inplace"):
        Pruner(Channels()).run(_res(), XR, inplace=True)
    with pytest.raises(InvalidInputError, match="single weights"):
        Pruner(Elements(), L1NormCriterion)
    with pytest.raises(InvalidInputError, match="come from the target"):
        Knapsack({"constraint": None})


def test_calibration_leaves_the_users_buffers_and_gradients_alone() -> None:
    model = _res(12).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 3]))
               for i in range(2)]
    Pruner(Channels(), calibrated(LossAwareCriterion, batches, nn.functional.cross_entropy), Uniform(),
           objective=Ratio(0.25)).run(model, XR)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN statistics too
    assert all(p.grad is not None and bool((p.grad == 0.5).all()) for p in model.parameters())


def test_latency_objective_without_a_cost_model_for_this_ir() -> None:
    """MacsLatency on other inputs than the trace's has no cost model: Global ranks by score and
    measures candidates."""
    fn = MacsLatency((torch.randn(3, 3, 8, 8),))
    for allocation in (Uniform(), Global()):
        pruner = Pruner(Channels(), L1NormCriterion, allocation, objective=Latency(0.4, fn))
        slim = pruner.run(_res(13), XR)
        assert fn(slim) <= 0.6 * fn(_res(13))
