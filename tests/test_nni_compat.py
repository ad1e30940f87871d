"""NNI's one-shot pruners and config_list on the engine, against hand-derived counts and the masked model."""

from __future__ import annotations

import copy
import itertools
import math
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import digits_cnn as dc

import pruning_ir.compat.nni as nni
from pruning_ir import InvalidInputError, L1NormCriterion, PruningIR
from pruning_ir.compat.nni import FPGMPruner, L1FilterPruner, L2FilterPruner, LevelPruner, SlimPruner, folded_state
from pruning_ir.sparsity import sparsity_report


class Chain(nn.Module):
    """conv(1 -> 8) -> BN -> conv(8 -> 12) -> BN -> pool -> linear(12 -> 10) -> linear(10 -> 3): no coupling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.fc, self.head = nn.Linear(12, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x))).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


def _chain(seed: int = 0) -> Chain:
    torch.manual_seed(seed)
    m = Chain().eval()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.weight.uniform_(0.2, 2.0)
            bn.running_mean.uniform_(-0.5, 0.5)
    return m


X = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def _kept(model: nn.Module, conv: str) -> int:
    w = dict(model.named_modules())[conv].weight
    return int((w.flatten(1).abs().sum(1) != 0).sum())


@pytest.mark.parametrize("pruner", [L1FilterPruner, L2FilterPruner, FPGMPruner])
def test_per_layer_sparsity_is_exact_and_speedup_equals_the_masked_model(pruner: type) -> None:
    model = _chain(1)
    config = [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"sparsity": 0.3, "op_names": ["fc"]}]
    p = pruner(model, config, dummy_input=X)
    masked = p.compress()
    assert masked is model and prune.is_pruned(model)  # in place, as NNI
    # by hand: c1 8 -> 4, c2 12 -> 6, fc 10 -> 7 (floor of 0.3 * 10 = 3 removed); head untouched
    assert (_kept(model, "c1"), _kept(model, "c2"), _kept(model, "fc")) == (4, 6, 7)
    slim = p.speedup()
    assert (slim.c1.out_channels, slim.c2.out_channels, slim.fc.out_features, slim.head.out_features) == (4, 6, 7, 3)
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-5
    with torch.no_grad():
        assert torch.allclose(slim(X), model(X), atol=1e-5)


def test_l1_filter_pruner_removes_the_lowest_l1_filters() -> None:
    model = _chain(2)
    ref = PruningIR(_chain(2), example_inputs=(X,))
    L1NormCriterion(ref).score()
    scores = ref.snapshot().scores
    order = {g.describe(): torch.argsort(scores[g.gid], stable=True) for g in ref.prunable_label_groups()}
    p = L1FilterPruner(model, [{"sparsity": 0.25, "op_names": ["c2"]}], dummy_input=X)
    p.compress()
    (gid,) = {lab.group for lab in p.labels}
    g = next(g for g in p.ir.prunable_label_groups() if g.gid == gid)
    assert sorted(lab.index for lab in p.labels) == sorted(order[g.describe()][:3].tolist())


def test_exclusion_keeps_a_coupled_group_whole() -> None:
    model = dc.make_model(0).eval()
    x = torch.randn(2, 1, 8, 8)
    p = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": ["stem.0"]}],
                       dummy_input=x)
    p.compress()
    stem_group = p._group_of("stem.0")
    assert stem_group is not None
    assert stem_group.gid not in {lab.group for lab in p.labels}  # stem's output is coupled with stage 1's adds
    assert _kept(model, "layers.0.conv2") == 32  # coupled with the stem: whole
    assert _kept(model, "layers.0.conv1") == 16  # its own group: half
    slim = p.speedup()
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-4
    assert sum(t.numel() for t in slim.parameters()) < sum(t.numel() for t in model.parameters())


def test_total_sparsity_with_a_cap_per_layer() -> None:
    model = _chain(3)
    p = SlimPruner(model, [{"total_sparsity": 0.5, "op_types": ["BatchNorm2d"], "max_sparsity_per_layer": 0.6}],
                   dummy_input=X)
    p.compress()
    per_group = Counter(lab.group for lab in p.labels)
    assert sum(per_group.values()) == 10  # floor(0.5 * (8 + 12))
    sizes = {g.gid: g.size for g in p.ir.prunable_label_groups()}
    assert all(n <= int(0.6 * sizes[gid]) for gid, n in per_group.items())
    # network slimming: the smallest |gamma| over both BN layers go, up to the cap
    gammas = sorted([(float(abs(v)), "b1", i) for i, v in enumerate(_chain(3).b1.weight.detach())]
                    + [(float(abs(v)), "b2", i) for i, v in enumerate(_chain(3).b2.weight.detach())])
    caps = {"b1": int(0.6 * 8), "b2": int(0.6 * 12)}
    taken: Counter[str] = Counter()
    want = []
    for _, layer, i in gammas:
        if taken[layer] < caps[layer] and len(want) < 10:
            taken[layer] += 1
            want.append((layer, i))
    got = {("b1" if p._group_of("b1").gid == lab.group else "b2", lab.index) for lab in p.labels}  # type: ignore[union-attr]
    assert got == set(want)


def test_export_model_writes_unmasked_names_and_the_masks(tmp_path: Path) -> None:
    model = _chain(4)
    p = L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=X)
    p.compress()
    p.export_model(str(tmp_path / "model.pth"), str(tmp_path / "mask.pth"))
    fresh = _chain(9)
    fresh.load_state_dict(torch.load(tmp_path / "model.pth"))
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))
    masks = torch.load(tmp_path / "mask.pth")
    assert set(masks) >= {"c1", "b1", "c2"} and int(masks["c1"]["weight"].flatten(1).amax(1).sum()) == 4
    assert set(folded_state(model)) == set(_chain(0).state_dict())


def test_level_pruner_is_exact_per_op() -> None:
    model = _chain(5)
    p = LevelPruner(model, [{"sparsity": 0.8, "op_types": ["default"]}, {"sparsity": 0.4, "op_names": ["head"]}],
                    dummy_input=X)
    p.compress()
    rep = {r.name: r for r in sparsity_report(model).layers}
    assert rep["head.weight"].zeros == round(0.4 * 30)
    assert all(rep[n].zeros == round(0.8 * rep[n].numel) for n in ("c1.weight", "c2.weight", "fc.weight"))
    same = p.speedup()
    with torch.no_grad():
        assert torch.equal(same(X), model(X))


def test_config_errors_name_the_problem() -> None:
    model = _chain()
    with pytest.raises(InvalidInputError, match="dummy_input"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
    with pytest.raises(InvalidInputError, match="unknown keys"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"], "sparse": 1}], dummy_input=X)
    with pytest.raises(InvalidInputError, match="exactly one of"):
        L1FilterPruner(model, [{"op_types": ["Conv2d"]}], dummy_input=X)
    with pytest.raises(InvalidInputError, match="no module named 'c9'"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_names": ["c9"]}], dummy_input=X)
    with pytest.raises(InvalidInputError, match="selects no module"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["LSTM"]}], dummy_input=X).compress()
    with pytest.raises(InvalidInputError, match="compress\\(\\) first"):
        L1FilterPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=X).speedup()
    assert not prune.is_pruned(model)


BATCHES = [(torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(i)), torch.randint(0, 3, (8,),
            generator=torch.Generator().manual_seed(10 + i))) for i in range(3)]


def _trainer(model: nn.Module, optimizer: object, criterion: object, epoch: int) -> None:
    for x, y in BATCHES:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()


@pytest.mark.parametrize(("pruner", "crit"), [("ActivationAPoZRankFilterPruner", "APoZCriterion"),
                                              ("ActivationMeanRankFilterPruner", "MeanActivationCriterion"),
                                              ("TaylorFOWeightFilterPruner", "TaylorFOWeightCriterion")])
def test_trainer_pruners_rank_like_their_criterion_on_the_trainer_batches(pruner: str, crit: str) -> None:
    """Oracle: the criterion calibrated by hand (collect on the same first two batches) selects the
    same labels."""
    import pruning_ir
    import pruning_ir.compat.nni as nni

    model = _chain(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = getattr(nni, pruner)(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
                                     {"exclude": True, "op_names": ["head"]}],
                             optimizer=optimizer, trainer=_trainer, criterion=None, dummy_input=X,
                             statistics_batch_num=2)
    p.compress()
    ref = PruningIR(_chain(6), example_inputs=(X,))
    with getattr(pruning_ir, crit)(ref) as collect:
        for x, y in BATCHES[:2]:
            out = collect(x)
            if crit == "TaylorFOWeightCriterion":
                nn.functional.cross_entropy(out, y).backward()
    chosen = {h.describe() for h in p.ir.prunable_label_groups() if h.gid in {lab.group for lab in p.labels}}
    assert len(chosen) == 3  # c1, c2, fc (head excluded)
    want = {(g.describe(), i) for g in ref.prunable_label_groups() if g.describe() in chosen
            for i in torch.argsort(ref.snapshot().scores[g.gid], stable=True)[: g.size // 2].tolist()}
    groups = {g.gid: g.describe() for g in p.ir.prunable_label_groups()}
    assert {(groups[lab.group], lab.index) for lab in p.labels} == want
    folded = folded_state(model)
    for k, v in before.items():  # nothing trained (the trainer ran the pruner's copy): kept entries unchanged
        kept = folded[k] != 0
        assert torch.equal(folded[k][kept], v[kept])
    slim = p.speedup()
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-5 and slim.c1.out_channels == 4
    with pytest.raises(InvalidInputError, match="trainer"):
        getattr(nni, pruner)(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}], dummy_input=X)


@pytest.mark.parametrize("algorithm", ["l1", "level"])
def test_agp_raises_sparsity_on_the_schedule_and_trains_in_between(algorithm: str) -> None:
    """Oracle: after iteration t of n the per-op sparsity is s * (1 - (1 - t/n)^3) (hand formula),
    masks only grow, and the trainer's steps change only kept weights."""
    from pruning_ir.compat.nni import AGP_Pruner

    model = _chain(7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen: list[tuple[float, ...]] = []
    zeros_before: list[torch.Tensor] = []

    def trainer(m: nn.Module, opt: torch.optim.Optimizer, crit: object, epoch: int) -> None:
        w = m.c2.weight.detach()
        kept = (w.flatten(1).abs().sum(1) != 0).float().mean() if algorithm == "l1" else (w != 0).float().mean()
        seen.append((epoch, 1 - float(kept)))
        zeros_before.append(w == 0)
        for x, y in BATCHES:
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    p = AGP_Pruner(model, [{"sparsity": 0.5, "op_names": ["c2"]}], optimizer, trainer, num_iterations=4,
                   pruning_algorithm=algorithm, dummy_input=X)
    p.compress()
    size = 12 if algorithm == "l1" else model.c2.weight.numel()
    want = [round(0.5 * (1 - (1 - t / 4) ** 3) * size) / size for t in range(1, 5)]
    if algorithm == "l1":
        want = [math.floor(0.5 * (1 - (1 - t / 4) ** 3) * 12 + 1e-9) / 12 for t in range(1, 5)]
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [round(s, 4) for _, s in seen] == [round(w, 4) for w in want]
    for a, b in itertools.pairwise(zeros_before):
        assert bool((b | ~a).all())  # what was zero stays zero
    if algorithm == "l1":
        slim = p.speedup()
        assert slim.c2.out_channels == 6 and p.max_abs_diff is not None and p.max_abs_diff < 1e-5


def test_lottery_ticket_prunes_on_the_schedule_and_rewinds_the_kept_weights() -> None:
    """Oracle: after iteration i the sparsity of each op is 1 - (1 - s)^(i/n) (hand formula), and the
    kept weights are the initial ones (rewind), the optimizer's state too."""
    from pruning_ir.compat.nni import LotteryTicketPruner

    model = _chain(8)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    p = LotteryTicketPruner(model, [{"prune_iterations": 3, "sparsity": 0.8, "op_types": ["default"]}], optimizer)
    p.compress()
    got = []
    for i in p.get_prune_iterations():
        p.prune_iteration_start()
        w = folded_state(model)
        got.append(int((w["c2.weight"] == 0).sum()))
        if i > 0:
            for k in ("c1.weight", "c2.weight", "fc.weight", "head.weight"):
                kept = w[k] != 0
                assert torch.equal(w[k][kept], init[k][kept])  # rewound under the masks
            assert not optimizer.state  # momentum buffers back to the empty initial state
        for x, y in BATCHES:  # train this iteration
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    numel = model.c2.weight.numel()
    assert got == [round((1 - 0.2 ** (i / 3)) * numel) for i in range(4)]
    assert abs(sparsity_report(model).sparsity - 0.8) < 1e-2
    with pytest.raises(InvalidInputError, match="prune_iterations"):
        LotteryTicketPruner(_chain(), [{"sparsity": 0.8, "op_types": ["default"]}])


def test_simulated_annealing_hits_the_parameter_target_and_keeps_its_best(tmp_path: Path) -> None:
    """Oracle: every candidate removes at least the asked fraction of the parameters (the IR's count,
    checked on the masked model by counting zero entries of whole channels is not needed: ParamsModel
    equals the slim model's parameter count); the best recorded score is the one masked on the model."""
    import json

    from pruning_ir.compat.nni import SimulatedAnnealingPruner

    model = _chain(10)
    x, y = BATCHES[0]

    def evaluator(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(m(x), y))

    p = SimulatedAnnealingPruner(model, [{"sparsity": 0.4, "op_types": ["Conv2d", "Linear"]},
                                         {"exclude": True, "op_names": ["head"]}], evaluator,
                                 start_temperature=1.0, stop_temperature=0.3, cool_down_rate=0.7,
                                 experiment_data_dir=str(tmp_path), dummy_input=X, seed=1)
    p.compress()
    hist = json.loads((tmp_path / "search_history.json").read_text())["candidates"]
    assert len(hist) == 1 + 4  # the start and ceil(log(0.3) / log(0.7)) = 4 steps
    assert all(c["removed"] >= 0.4 - 1e-9 for c in hist)
    best = max(hist, key=lambda c: c["score"])
    assert evaluator(model) == pytest.approx(best["score"], abs=1e-6)
    slim = p.speedup()
    full = sum(t.numel() for t in _chain(0).parameters())
    assert sum(t.numel() for t in slim.parameters()) <= 0.6 * full + 1
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-5


NETADAPT_CONFIG = [{"sparsity": 0.3, "op_types": ["Conv2d", "Linear"]}, {"exclude": True, "op_names": ["head"]}]


def netadapt_fine_tune(m: nn.Module) -> None:
    """The NetAdapt tests' short-term fine-tune (also run by tests/dist_netadapt_worker.py)."""
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for bx, by in BATCHES:
        opt.zero_grad()
        nn.functional.cross_entropy(m(bx), by).backward()
        opt.step()


def netadapt_evaluator(m: nn.Module) -> float:
    with torch.no_grad():
        return -float(nn.functional.cross_entropy(m(BATCHES[1][0]), BATCHES[1][1]))


def test_netadapt_steps_down_to_the_target_with_fine_tuned_candidates() -> None:
    from pruning_ir.compat.nni import NetAdaptPruner

    model = _chain(11)
    tuned: list[int] = []

    def fine_tune(m: nn.Module) -> None:
        netadapt_fine_tune(m)
        tuned.append(1)

    p = NetAdaptPruner(model, NETADAPT_CONFIG, fine_tune, netadapt_evaluator, sparsity_per_iteration=0.1,
                       dummy_input=X)
    p.compress()
    goals = sorted(set(c["removed"] for c in p.history))
    # each iteration asks 0.1 more than the previous one reached (whole channels overshoot a goal), at most 0.3
    assert goals[0] == pytest.approx(0.1) and goals[-1] <= 0.3 + 1e-9 and len(goals) >= 2
    assert all(b - a >= 0.1 - 1e-9 or b == pytest.approx(0.3) for a, b in itertools.pairwise(goals))
    assert len(tuned) == len(p.history)  # every candidate was fine-tuned before evaluation
    slim = p.speedup()
    full = sum(t.numel() for t in _chain(0).parameters())
    assert sum(t.numel() for t in slim.parameters()) <= 0.7 * full + 1
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-5


def test_admm_pulls_the_pruned_channels_to_zero_then_prunes_by_l1() -> None:
    from pruning_ir.compat.nni import ADMMPruner

    model = _chain(12)
    calls: list[int] = []

    def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: object, epoch: int,
                callback: object) -> None:
        calls.append(epoch)
        for x, y in BATCHES:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            callback()  # type: ignore[operator]
            optimizer.step()

    before = model.c2.weight.detach().clone()
    p = ADMMPruner(model, [{"sparsity": 0.5, "op_names": ["c2"]}], trainer, num_iterations=3, epochs_per_iteration=2,
                   row=5.0, dummy_input=X, optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    p.compress()
    assert calls == [0, 1] * 3 and p.callbacks == 6 * len(BATCHES)
    gone = sorted(lab.index for lab in p.labels)
    assert len(gone) == 6
    w = model.c2.weight_orig.detach()
    kept = [i for i in range(12) if i not in gone]
    shrink = w[gone].abs().mean() / w[kept].abs().mean()
    assert shrink < before[gone].abs().mean() / before[kept].abs().mean()  # ADMM pulled the pruned filters down
    # oracle for the final masks: L1 ranking of the ADMM-trained, unmasked weights in an IR of their own
    import copy

    ref = PruningIR(copy.deepcopy(p._clean), example_inputs=(X,))
    L1NormCriterion(ref).score()
    g = next(g for g in ref.prunable_label_groups() if ("c2.weight", 0) in g.members)
    assert gone == sorted(torch.argsort(ref.snapshot().scores[g.gid], stable=True)[:6].tolist())
    slim = p.speedup()
    assert slim.c2.out_channels == 6 and p.max_abs_diff is not None and p.max_abs_diff < 1e-5


def test_autocompress_rounds_reach_the_overall_parameter_target_on_a_slim_model() -> None:
    from pruning_ir.compat.nni import AutoCompressPruner

    model = _chain(13)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def trainer(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: object, epoch: int,
                callback: object) -> None:
        for x, y in BATCHES:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            callback()  # type: ignore[operator]
            optimizer.step()

    def evaluator(m: nn.Module) -> float:
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(m(BATCHES[0][0]), BATCHES[0][1]))

    p = AutoCompressPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d", "Linear"]},
                                   {"exclude": True, "op_names": ["head"]}], trainer, evaluator, X,
                           num_iterations=2, start_temperature=1.0, stop_temperature=0.5, cool_down_rate=0.5,
                           admm_num_iterations=1, admm_training_epochs=1)
    slim = p.compress()
    full = sum(t.numel() for t in model.parameters())
    counts = [full] + [r["params"] for r in p.rounds_done]
    per_round = 1 - 0.5 ** 0.5
    assert len(p.rounds_done) == 2
    for a, b in itertools.pairwise(counts):  # each round removes at least its share of the then-current model
        assert b <= (1 - per_round) * a + 1
    assert all(r["max_abs_diff"] is not None and r["max_abs_diff"] < 1e-4 for r in p.rounds_done)
    assert sum(t.numel() for t in slim.parameters()) <= 0.5 * full + 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model untouched


class _Bert(nn.Module):
    """A tiny random HF BERT returning its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, attn_implementation="eager")
        self.bert = BertModel(cfg).eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).last_hidden_state


ALL_PRUNERS = ["LevelPruner", "L1FilterPruner", "L2FilterPruner", "FPGMPruner", "SlimPruner",
               "ActivationAPoZRankFilterPruner", "ActivationMeanRankFilterPruner", "TaylorFOWeightFilterPruner",
               "AGP_Pruner", "LotteryTicketPruner", "SimulatedAnnealingPruner", "NetAdaptPruner", "ADMMPruner",
               "AutoCompressPruner"]


def _digits_cnn() -> nn.Module:
    model = dc.make_model(0, widths=(8, 16, 32)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ALL_PRUNERS)
@pytest.mark.parametrize("kind", ["digits_cnn", "hf_bert"])
def test_every_pruner_runs_with_a_seed_config(kind: str, name: str) -> None:
    """The seed's config_list form on the digits residual CNN (op_types Conv2d; SlimPruner: BatchNorm2d)
    and a tiny HF BERT (op_types Linear; SlimPruner is BatchNorm-only, as in NNI, so not there); the
    slim model equals the masked one and is smaller (or, fine-grained, as sparse as asked)."""
    if kind == "hf_bert":
        if name == "SlimPruner":
            pytest.skip("SlimPruner ranks BatchNorm scales; BERT has none (NNI: the same)")
        pytest.importorskip("transformers")
        model: nn.Module = _Bert()
        x = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(1))
        types = ["Linear"]
    else:
        model = _digits_cnn()
        x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        types = ["BatchNorm2d"] if name == "SlimPruner" else ["Conv2d"]
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        target = model(x)
    config = [{"sparsity": 0.5, "op_types": types}]

    def loss_of(m: nn.Module) -> torch.Tensor:
        return (m(x) - target).square().mean() + 1e-3 * m(x).square().mean()

    def trainer(model: nn.Module, optimizer: object = None, criterion: object = None, epoch: int = 0,
                callback: object = None) -> None:
        opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else torch.optim.SGD(model.parameters(), 1e-3)
        opt.zero_grad()
        loss_of(model).backward()
        if callback is not None:
            callback()  # type: ignore[operator]
        opt.step()

    def evaluator(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((m(x) - target).square().mean())

    cls = getattr(nni, name)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    if name in ("ActivationAPoZRankFilterPruner", "ActivationMeanRankFilterPruner", "TaylorFOWeightFilterPruner"):
        p = cls(model, config, optimizer, trainer, None, dummy_input=x)
    elif name == "AGP_Pruner":
        p = cls(model, config, optimizer, trainer, num_iterations=2, pruning_algorithm="l1", dummy_input=x)
    elif name == "LotteryTicketPruner":
        p = cls(model, [{**config[0], "prune_iterations": 2}], optimizer)
    elif name == "SimulatedAnnealingPruner":
        p = cls(model, [{"sparsity": 0.3, "op_types": types}], evaluator, start_temperature=1.0,
                stop_temperature=0.5, cool_down_rate=0.5, dummy_input=x)
    elif name == "NetAdaptPruner":
        p = cls(model, [{"sparsity": 0.2, "op_types": types}], lambda m: trainer(m), evaluator,
                sparsity_per_iteration=0.1, dummy_input=x)
    elif name == "ADMMPruner":
        p = cls(model, config, trainer, num_iterations=2, epochs_per_iteration=1, dummy_input=x)
    elif name == "AutoCompressPruner":
        p = cls(model, [{"sparsity": 0.3, "op_types": types}], trainer, evaluator, x, num_iterations=1,
                start_temperature=1.0, stop_temperature=0.5, cool_down_rate=0.5, admm_num_iterations=1,
                admm_training_epochs=1)
        slim = p.compress()
        assert sum(t.numel() for t in slim.parameters()) <= 0.7 * sum(t.numel() for t in model.parameters()) + 1
        assert p.rounds_done[0]["max_abs_diff"] < 1e-4
        return
    else:
        p = cls(model, config, dummy_input=x)
    with warnings.catch_warnings():  # BERT's pooler output is not the model's: its warning is expected
        warnings.simplefilter("ignore")
        p.compress()
    if name == "LotteryTicketPruner":
        for _ in p.get_prune_iterations():
            p.prune_iteration_start()
            trainer(model, optimizer)
    slim = p.speedup()
    assert p.max_abs_diff is not None and p.max_abs_diff < 1e-4
    with torch.no_grad():
        assert torch.allclose(slim(x), model(x), atol=1e-4)
    if name in ("LevelPruner", "LotteryTicketPruner"):
        assert sparsity_report(slim).sparsity > 0.4
    else:
        assert sum(t.numel() for t in slim.parameters()) < sum(t.numel() for t in fresh.parameters())


def test_netadapt_over_two_gloo_ranks_equals_one_process(tmp_path: Path) -> None:
    """Oracle: the one-process run. Two ranks split each iteration's candidates, and both end with the
    same ratios, history and weights as one process."""
    from gloo import two_ranks_and_one

    two_ranks_and_one("dist_netadapt_worker.py", tmp_path)
    one = torch.load(tmp_path / "one.0.pt")
    for r in range(2):
        two = torch.load(tmp_path / f"two.{r}.pt")
        assert two["ratios"] == one["ratios"] and two["history"] == one["history"]
        assert all(torch.equal(two["state"][k], v) for k, v in one["state"].items())


def test_review_regressions_current_weights_transposed_convs_masked_models_and_unreachable_targets() -> None:
    """From a review: compress() ranks the model's current weights (not those at construction); a
    transposed convolution's output channels are its axis 1; a model already carrying masks is
    refused with the fix; an unreachable search target is an error; total_sparsity is refused where
    it would silently be per layer."""
    from pruning_ir.compat.nni import SimulatedAnnealingPruner

    model = _chain(14)
    p = L1FilterPruner(model, [{"sparsity": 0.5, "op_names": ["c2"]}], dummy_input=X)
    with torch.no_grad():
        model.c2.weight[6:] *= 1e-3  # after construction: these are now the smallest filters
    p.compress()
    assert sorted(lab.index for lab in p.labels) == list(range(6, 12))

    torch.manual_seed(0)
    tnet = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.ConvTranspose2d(8, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
    pt = L1FilterPruner(tnet, [{"sparsity": 0.5, "op_types": ["ConvTranspose2d"]}], dummy_input=X)
    pt.compress()
    slim = pt.speedup()
    assert slim[2].out_channels == 3 and slim[0].out_channels == 8 and pt.max_abs_diff < 1e-5

    with pytest.raises(InvalidInputError, match=r"already carries torch\.nn\.utils\.prune masks"):
        LevelPruner(model, [{"sparsity": 0.5, "op_types": ["default"]}])
    with pytest.raises(InvalidInputError, match=r"cannot remove 0\.9"):
        SimulatedAnnealingPruner(_chain(), [{"sparsity": 0.9, "op_names": ["c2"]}], lambda m: 0.0,
                                 dummy_input=X).compress()
    with pytest.raises(InvalidInputError, match="total_sparsity is not supported"):
        LevelPruner(_chain(), [{"total_sparsity": 0.5, "op_types": ["default"]}])


def test_n_m_runs_along_the_input_dim_of_an_hf_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    from pruning_ir.sparsity import n_m

    torch.manual_seed(0)
    layer = nn.Sequential(Conv1D(6, 8))  # weight [in=8, out=6]
    n_m(layer, 2, 4, modules=["0"])
    w = layer[0].weight.detach()
    assert bool(((w.T.reshape(-1, 4) == 0).sum(1) == 2).all())  # every 4 inputs of each output keep 2


def test_slim_pruner_sparsity_training_shrinks_the_scales_then_prunes_the_smallest() -> None:
    """Oracle: the same training without the penalty (scale 0) leaves larger BN scales; the channels
    pruned are the smallest |gamma| of the trained model."""
    def run(scale: float) -> tuple[SlimPruner, nn.Module]:
        model = _chain(15)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)

        def trainer(m: nn.Module, optimizer: torch.optim.Optimizer, criterion: Any, epoch: int) -> None:
            for x, y in BATCHES:
                optimizer.zero_grad()
                criterion(m(x), y).backward()
                optimizer.step()

        p = SlimPruner(model, [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], opt, trainer,
                       nn.functional.cross_entropy, sparsity_training_epochs=3, scale=scale, dummy_input=X)
        p.compress()
        return p, model

    p0, _ = run(0.0)
    p1, _ = run(0.5)
    assert float(p1._clean.b2.weight.abs().sum()) < float(p0._clean.b2.weight.abs().sum())
    g = p1._group_of("b2")
    assert g is not None
    gone = sorted(lab.index for lab in p1.labels if lab.group == g.gid)
    want = sorted(torch.argsort(p1._clean.b2.weight.detach().abs(), stable=True)[:6].tolist())
    assert gone == want
    with pytest.raises(InvalidInputError, match="sparsity training"):
        SlimPruner(_chain(), [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], trainer=lambda *a: None, dummy_input=X)
