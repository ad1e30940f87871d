"""Joint loss curves (``joint_loss_scores``) and score-per-cost global ranking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from criteria_models import ConvBNNet, ResidualMLP
from torch import nn

from pruning_ir import (
    GlobalScoreLabelSelector,
    InvalidInputError,
    L1NormCriterion,
    Label,
    MacsModel,
    PruningIR,
    joint_loss_scores,
    masked_model,
)
from pruning_ir.criteria.joint import convex_marginals


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen)
    return x, (x[:, :5] * torch.arange(1, 6)).argmax(1)


def test_joint_curves_are_the_losses_of_masking_the_lowest_ranked_labels_together() -> None:
    """Oracle: every measured point equals the loss of ``masked_model`` with the group's ``n``
    lowest-scored labels removed together; the new scores keep each group's order, and their
    running sum reaches the largest measured loss increase at the last measured count."""
    torch.manual_seed(0)
    model = ResidualMLP()
    x, y = _data()
    ir = PruningIR(model, example_inputs=(x[:2],))
    L1NormCriterion(ir).score()
    before = {g: s.clone() for g, s in ir.snapshot().scores.items()}

    def loss(m: nn.Module) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(m(x), y))

    base = loss(model)
    curves = joint_loss_scores(ir, loss, fractions=(0.25, 0.5, 0.75))
    assert curves.baseline == pytest.approx(base, rel=1e-6)
    after = ir.snapshot().scores
    for g in ir.prunable_label_groups():
        order = torch.argsort(before[g.gid], stable=True)
        assert curves.order[g.gid] == order.tolist()
        assert torch.equal(torch.argsort(after[g.gid], stable=True), order)
        for n, got in curves.curves[g.gid].items():
            labels = [Label(ir.snapshot().owner, g.gid, int(i)) for i in order[:n]]
            assert got == pytest.approx(max(loss(masked_model(ir, labels)) - base, 0.0), rel=1e-6, abs=1e-9)
        last = max(curves.curves[g.gid])
        ranked = after[g.gid][order]
        assert float(ranked[:last].sum()) == pytest.approx(max(curves.curves[g.gid].values()), rel=1e-6, abs=1e-9)
        assert bool((ranked[1:] >= ranked[:-1]).all())  # convex: each further label costs at least as much
    assert "joint loss curves" in ir.snapshot().score_source
    assert model.fc1.weight.abs().sum() > 0  # the user's model is untouched


def test_convex_marginals_hand_set() -> None:
    # lower hull of (0,0) (2,1) (4,1) (6,5) by hand: (0,0) -> (4,1) -> (6,5), slope 0.25 then 2 (continued past 6)
    marg = convex_marginals(8, {2: 1.0, 4: 1.0, 6: 5.0})
    assert marg.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25, 2.0, 2.0, 2.0, 2.0])


def test_joint_loss_scores_refuses_bad_input() -> None:
    model = ResidualMLP()
    x, _ = _data(8)
    ir = PruningIR(model, example_inputs=(x[:2],))
    with pytest.raises(InvalidInputError, match="fractions"):
        joint_loss_scores(ir, lambda m: 0.0, fractions=(0.5, 1.0))
    with pytest.raises(InvalidInputError, match="g999"):
        joint_loss_scores(ir, lambda m: 0.0, groups=[999])
    from pruning_ir import CalibrationError

    with pytest.raises(CalibrationError, match="must return a number"):
        joint_loss_scores(ir, lambda m: "low")


class ThreeLayer(nn.Module):
    """4 -> 8 -> 8 -> 2 on 1 token: a label of the first hidden layer costs 4 + 8 = 12 MACs,
    one of the second 8 + 2 = 10 (by hand)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_global_cost_ranking_takes_the_cheapest_loss_per_mac() -> None:
    ir = PruningIR(ThreeLayer(), example_inputs=(torch.randn(1, 4),))
    g1, g2 = sorted(ir.prunable_label_groups(), key=lambda g: next(n for n, _ in g.members if n.startswith("fc")))
    assert g1.members[0][0].startswith("fc1") and g2.members[0][0].startswith("fc2")
    macs = MacsModel(ir)
    assert macs.baseline() - macs.cost(ir.labels(g1)[:1]) == 12
    assert macs.baseline() - macs.cost(ir.labels(g2)[:1]) == 10
    snap = ir.snapshot()
    snap.scores = {g1.gid: torch.full((8,), 1.1, dtype=torch.float64) + torch.arange(8) * 1e-3,
                   g2.gid: torch.full((8,), 1.0, dtype=torch.float64) + torch.arange(8) * 1e-3}
    by_score = GlobalScoreLabelSelector(3).select(ir)
    assert {lab.group for lab in by_score} == {g2.gid}  # 1.0 < 1.1
    per_mac = GlobalScoreLabelSelector(3, cost="macs").select(ir)
    assert [(lab.group, lab.index) for lab in per_mac] == [(g1.gid, 0), (g1.gid, 1), (g1.gid, 2)]  # 1.1/12 < 1.0/10
    assert GlobalScoreLabelSelector(3, cost=MacsModel).select(ir) == per_mac
    with pytest.raises(InvalidInputError, match="cost="):
        GlobalScoreLabelSelector(3, cost="latency")  # type: ignore[arg-type]


def test_global_cost_ranking_prunes_and_verifies_on_a_conv_bn_net() -> None:
    torch.manual_seed(1)
    model = ConvBNNet().eval()
    x = torch.randn(4, 3, 6, 6)
    ir = PruningIR(model, example_inputs=(x,))
    labels = GlobalScoreLabelSelector(0.5, cost="params").select(ir)
    assert len(labels) == 2
    res = ir.prune(labels=labels)
    assert res.model(x).shape == model(x).shape


def test_fisher_loss_gradient_has_the_tempered_fisher_as_second_moment() -> None:
    """Oracle (hand-derived): with classes sampled from softmax(z / T), the gradient of the summed
    cross-entropy with respect to z has mean 0 and second moment (diag(p) - p p^T) / T^2, p = softmax(z / T)."""
    from pruning_ir import fisher_loss

    n, t = 40000, 2.0
    base = torch.tensor([2.0, 0.5, -1.0])
    z = base.repeat(n, 1).requires_grad_(True)
    fisher_loss(z, temperature=t, generator=torch.Generator().manual_seed(0)).backward()
    g = z.grad.double()
    p = torch.softmax(base.double() / t, 0)
    assert torch.allclose(g.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.01)
    assert torch.allclose(g.T @ g / n, (torch.diag(p) - torch.outer(p, p)) / t**2, atol=0.01)
    with pytest.raises(InvalidInputError, match="temperature"):
        fisher_loss(z, temperature=0.0)
    with pytest.raises(InvalidInputError, match="classes on the last dim"):
        fisher_loss(torch.zeros(4, 1))


def test_output_energy_loss_gradient_is_a_standard_normal_projection() -> None:
    from pruning_ir import output_energy_loss

    out = torch.zeros(20000, 3, requires_grad=True)
    output_energy_loss(out, generator=torch.Generator().manual_seed(1)).backward()
    g = out.grad.double()
    assert torch.allclose(g.mean(0), torch.zeros(3, dtype=torch.float64), atol=0.03)
    assert torch.allclose(g.T @ g / len(g), torch.eye(3, dtype=torch.float64), atol=0.05)
    with pytest.raises(InvalidInputError, match="cannot find a tensor"):
        output_energy_loss({"a": 1})
