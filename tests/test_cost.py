"""Cost models against oracles: ``MacsModel`` equals ``FlopCounterMode`` (FLOPs / 2) measured on
the slim model that ``prune`` builds, ``ParamsModel`` equals the slim model's unique parameter
count, and every marginal / per-label cost equals the brute-force difference of two queries.

``FlopCounterMode`` (torch 2.13) has no formula for a few contractions that ``MacsModel``
counts (the CPU SDPA kernel, ``addbmm``, ``mv``, ``dot``, ``_grouped_mm``): the oracle adds
them through its ``custom_mapping`` with the textbook counts, so every comparison is exact.
"""

from __future__ import annotations

import functools
import random
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hf_zoo import HF_CASES, hf_available
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch_zoo import llama_7b_meta, resnet50
from toy_zoo import TOY_CASES
from zoo_types import ZooCase

from pruning_ir import Label, LabelError, PruningIR, UniformLabelSelector
from pruning_ir.cost import CostModel, MacsModel, NodeCostModel, ParamsModel
from pruning_ir.errors import InvalidInputError

aten = torch.ops.aten


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ oracles
def _sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _addbmm(bias: Any, a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * a[0] * a[1] * a[2] * b[2]


def _mv(a: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * a[0] * a[1]


def _dot(a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * a[0]


def _grouped_mm(a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    assert len(a) == 2 and len(b) == 3
    return 2 * a[0] * a[1] * b[2]


_MISSING = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa, aten.addbmm: _addbmm, aten.mv: _mv,
            aten.dot: _dot, aten._grouped_mm: _grouped_mm}
"""What FlopCounterMode lacks on CPU, in its own conventions (2 FLOPs per MAC)."""


def flop_macs(model: nn.Module, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_MISSING) as counter:
        model(*args, **(kwargs or {}))
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once


def random_subset(ir: PruningIR, rng: random.Random, keep: int = 1) -> list[Label]:
    """Random labels of every prunable group, each group keeping at least ``keep`` (and a
    multiple of its ``step``)."""
    out: list[Label] = []
    for g in ir.prunable_label_groups():
        if g.step == 1:
            n = rng.randint(0, g.size - keep)
        else:
            n = rng.choice([n for n in range(g.size - keep + 1) if (g.size - n) % g.step == 0])
        out += rng.sample(ir.labels(g), n)
    return out


def check_against_oracles(ir: PruningIR, args: Sequence[Any], kwargs: dict[str, Any] | None,
                          selections: list[list[Label]]) -> None:
    macs, params = MacsModel(ir), ParamsModel(ir)
    assert macs.uncounted == []
    assert macs.baseline() == macs.macs() == flop_macs(ir.model, args, kwargs) > 0
    assert params.baseline() == params.params([]) == n_params(ir.model)
    for labels in selections:
        if not labels:
            continue
        slim = ir.prune(labels=labels).model
        assert macs.macs(labels) == flop_macs(slim, args, kwargs), f"{len(labels)} labels"
        assert params.params(labels) == n_params(slim), f"{len(labels)} labels"


def selections_for(ir: PruningIR, seed: str, keep: int = 1) -> list[list[Label]]:
    rng = random.Random(seed)
    return [UniformLabelSelector(0.4).select(ir), random_subset(ir, rng, keep), random_subset(ir, rng, keep)]


# ------------------------------------------------------------------------------------------ models
class GramNet(nn.Module):
    """``h[:, :5] @ h[:, :5].T``: the contraction uses five of the thirteen hidden units, so labels
    of one group cost different amounts (the only layout here that keeps a partial range)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 13)
        self.fc2 = nn.Linear(13, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        a = h[:, :5]
        g = torch.softmax(a @ a.t(), -1)
        return self.fc2(g @ h)


class OpsNet(nn.Module):
    """Contractions that no nn layer of the zoos reaches: baddbmm, addbmm, mv, dot, grouped mm,
    a grouped transposed conv, a 3-d conv and a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(3, 6, 10) * 0.3)
        self.b1 = nn.Parameter(torch.randn(10) * 0.1)
        self.w2 = nn.Parameter(torch.randn(3, 10, 8) * 0.3)
        self.w3 = nn.Parameter(torch.randn(4, 8) * 0.3)
        self.experts = nn.Parameter(torch.randn(2, 8, 12) * 0.3)
        self.head = nn.Parameter(torch.randn(12) * 0.3)
        self.convt = nn.ConvTranspose2d(4, 6, 3, groups=2)
        self.conv3 = nn.Conv3d(6, 5, (1, 2, 2))
        self.dw = nn.Conv2d(5, 5, 3, groups=5, padding=1)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.baddbmm(self.b1, x, self.w1))
        y = torch.relu(torch.addbmm(self.w3.sum(0), h, self.w2))
        z = torch.mv(self.w3, y[0])
        e = torch._grouped_mm(y, self.experts, offs=torch.tensor([2, 5], dtype=torch.int32))
        s = torch.mv(e, self.head)
        d = torch.dot(self.head, e[0])
        u = self.convt(img)
        u = self.conv3(u.unsqueeze(2).expand(-1, -1, 2, -1, -1))
        u = self.dw(u.mean(2))
        return z.sum() + s.sum() + d + u.sum()


def mlp3() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return model, (torch.randn(2, 4),)


@functools.cache
def _hf_ir(name: str) -> tuple[PruningIR, ZooCase]:
    """Built once per session: the tests only read the IR (``prune`` returns a new one)."""
    case = HF_CASES[name]()
    return PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs), case


def _toy_ir(name: str) -> tuple[PruningIR, tuple[torch.Tensor, ...]]:
    model, x = TOY_CASES[name]()
    return PruningIR(model, example_inputs=x), x


# ------------------------------------------------------------------------------------- equality tests
@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_toy_zoo_matches_flop_counter_and_parameter_count(name: str) -> None:
    ir, x = _toy_ir(name)
    check_against_oracles(ir, x, None, selections_for(ir, name))


@pytest.mark.skipif(not hf_available(), reason="transformers is not installed")
@pytest.mark.parametrize("name", ["bert", "llama", "llama_sdpa"])
def test_hf_models_match_flop_counter_and_parameter_count(name: str) -> None:
    ir, case = _hf_ir(name)
    check_against_oracles(ir, case.example_inputs, case.example_kwargs, selections_for(ir, name))


def test_direct_contractions_and_convolutions_match() -> None:
    torch.manual_seed(0)
    model = OpsNet().eval()
    x = (torch.randn(3, 5, 6), torch.randn(2, 4, 5, 7))
    ir = PruningIR(model, example_inputs=x)
    macs = MacsModel(ir)
    for op in ("aten.baddbmm", "aten.addbmm", "aten.mv", "aten.dot", "aten._grouped_mm", "aten.convolution"):
        assert op in macs.counted
    assert len(ir.prunable_label_groups()) >= 3  # baddbmm/addbmm width, conv groups, conv3d/depthwise
    check_against_oracles(ir, x, None, selections_for(ir, "ops"))


class GQASDPANet(nn.Module):
    """``scaled_dot_product_attention(..., enable_gqa=True)``: 6 query heads over 2 kv heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(20, 6 * 4), nn.Linear(20, 2 * 4)
        self.v, self.o = nn.Linear(20, 2 * 5), nn.Linear(6 * 5, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 6, 4).transpose(1, 2)
        k = self.k(x).view(b, t, 2, 4).transpose(1, 2)
        v = self.v(x).view(b, t, 2, 5).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, 30))


def test_sdpa_with_enable_gqa() -> None:
    torch.manual_seed(0)
    x = (torch.randn(2, 7, 20),)
    ir = PruningIR(GQASDPANet().eval(), example_inputs=x)
    assert ir.prunable_label_groups()
    check_against_oracles(ir, x, None, selections_for(ir, "gqa-sdpa"))


def test_partially_used_group() -> None:
    torch.manual_seed(0)
    ir = PruningIR(GramNet().eval(), example_inputs=(torch.randn(7, 6),))
    (g,) = ir.prunable_label_groups()
    macs = MacsModel(ir)
    labs = ir.labels(g)
    # a label in the first five also leaves the 7x7 gram contraction
    cost = macs.label_costs()[g.gid]
    assert cost.tolist() == [7 * (6 + 7 + 7 + 4)] * 5 + [7 * (6 + 7 + 4)] * 8
    check_against_oracles(ir, (torch.randn(7, 6),), None,
                          [labs[:3], labs[4:9], labs[::2], random_subset(ir, random.Random(1))])
    with pytest.raises(ValueError, match="depends on which labels"):
        macs.cost_for_counts({g.gid: 6})


# --------------------------------------------------------------------------- marginal and label costs
def check_label_costs(ir: PruningIR, model_cls: type[MacsModel] | type[ParamsModel], removed: list[Label]) -> None:
    cm = model_cls(ir)
    base = cm.cost(removed)
    costs = cm.label_costs(removed)
    marginal = cm.marginal_costs(removed)
    gone = {(lab.group, lab.index) for lab in removed}
    assert set(costs) == set(marginal) == {g.gid for g in ir.prunable_label_groups()}
    for g in ir.prunable_label_groups():
        kept = [lab for lab in ir.labels(g) if (g.gid, lab.index) not in gone]
        brute = []
        for lab in kept:
            if len(kept) > 1:
                saved = base - cm.cost([*removed, lab])
            else:  # prune refuses to empty a group; the mask query still costs it
                mask = torch.zeros(g.size, dtype=torch.bool)
                mask[[x.index for x in removed if x.group == g.gid] + [lab.index]] = True
                others = ir.check_labels([x for x in removed if x.group != g.gid])
                masks = {h.gid: others[h.leaf] for h in ir.prunable_label_groups() if h.leaf in others}
                saved = base - cm.cost_from_removed({**masks, g.gid: mask})
            assert costs[g.gid][lab.index] == saved, (g.gid, lab.index)
            brute.append(saved)
        for lab in ir.labels(g):
            if (g.gid, lab.index) in gone:
                assert costs[g.gid][lab.index] == 0
        assert marginal[g.gid] == pytest.approx(statistics.fmean(brute), rel=1e-12)


@pytest.mark.parametrize("name", ["residual", "concat", "inception", "split_chunk", "channel_shuffle",
                                  "grouped_conv", "depthwise", "mha_sdpa", "gqa", "flatten_linear",
                                  "embedding_tied", "conv_transpose"])
@pytest.mark.parametrize("cls", [MacsModel, ParamsModel])
def test_label_costs_equal_brute_force(name: str, cls: type[MacsModel] | type[ParamsModel]) -> None:
    ir, _ = _toy_ir(name)
    for removed in ([], UniformLabelSelector(0.5).select(ir), random_subset(ir, random.Random(name))):
        check_label_costs(ir, cls, removed)


def test_label_costs_on_a_sliced_group_and_bert() -> None:
    torch.manual_seed(0)
    ir = PruningIR(GramNet().eval(), example_inputs=(torch.randn(7, 6),))
    for removed in ([], ir.labels(ir.prunable_label_groups()[0])[3:10]):
        check_label_costs(ir, MacsModel, removed)
    if hf_available():
        ir, _ = _hf_ir("bert")
        check_label_costs(ir, MacsModel, UniformLabelSelector(0.3).select(ir))


def test_marginal_cost_depends_on_the_neighbours() -> None:
    model, x = mlp3()
    ir = PruningIR(model, example_inputs=x)
    g1, g2 = ir.prunable_label_groups()
    assert (g1.size, g2.size) == (16, 8)
    macs = MacsModel(ir)
    assert macs.baseline() == 2 * (4 * 16 + 16 * 8 + 8 * 3)
    assert macs.marginal_costs() == {g1.gid: 2 * (4 + 8), g2.gid: 2 * (16 + 3)}
    two = ir.labels(g2)[:2]
    # with two of the 8 second-layer units gone, a first-layer unit feeds 6 instead of 8
    assert macs.marginal_costs(two) == {g1.gid: 2 * (4 + 6), g2.gid: 2 * (16 + 3)}
    params = ParamsModel(ir)
    assert params.marginal_costs(two) == {g1.gid: 4 + 1 + 6, g2.gid: 16 + 1 + 3}
    # and the flop counter agrees on the real slim models
    one = ir.labels(g1)[5]
    real = flop_macs(ir.prune(labels=two).model, x) - flop_macs(ir.prune(labels=[*two, one]).model, x)
    assert real == macs.marginal_costs(two)[g1.gid]


def test_counts_fast_path() -> None:
    ir, _ = _toy_ir("residual_downsample")
    for cls in (MacsModel, ParamsModel):
        cm = cls(ir)
        rng = random.Random(3)
        for _ in range(5):
            keep = {g.gid: rng.randint(1, g.size) for g in ir.prunable_label_groups()}
            labels = [lab for g in ir.prunable_label_groups() for lab in ir.labels(g)[keep[g.gid]:]]
            assert cm.cost_for_counts(keep) == cm.cost(labels)
        with pytest.raises(InvalidInputError):
            cm.cost_for_counts({10_000: 1})


def test_pruned_ir_agrees_with_its_parent() -> None:
    ir, _ = _toy_ir("mha_sdpa")
    labels = random_subset(ir, random.Random(5))
    pruned = ir.prune(labels=labels)
    assert MacsModel(pruned).baseline() == MacsModel(ir).macs(labels)
    assert ParamsModel(pruned).baseline() == ParamsModel(ir).params(labels)


def test_breakdown_sums_to_the_total() -> None:
    ir, _ = _toy_ir("inception")
    macs = MacsModel(ir)
    labels = UniformLabelSelector(0.4).select(ir)
    parts = macs.breakdown(labels)
    assert sum(parts.values()) == macs.macs(labels)
    assert all("aten.convolution" in k for k in parts)
    params = ParamsModel(ir)
    assert sum(params.breakdown(labels).values()) == params.params(labels)


@pytest.mark.parametrize("name", ["inception", "mha_sdpa", "gqa", "split_chunk", "embedding_tied"])
@pytest.mark.parametrize("cls", [MacsModel, ParamsModel, NodeCostModel])
def test_per_tag_queries_split_the_total_and_the_label_costs(name: str, cls: type[CostModel]) -> None:
    """tag_costs sums to cost and matches breakdown; tag_savings summed over tags is label_costs,
    and each (label, tag) delta is the difference of two per-tag queries."""
    ir, _ = _toy_ir(name)
    cm = cls(ir)
    rng = random.Random(name)
    for removed in ([], UniformLabelSelector(0.5).select(ir), random_subset(ir, rng)):
        per = cm.tag_costs(removed)
        assert per.dtype == np.int64 and int(per.sum()) == cm.cost(removed)
        assert dict(zip(cm.tags, per.tolist(), strict=True)) == cm.breakdown(removed)
        masks = {g.gid: np.zeros(g.size, dtype=bool) for g in ir.prunable_label_groups()}
        for lab in removed:
            masks[lab.group][lab.index] = True
        assert np.array_equal(cm.tag_costs_from_removed(masks), per)
        ts = cm.tag_savings(removed)
        assert np.array_equal(ts.costs, per)
        total = np.zeros(ts.n_pieces, dtype=np.int64)
        np.add.at(total, ts.piece, ts.delta)
        want = cm.label_costs(removed)
        got = ts.per_label(total)
        assert all(np.array_equal(got[g], want[g]) for g in want)
        assert all(np.array_equal(ts.kept[g], ~masks[g]) for g in masks)
        for g in ir.prunable_label_groups():
            i = next((int(i) for i in np.flatnonzero(~masks[g.gid])), None)
            if i is None or int((~masks[g.gid]).sum()) < 2:
                continue
            expect = np.zeros_like(per)
            sel = ts.piece == ts.pieces[g.gid][i]
            np.add.at(expect, ts.tag[sel], ts.delta[sel])
            assert np.array_equal(per - cm.tag_costs([*removed, ir.labels(g)[i]]), expect), (g.gid, i)


def test_node_cost_model_counts_each_mac_node_and_the_other_elements() -> None:
    ir, _ = _toy_ir("inception")
    terms, macs = NodeCostModel(ir), MacsModel(ir)
    assert terms.tags[0] == "<elements written by the other ops>" and terms.tags[1:] == macs.tags
    assert len(terms.nodes) == len(macs.tags) and terms.n_other == len(ir.graph.nodes) - len(terms.nodes)
    assert terms.tag_costs()[1:].tolist() == macs.tag_costs().tolist()
    labels = UniformLabelSelector(0.5).select(ir)
    assert terms.tag_costs(labels)[1:].tolist() == macs.tag_costs(labels).tolist()
    assert 0 < terms.tag_costs(labels)[0] < terms.tag_costs()[0]


# ------------------------------------------------------------------------------------------ coverage
def test_leaf_modules_are_reported_not_counted() -> None:
    model, x = TOY_CASES["chain"]()
    ir = PruningIR(model, example_inputs=x, leaf_modules=[nn.Conv2d])
    macs = MacsModel(ir)
    assert macs.uncounted and all("leaf module torch.nn.modules.conv.Conv2d" in u for u in macs.uncounted)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*x)
    outside = {op: f for op, f in counter.get_flop_counts()["Global"].items() if op is not aten.convolution}
    assert macs.baseline() == sum(outside.values()) // 2 > 0


def test_unused_and_tied_parameters() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.fc = nn.Linear(6, 9)
            self.out = nn.Linear(9, 6, bias=False)
            self.unused = nn.Linear(3, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.fc(self.emb(ids)))
            return self.out(h) @ self.emb.weight.t()

    torch.manual_seed(0)
    model = Tied().eval()
    ids = torch.randint(0, 11, (2, 5))
    ir = PruningIR(model, example_inputs=(ids,))
    params = ParamsModel(ir)
    assert params.baseline() == n_params(model) == 11 * 6 + 6 * 9 + 9 + 9 * 6 + 3 * 2 + 2
    check_against_oracles(ir, (ids,), None, selections_for(ir, "tied"))


def test_label_errors_are_those_of_check_labels() -> None:
    ir, _ = _toy_ir("residual")
    other, _ = _toy_ir("residual")
    macs = MacsModel(ir)
    g = ir.prunable_label_groups()[0]
    with pytest.raises(LabelError, match="another IR"):
        macs.macs(other.labels(other.prunable_label_groups()[0])[:1])
    with pytest.raises(LabelError, match="every channel"):
        macs.macs(ir.labels(g))
    unprunable = next(h for h in ir.label_groups() if not h.prunable)
    with pytest.raises(LabelError, match="not prunable"):
        macs.macs(ir.labels(unprunable)[:1])
    with pytest.raises(LabelError, match="expected pruning_ir Labels"):
        macs.macs([tuple(ir.labels(g)[0])])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="bool mask"):
        macs.cost_from_removed({g.gid: torch.zeros(g.size + 1, dtype=torch.bool)})
    # a mask query may empty a group (no validation): the bound a selector can plan with
    assert macs.cost_from_removed({g.gid: torch.ones(g.size, dtype=torch.bool)}) < macs.baseline()


# ------------------------------------------------------------------------------------------ scale
def test_resnet50_exact_without_running_the_model() -> None:
    case = resnet50()
    ir = PruningIR(case.model, example_inputs=case.example_inputs)
    macs, params = MacsModel(ir), ParamsModel(ir)
    assert macs.baseline() == 4_089_184_256 == flop_macs(case.model, case.example_inputs)
    assert params.baseline() == 25_557_032
    labels = UniformLabelSelector(0.3).select(ir)
    slim = ir.prune(labels=labels, verify=False).model
    expected_macs, expected_params = flop_macs(slim, case.example_inputs), n_params(slim)

    def refuse(*_: Any) -> None:
        raise AssertionError("a cost query ran the model")

    handle = case.model.register_forward_pre_hook(refuse)
    try:  # queries never trace nor run the model (speed is measured in the report, not here)
        assert macs.macs(labels) == expected_macs
        assert params.params(labels) == expected_params
        rng = random.Random(0)
        for sel in [random_subset(ir, rng) for _ in range(3)]:
            marginal = macs.marginal_costs(sel)
            assert set(marginal) == {g.gid for g in ir.prunable_label_groups()}
            chosen = set(sel)
            for g in sorted(marginal, key=lambda gid: -marginal[gid])[:5]:
                kept = [lab for lab in ir.labels(g) if lab not in chosen]
                if len(kept) > 1:
                    assert macs.macs(sel) - macs.macs([*sel, kept[-1]]) == marginal[g]
    finally:
        handle.remove()


@pytest.mark.skipif(not hf_available(), reason="transformers is not installed")
def test_llama_7b_on_meta() -> None:
    """Real sizes (6.7 B parameters, 16 tokens) without memory: shapes are all the oracle needs."""
    case = llama_7b_meta()
    ir = PruningIR(case.model, example_inputs=case.example_inputs, example_kwargs=case.example_kwargs)
    macs, params = MacsModel(ir), ParamsModel(ir)
    assert macs.baseline() == flop_macs(case.model, case.example_inputs, case.example_kwargs)
    assert params.baseline() == n_params(case.model) == 6_738_415_616
    labels = UniformLabelSelector(0.3).select(ir)
    slim = ir.prune(labels=labels).model
    assert macs.macs(labels) == flop_macs(slim, case.example_inputs, case.example_kwargs)
    assert params.params(labels) == n_params(slim)
