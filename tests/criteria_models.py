"""Small models whose criterion scores can be worked out by hand (tests/test_criteria.py)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """Coupling case: a residual stream. ``stem`` (12 -> 6) writes the stream, the block
    ``fc2(relu(fc1(h)))`` (6 -> 10 -> 6) reads and writes it, ``head`` (6 -> 5) reads it.
    Groups: the stream (6 labels; members stem.weight[0], stem.bias[0], fc1.weight[1],
    fc2.weight[0], fc2.bias[0], head.weight[1]) and the hidden layer (10 labels; fc1.weight[0],
    fc1.bias[0], fc2.weight[1])."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(12, 6)
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


class ConvBNNet(nn.Module):
    """conv(3 -> 4) -> BN -> ReLU -> conv(4 -> 2): one group of 4 labels with a BN scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x)))).mean((2, 3))


class TwoLayer(nn.Module):
    """Linear(4 -> 4) -> ReLU -> Linear(4 -> 2): one hidden group of 4 labels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))
