"""Forward-only criteria (Wanda-sp, FLAP) and recovery without fine-tuning, against hand-computed answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning_ir import FLAPCriterion, InvalidInputError, Label, PruningIR, WandaCriterion, masked_model
from pruning_ir.recovery import compensate_bias, recalibrate_bn, reconstruct_least_squares


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _setup(seed: int = 0) -> tuple[MLP, list[torch.Tensor], PruningIR]:
    torch.manual_seed(seed)
    model = MLP()
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randn(16, 4, generator=gen) for _ in range(3)]
    return model, batches, PruningIR(model, example_inputs=(batches[0][:2],))


def _hidden(model: MLP, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.relu(model.fc1(x)) for x in batches]).double()


def test_wanda_is_weight_magnitude_times_input_norm_of_the_reader() -> None:
    model, batches, ir = _setup()
    with WandaCriterion(ir) as collect:
        for x in batches:
            collect(x)
    h = _hidden(model, batches)
    expected = model.fc2.weight.detach().double().abs().sum(0) * h.square().sum(0).sqrt()
    (g,) = ir.prunable_label_groups()
    assert torch.allclose(ir.snapshot().scores[g.gid], expected, rtol=1e-5, atol=1e-7)
    assert not model.fc1.weight.requires_grad or model.fc1.weight.grad is None  # forward only


def test_flap_is_input_variance_times_squared_column_norm() -> None:
    model, batches, ir = _setup(1)
    with FLAPCriterion(ir, standardize=False) as collect:
        for x in batches:
            collect(x)
    h = _hidden(model, batches)
    expected = model.fc2.weight.detach().double().square().sum(0) * h.var(0, unbiased=False)
    (g,) = ir.prunable_label_groups()
    assert torch.allclose(ir.snapshot().scores[g.gid], expected, rtol=1e-5, atol=1e-7)
    with FLAPCriterion(ir) as collect:
        for x in batches:
            collect(x)
    z = ir.snapshot().scores[g.gid]
    assert torch.allclose(z, (expected - expected.mean()) / expected.std(), rtol=1e-5, atol=1e-7)


def test_bias_compensation_keeps_the_mean_output() -> None:
    """Oracle: fc2 is linear, so folding W[:, removed] @ E[h_removed] into its bias makes the slim
    model's mean output over the calibration data equal the original's (the masked model's does not)."""
    model, batches, ir = _setup(2)
    with FLAPCriterion(ir) as crit:
        for x in batches:
            crit(x)
    labels = [Label(ir.snapshot().owner, ir.prunable_label_groups()[0].gid, i) for i in (0, 2, 3)]
    slim = ir.prune(labels=labels).model
    assert compensate_bias(ir, slim, labels, crit) == ["fc2"]
    x = torch.cat(batches)
    with torch.no_grad():
        orig, comp, masked = model(x).mean(0), slim(x).mean(0), masked_model(ir, labels)(x).mean(0)
    assert torch.allclose(comp, orig, atol=1e-5)
    assert not torch.allclose(masked, orig, atol=1e-3)


def test_least_squares_rebuilds_an_exactly_redundant_channel() -> None:
    """Oracle: hidden units 4 and 5 are copies of units 0 and 1, so removing them loses nothing that
    the kept units cannot carry: the reconstruction must give the original outputs back."""
    model, batches, ir = _setup(3)
    with torch.no_grad():
        model.fc1.weight[4:6] = model.fc1.weight[0:2]
        model.fc1.bias[4:6] = model.fc1.bias[0:2]
    with WandaCriterion(ir, gram=True) as crit:
        for x in batches:
            crit(x)
    labels = [Label(ir.snapshot().owner, ir.prunable_label_groups()[0].gid, i) for i in (4, 5)]
    slim = ir.prune(labels=labels).model
    assert reconstruct_least_squares(ir, slim, labels, crit, ridge=1e-10) == ["fc2"]
    x = torch.cat(batches)
    with torch.no_grad():
        assert torch.allclose(slim(x), model(x), atol=1e-4)
    with pytest.raises(InvalidInputError, match="gram=True"):
        with WandaCriterion(ir) as plain:
            for x in batches:
                plain(x)
        reconstruct_least_squares(ir, ir.prune(labels=labels).model, labels, plain)


def test_recalibrate_bn_is_the_plain_average_of_batch_statistics() -> None:
    bn = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5)).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, generator=gen) * (i + 1) + i for i in range(4)]
    assert recalibrate_bn(bn, batches) == 4
    assert torch.allclose(bn[0].running_mean, torch.stack([b.mean(0) for b in batches]).mean(0), atol=1e-6)
    assert torch.allclose(bn[0].running_var, torch.stack([b.var(0) for b in batches]).mean(0), atol=1e-5)
    assert not bn.training and bn[0].momentum == 0.1
    with pytest.raises(InvalidInputError, match="no batch"):
        recalibrate_bn(bn, [])
