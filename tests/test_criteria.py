"""Criteria and global selection, each against a hand-worked or independently computed answer."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from checks import roundtrip
from criteria_models import ConvBNNet, ResidualMLP, TwoLayer
from gloo import free_port

from pruning_ir import (
    APoZCriterion,
    BNScaleCriterion,
    CalibrationError,
    FPGMCriterion,
    GlobalScoreLabelSelector,
    InvalidInputError,
    L1NormCriterion,
    L2NormCriterion,
    LabelError,
    LossAwareCriterion,
    MeanActivationCriterion,
    PruningIR,
    RandomCriterion,
    TaylorFOWeightCriterion,
    UniformLabelSelector,
    verify_pruning,
)

HERE = Path(__file__).parent


def _group_by_size(ir: PruningIR, size: int) -> int:
    (gid,) = [g.gid for g in ir.prunable_label_groups() if g.size == size]
    return gid


def _order(ir: PruningIR, gid: int) -> list[int]:
    return torch.argsort(ir.snapshot().scores[gid], stable=True).tolist()


def _two_layer(rows: list[list[float]]) -> tuple[TwoLayer, PruningIR]:
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor(rows))
        model.fc1.bias.zero_()
        model.fc2.weight.fill_(1.0)
    return model, PruningIR(model, example_inputs=(torch.randn(2, 4),))


# ---------------------------------------------------------------------------- data-free criteria
def test_l1_l2_rank_by_weight_size() -> None:
    # rows of growing size; fc2 columns are all alike, so they do not change the order
    _, ir = _two_layer([[3, 3, 3, 3], [1, 1, 1, 1], [0, 0, 0, 4], [2, 2, 2, 2]])
    gid = _group_by_size(ir, 4)
    L1NormCriterion(ir).score()
    assert _order(ir, gid) == [1, 2, 3, 0]
    s = ir.snapshot().scores[gid]
    # by hand: members fc1.weight rows (mean |w| 3, 1, 1, 2) and fc2.weight columns (1 each), averaged
    assert torch.allclose(s, torch.tensor([2.0, 1.0, 1.0, 1.5], dtype=torch.float64))
    L2NormCriterion(ir).score()
    s2 = ir.snapshot().scores[gid]
    # sqrt(mean over members of mean w^2): row 2 has mean w^2 = 4 (one 4) > row 1's 1
    exp = torch.tensor([(9 + 1) / 2, (1 + 1) / 2, (4 + 1) / 2, (4 + 1) / 2], dtype=torch.float64).sqrt()
    assert torch.allclose(s2, exp)


def test_fpgm_prunes_the_label_nearest_the_geometric_median() -> None:
    _, ir = _two_layer([[4, 0, 0, 0], [0, 4, 0, 0], [-4, 0, 0, 0], [0.5, 0.5, 0, 0]])
    gid = _group_by_size(ir, 4)
    FPGMCriterion(ir).score()
    assert _order(ir, gid)[0] == 3


def test_bn_scale_ranks_by_gamma_and_falls_back_without_norm() -> None:
    model = ConvBNNet()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, 0.1, 2.0, -1.0]))
    ir = PruningIR(model.eval(), example_inputs=(torch.randn(1, 3, 5, 5),))
    crit = BNScaleCriterion(ir)
    crit.score()
    assert _order(ir, _group_by_size(ir, 4)) == [1, 0, 3, 2]
    assert torch.allclose(ir.snapshot().scores[_group_by_size(ir, 4)],
                          torch.tensor([0.5, 0.1, 2.0, 1.0], dtype=torch.float64))
    assert crit.fallback_groups == []
    _, ir2 = _two_layer([[3, 3, 3, 3], [1, 1, 1, 1], [0, 0, 0, 4], [2, 2, 2, 2]])
    crit2 = BNScaleCriterion(ir2)
    crit2.score()
    assert crit2.fallback_groups == [_group_by_size(ir2, 4)]
    assert torch.equal(ir2.snapshot().scores[crit2.fallback_groups[0]], L1NormCriterion(ir2).score()[
        crit2.fallback_groups[0]])


def test_random_is_reproducible_by_seed() -> None:
    _, ir = _two_layer([[1.0] * 4] * 4)
    a = RandomCriterion(ir, seed=3).score()
    b = RandomCriterion(ir, seed=3).score()
    c = RandomCriterion(ir, seed=4).score()
    gid = _group_by_size(ir, 4)
    assert torch.equal(a[gid], b[gid]) and not torch.equal(a[gid], c[gid])


# ---------------------------------------------------------------------------- activation criteria
def test_apoz_and_mean_activation_rank_by_how_often_a_unit_fires() -> None:
    model = TwoLayer()
    with torch.no_grad():
        model.fc1.weight.zero_()
        model.fc1.weight[:, 0] = 1.0  # every unit sees x0 ...
        model.fc1.bias.copy_(torch.tensor([0.0, -2.0, 2.0, -0.5]))  # ... shifted: unit 1 fires least
    ir = PruningIR(model, example_inputs=(torch.randn(2, 4),))
    gid = _group_by_size(ir, 4)
    x = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    with APoZCriterion(ir) as collect:
        for xb in x.split(1000):
            out = collect(xb)
            assert torch.equal(out, model(xb))  # the collector returns the model's output
    s = ir.snapshot().scores[gid]
    assert _order(ir, gid) == [1, 3, 0, 2]
    # by hand: fraction of non-zero relu(x0 + b) is P(x0 > -b) for x0 ~ N(0, 1)
    exp = (x[:, :1] + model.fc1.bias).gt(0).double().mean(0)
    assert torch.allclose(s, exp)
    with MeanActivationCriterion(ir) as collect:
        collect(x)
    assert torch.allclose(ir.snapshot().scores[gid], torch.relu(x[:, :1] + model.fc1.bias).double().mean(0),
                          atol=1e-6)


def test_activation_criteria_in_train_mode_with_batchnorm() -> None:
    model = ConvBNNet().eval()
    ir = PruningIR(model, example_inputs=(torch.randn(1, 3, 5, 5),))
    model.train()  # train-mode BN records other ops than the traced eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with APoZCriterion(ir) as collect:
        collect(torch.randn(4, 3, 5, 5))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats untouched
    assert ir.snapshot().scores[_group_by_size(ir, 4)].shape == (4,)


# ---------------------------------------------------------------------------- gradient criteria
def _batches(n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, generator=gen), torch.randint(0, 5, (8,), generator=gen)) for _ in range(n)]


def _reference_scores(model: ResidualMLP, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-label sums of grad*weight written out member by member for ResidualMLP."""
    stream, hidden = [], []
    taylor_s, taylor_h = torch.zeros(6, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        gw = {n: (p.grad * p).double() for n, p in model.named_parameters()}
        stream.append(gw["stem.weight"].sum(1) + gw["stem.bias"] + gw["fc1.weight"].sum(0)
                      + gw["fc2.weight"].sum(1) + gw["fc2.bias"] + gw["head.weight"].sum(0))
        hidden.append(gw["fc1.weight"].sum(1) + gw["fc1.bias"] + gw["fc2.weight"].sum(0))
        sq = {n: v.square() for n, v in gw.items()}
        taylor_s += (sq["stem.weight"].sum(1) + sq["stem.bias"] + sq["fc1.weight"].sum(0)
                     + sq["fc2.weight"].sum(1) + sq["fc2.bias"] + sq["head.weight"].sum(0))
        taylor_h += sq["fc1.weight"].sum(1) + sq["fc1.bias"] + sq["fc2.weight"].sum(0)
    model.zero_grad()
    n = len(batches)
    return {"la_stream": 0.5 * torch.stack(stream).square().mean(0),
            "la_hidden": 0.5 * torch.stack(hidden).square().mean(0),
            "ty_stream": taylor_s / n, "ty_hidden": taylor_h / n}


def test_loss_aware_sums_every_coupled_member_before_squaring() -> None:
    torch.manual_seed(0)
    model = ResidualMLP()
    data = _batches()
    ref = _reference_scores(model, data)
    ir = PruningIR(model, example_inputs=(data[0][0],))
    for crit, key in ((functools.partial(LossAwareCriterion, members="all"), "la"), (TaylorFOWeightCriterion, "ty")):
        with crit(ir) as collect:
            for x, y in data:
                F.cross_entropy(collect(x), y).backward()
        scores = ir.snapshot().scores
        assert torch.allclose(scores[_group_by_size(ir, 6)], ref[f"{key}_stream"], rtol=1e-5, atol=1e-12)
        assert torch.allclose(scores[_group_by_size(ir, 10)], ref[f"{key}_hidden"], rtol=1e-5, atol=1e-12)


def test_loss_aware_readers_is_the_taylor_of_each_channel_where_it_is_read() -> None:
    """Oracle: per batch, sum over the layers that read a channel of (their input channel) x
    (the loss gradient that flows back through that layer alone), from module backward hooks;
    squared and averaged over batches. The default ``members="readers"`` uses the reading
    weights' grad*weight only, which is that quantity exactly (for linear readers)."""
    torch.manual_seed(0)
    model = ResidualMLP()
    data = _batches()
    seen: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in ("fc1", "fc2", "head"):
        mod = getattr(model, name)
        handles.append(mod.register_forward_hook(lambda _m, a, _o, n=name: inputs.__setitem__(n, a[0].detach())))
        handles.append(mod.register_full_backward_hook(
            lambda _m, gin, _gout, n=name: seen.__setitem__(n, gin[0].detach())))
    stream, hidden = [], []
    for x, y in data:
        F.cross_entropy(model(x), y).backward()
        t = {n: (inputs[n] * seen[n]).double().sum(0) for n in seen}
        stream.append(t["fc1"] + t["head"])
        hidden.append(t["fc2"])
    for h in handles:
        h.remove()
    model.zero_grad(set_to_none=True)
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x), y).backward()
    scores = ir.snapshot().scores
    assert torch.allclose(scores[_group_by_size(ir, 6)], 0.5 * torch.stack(stream).square().mean(0), rtol=1e-5)
    assert torch.allclose(scores[_group_by_size(ir, 10)], 0.5 * torch.stack(hidden).square().mean(0), rtol=1e-5)
    with pytest.raises(InvalidInputError, match="members"):
        LossAwareCriterion(ir, members="producers")


def test_loss_aware_gives_zero_to_a_label_that_cannot_change_the_loss() -> None:
    model = ResidualMLP()
    with torch.no_grad():  # hidden unit 3 reads nothing and writes nothing; the others fire
        model.fc1.bias.fill_(1.0)
        model.fc1.weight[3].zero_()
        model.fc1.bias[3] = 0.0
        model.fc2.weight[:, 3].zero_()
    data = _batches()
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x), y).backward()
    hidden = ir.snapshot().scores[_group_by_size(ir, 10)]
    assert hidden[3] == 0 and bool((hidden[torch.arange(10) != 3] > 0).all())
    assert GlobalScoreLabelSelector(1).select(ir)[0].index == 3


def test_loss_aware_predicts_the_loss_change_of_removing_a_label() -> None:
    """Oracle: the true loss change of masking each hidden label of a trained model. The
    estimate's ranking must agree clearly better than chance (benchmarks/criteria_accuracy.py
    measures the same agreement over a whole CNN)."""
    torch.manual_seed(0)
    model = ResidualMLP()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(512, 12, generator=gen)
    y = (x[:, :5] * torch.arange(1, 6)).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    ir = PruningIR(model, example_inputs=(x[:2],))
    with LossAwareCriterion(ir) as collect:
        for xb, yb in zip(x.split(1), y.split(1), strict=True):  # per-sample Fisher
            F.cross_entropy(collect(xb), yb).backward()
    gid = _group_by_size(ir, 10)
    from pruning_ir import masked_model

    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        true = torch.tensor([float(F.cross_entropy(masked_model(ir, [ir.labels(gid)[i]])(x), y)) - base
                             for i in range(10)])
    est = ir.snapshot().scores[gid]
    rank_est = torch.argsort(torch.argsort(est)).double()
    rank_true = torch.argsort(torch.argsort(true)).double()
    spearman = float(torch.corrcoef(torch.stack([rank_est, rank_true]))[0, 1])
    assert spearman > 0.5, (spearman, est, true)


def test_user_grads_and_frozen_params_are_left_as_the_user_made_them() -> None:
    torch.manual_seed(0)
    model = ResidualMLP()
    model.stem.weight.requires_grad_(False)
    data = _batches(2)
    ref = ResidualMLP()
    ref.load_state_dict(model.state_dict())
    ref.stem.weight.requires_grad_(False)
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert p.requires_grad == q.requires_grad, name
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name
    # the frozen stem still got scores: the stream group's score includes its gradient
    assert ir.snapshot().scores[_group_by_size(ir, 6)].sum() > 0


def test_hooks_removed_and_nothing_stored_after_an_exception() -> None:
    model = ResidualMLP()
    model.stem.bias.requires_grad_(False)
    ir = PruningIR(model, example_inputs=(torch.randn(2, 12),))
    for crit in (LossAwareCriterion, APoZCriterion):
        with pytest.raises(RuntimeError, match="user error"), crit(ir) as collect:
            out = collect(torch.randn(4, 12))
            if crit is LossAwareCriterion:
                out.sum().backward()
            raise RuntimeError("user error")
        assert ir.snapshot().scores == {}
        assert all(not p._backward_hooks for p in model.parameters())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert not model.stem.bias.requires_grad
        with pytest.raises(CalibrationError, match="inside its with-block"):
            collect(torch.randn(4, 12))


def test_mixed_precision_autocast_gives_finite_scores() -> None:
    model = ResidualMLP()
    data = _batches(2)
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = collect(x)
            F.cross_entropy(out.float(), y).backward()
    assert all(bool(torch.isfinite(s).all()) and s.sum() > 0 for s in ir.snapshot().scores.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loss_aware_on_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = ResidualMLP()
    data = _batches(2)
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x), y).backward()
    cpu = dict(ir.snapshot().scores)
    model.cuda().zero_grad()
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x.cuda()), y.cuda()).backward()
    assert all(torch.allclose(cpu[g], s, rtol=1e-3) for g, s in ir.snapshot().scores.items())


# ---------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("which", ["loss_aware", "apoz"])
def test_two_gloo_processes_equal_one_process_over_the_union(tmp_path: Path, which: str) -> None:
    worker = str(HERE / "dist_calibration_worker.py")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / f"r{r}.pt"), str(r), "2", port, which],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    subprocess.run([sys.executable, worker, str(tmp_path / "single.pt"), "0", "1", port, which], check=True,
                   timeout=300)
    single = torch.load(tmp_path / "single.pt")
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    assert single.keys() == r0.keys() == r1.keys()
    for gid in single:
        assert torch.equal(r0[gid], r1[gid])  # every rank holds the same scores
        assert torch.allclose(r0[gid], single[gid], rtol=1e-9, atol=0)


# ---------------------------------------------------------------------------- global selection
def _scored(scores: dict[int, list[float]]) -> PruningIR:
    model = ResidualMLP()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 12),))
    ir.snapshot().scores = {gid: torch.tensor(v, dtype=torch.float64) for gid, v in scores.items()}
    return ir


def test_global_selector_takes_the_lowest_scores_across_groups() -> None:
    ir = _scored({})
    s, h = _group_by_size(ir, 6), _group_by_size(ir, 10)
    ir.snapshot().scores = {s: torch.tensor([5, 0.1, 7, 0.3, 9, 8], dtype=torch.float64),
                            h: torch.tensor([1, 2, 0.2, 4, 0.05, 6, 7, 8, 9, 10], dtype=torch.float64)}
    picked = [(lab.group, lab.index) for lab in GlobalScoreLabelSelector(4).select(ir)]
    assert picked == [(h, 4), (s, 1), (h, 2), (s, 3)]  # ascending score, across groups
    assert len(GlobalScoreLabelSelector(0.25).select(ir)) == 4  # floor(0.25 * 16)
    assert GlobalScoreLabelSelector(0).select(ir) == []


def test_global_selector_floor_never_empties_a_group() -> None:
    ir = _scored({})
    s, h = _group_by_size(ir, 6), _group_by_size(ir, 10)
    ir.snapshot().scores = {s: torch.zeros(6, dtype=torch.float64), h: torch.ones(10, dtype=torch.float64)}
    labels = GlobalScoreLabelSelector(100).select(ir)  # asks for more than can go
    per_group = {g: sum(lab.group == g for lab in labels) for g in (s, h)}
    assert per_group == {s: 5, h: 9}
    ir.prune(labels=labels)  # a legal selection
    labels = GlobalScoreLabelSelector(0.9, min_kept_ratio=0.5).select(ir)
    assert {g: sum(lab.group == g for lab in labels) for g in (s, h)} == {s: 3, h: 5}


def test_uniform_selector_uses_criterion_scores() -> None:
    ir = _scored({})
    s = _group_by_size(ir, 6)
    ir.snapshot().scores[s] = torch.tensor([6, 5, 4, 3, 2, 1], dtype=torch.float64)
    picked = sorted(lab.index for lab in UniformLabelSelector(0.5).select(ir) if lab.group == s)
    assert picked == [3, 4, 5]


def test_calibrated_ir_round_trips_with_identical_selection() -> None:
    model = ResidualMLP()
    data = _batches()
    ir = PruningIR(model, example_inputs=(data[0][0],))
    with LossAwareCriterion(ir) as collect:
        for x, y in data:
            F.cross_entropy(collect(x), y).backward()
    back = roundtrip(ir)
    assert back.snapshot().score_source.startswith("LossAwareCriterion")
    a = [(lab.group, lab.index) for lab in GlobalScoreLabelSelector(0.4).select(ir)]
    b = [(lab.group, lab.index) for lab in GlobalScoreLabelSelector(0.4).select(back)]
    assert a == b
    assert verify_pruning(back, GlobalScoreLabelSelector(0.4).select(back)).exact


def test_criteria_on_hf_bert_score_heads_and_ffn() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(0, 50, (4, 10))
    ir = PruningIR(model, example_inputs=(), example_kwargs={"input_ids": ids})
    with LossAwareCriterion(ir) as collect:
        for _ in range(2):
            collect(input_ids=ids, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    scores = ir.snapshot().scores
    assert set(scores) == {g.gid for g in ir.prunable_label_groups()}
    structured = [g for g in ir.prunable_label_groups() if g.structured]
    assert structured and all(scores[g.gid].shape == (g.size,) for g in structured)
    labels = GlobalScoreLabelSelector(0.3).select(ir)
    slim = ir.prune(labels=labels).model
    assert slim(input_ids=ids).logits.shape == (4, 2)
    with MeanActivationCriterion(ir) as collect:
        collect(input_ids=ids)
    assert set(ir.snapshot().scores) == set(scores)


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_named_errors() -> None:
    model = ResidualMLP()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 12),))
    with pytest.raises(InvalidInputError, match="needs a PruningIR"):
        LossAwareCriterion(model)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no snapshot named"):
        LossAwareCriterion(ir, "other")
    with pytest.raises(CalibrationError, match="no backward pass"), LossAwareCriterion(ir) as collect:
        collect(torch.randn(2, 12))  # forward only
    with pytest.raises(CalibrationError, match="no calibration data"), APoZCriterion(ir):
        pass
    with pytest.raises(CalibrationError, match="scores from calibration data"):
        LossAwareCriterion(ir).score()
    for bad in (-0.1, 1.5, float("nan"), True, "0.3"):
        with pytest.raises(InvalidInputError, match="GlobalScoreLabelSelector"):
            GlobalScoreLabelSelector(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="min_kept"):
        GlobalScoreLabelSelector(0.3, min_kept=0)


def test_stale_ir_and_stale_labels_are_refused() -> None:
    model = ResidualMLP()
    x = torch.randn(2, 12)
    ir = PruningIR(model, example_inputs=(x,))
    labels = GlobalScoreLabelSelector(0.3).select(ir)
    pruned = ir.prune(labels=labels, inplace=True)  # the original IR's model is now the slim one
    with pytest.raises(CalibrationError, match="no longer matches its model"), LossAwareCriterion(ir):
        pass
    with pytest.raises(CalibrationError, match="no longer matches its model"):
        L1NormCriterion(ir).score()
    with LossAwareCriterion(pruned) as collect:  # the pruned IR calibrates fine ...
        F.cross_entropy(collect(torch.randn(4, 12)), torch.tensor([0, 1, 2, 3])).backward()
    with pytest.raises(LabelError, match="another IR or snapshot"):  # ... but old labels are refused
        pruned.prune(labels=labels)


def test_a_vanished_gradient_warns_that_scores_carry_no_information() -> None:
    model = TwoLayer()
    teacher = TwoLayer()
    teacher.load_state_dict(model.state_dict())
    x = torch.randn(32, 4)
    ir = PruningIR(model, example_inputs=(x[:2],))
    with pytest.warns(RuntimeWarning, match="every label scored 0"), LossAwareCriterion(ir) as collect:
        for xb in x.split(8):
            F.mse_loss(collect(xb), teacher(xb).detach()).backward()  # student == teacher: zero gradient


def test_lazy_ir_traces_on_the_first_calibration_batch() -> None:
    """ENOT's flow: ``PruningIR(model)`` without inputs, the first ``score_collector(sample)``
    traces; the scores equal those of an IR built with that batch as its example inputs."""
    torch.manual_seed(0)
    model = ConvBNNet().eval()
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))) for _ in range(3)]

    def calibrate(ir: PruningIR) -> dict[int, torch.Tensor]:
        with LossAwareCriterion(ir) as score_collector:
            for x, y in batches:
                F.cross_entropy(score_collector(x), y).backward()
        return ir.label_scores()

    lazy = PruningIR(model)
    lazy_scores = calibrate(lazy)
    eager_scores = calibrate(PruningIR(model, example_inputs=(batches[0][0],)))
    assert lazy.is_traced() and lazy_scores.keys() == eager_scores.keys() and lazy_scores
    for gid, s in eager_scores.items():
        assert torch.allclose(lazy_scores[gid], s, rtol=1e-6, atol=0)
    slim = lazy.prune(labels=UniformLabelSelector(0.5).select(lazy)).model
    assert slim(batches[0][0]).shape == (4, 2)


def test_lazy_ir_with_no_batch_collected_says_so() -> None:
    ir = PruningIR(ConvBNNet())
    with pytest.raises(CalibrationError, match="collected no batch"), LossAwareCriterion(ir):
        pass
    with pytest.raises(InvalidInputError, match="not traced"):
        L1NormCriterion(ir).score()


def test_selecting_from_scores_of_old_weights_warns_once() -> None:
    """An AGP-style loop that fine-tunes and selects again without recalibrating gets a warning
    (never silent reuse of stale scores); recalibrating, or scores carried over by prune, do not."""
    import warnings

    model = ConvBNNet()
    ir = PruningIR(model, example_inputs=(torch.randn(2, 3, 8, 8),))
    L1NormCriterion(ir).score()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UniformLabelSelector(0.5).select(ir)  # fresh scores: silent
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)  # what an optimizer step does: in place
    with pytest.warns(UserWarning, match="changed .* since L1NormCriterion"):
        UniformLabelSelector(0.5).select(ir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UniformLabelSelector(0.5).select(ir)  # once per change
        L1NormCriterion(ir).score()
        pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir))
        UniformLabelSelector(0.25).select(pruned)  # carried-over scores match the slim weights
    with torch.no_grad():
        pruned.model.conv2.weight.add_(1.0)
    with pytest.warns(UserWarning, match="changed"):
        UniformLabelSelector(0.25).select(pruned)
