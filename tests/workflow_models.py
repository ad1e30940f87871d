"""Models and an evaluation function shared by tests/test_workflows.py and its distributed worker."""

from __future__ import annotations

import torch
from torch import nn


class TwoBranch(nn.Module):
    """conv stem -> two parallel conv branches (their own channels: two label groups) -> sum of
    their pooled outputs through one linear each. Branch ``b`` is scaled by 0.01 in forward, so
    pruning it changes the output little: a known answer for where the analysis should prune."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.head_a = nn.Linear(width, 4)
        self.head_b = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        a = torch.relu(self.a(h)).mean((2, 3))
        b = torch.relu(self.b(h)).mean((2, 3))
        return self.head_a(a) + 0.01 * self.head_b(b)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return TwoBranch().eval()


def data() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


class Fidelity:
    """eval_fn: minus the mean squared difference to the original model's outputs (higher = better);
    counts its calls."""

    def __init__(self, reference: nn.Module, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.want = reference(x)
        self.calls = 0

    def __call__(self, model: nn.Module, x: torch.Tensor) -> float:
        self.calls += 1
        with torch.no_grad():
            return -float((model(x) - self.want).pow(2).mean())


class BNNet(nn.Module):
    """conv-BN-ReLU x3 (three label groups), pooled, linear: BatchNorm statistics for adaptive BN."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c3, self.b3 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)))
        h = torch.relu(self.b3(self.c3(h)))
        return self.fc(h.mean((2, 3)))


def make_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(8, 3, 8, 8))
    return model.eval()


def calibration_fn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Adaptive BN as in the Vitis guide: forward passes in training mode, no gradient."""
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


def calib_batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(3)]
