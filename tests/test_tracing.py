"""Tracing options: leaf modules, soft tracing, train mode, keyword inputs."""

from __future__ import annotations

import torch
from checks import check_battery, state_hash
from torch import nn

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


class Mlp(nn.Module):
    """fc1 (5 -> 12) -> ReLU -> fc2 (12 -> 7): one prunable group of 12."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.fc2 = nn.Linear(12, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Opaque(nn.Module):
    """A module with its own parameters, kept opaque as a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class WithOpaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.mid = Opaque()
        self.fc2 = nn.Linear(12, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.mid(self.fc1(x)))


def test_leaf_module_without_handler_is_unprunable_and_reported() -> None:
    model = WithOpaque().eval()
    x = (torch.randn(3, 5),)
    assert [g.size for g in PruningIR(model, example_inputs=x).prunable_label_groups()] == [12, 12]
    ir = PruningIR(model, example_inputs=x, leaf_modules=[Opaque])
    assert ir.prunable_label_groups() == []
    assert "leaf module without a handler" in ir.report()
    ir_instance = PruningIR(model, example_inputs=x, leaf_modules=[model.mid])
    assert ir_instance.prunable_label_groups() == []


def test_linear_leaf_has_a_handler() -> None:
    """nn.Linear kept opaque still couples its in/out features: same groups as traced."""
    model = Mlp().eval()
    x = (torch.randn(3, 5),)
    ir = PruningIR(model, example_inputs=x, leaf_modules=[nn.Linear])
    assert [g.size for g in ir.prunable_label_groups()] == [12]
    labels = UniformLabelSelector(0.5).select(ir)
    assert verify_pruning(ir, labels).exact


def test_train_mode_tracing_does_not_touch_running_stats() -> None:
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3)).train()
    before = state_hash(model)
    PruningIR(model, example_inputs=(torch.randn(2, 3, 8, 9),))
    assert state_hash(model) == before


def test_keyword_inputs() -> None:
    class Kw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = Mlp()

        def forward(self, *, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return self.mlp(x) * scale

    model = Kw().eval()
    ir = PruningIR(model, example_inputs={"x": torch.randn(3, 5)}, example_kwargs={"scale": 2.0})
    assert [g.size for g in ir.prunable_label_groups()] == [12]
    check_battery(model, (), {"x": torch.randn(3, 5), "scale": 2.0})
