"""Quickstart: prune a small residual CNN with pruning_ir, no downloads.

Run:  python examples/quickstart.py

1. trace the model into a PruningIR (coupled channels share labels);
2. select half of every prunable group's labels (uniform, by weight magnitude);
3. prune: a physically smaller model of the same classes;
4. check slim == original with the removed labels masked to zero;
5. compare parameters, MACs and CPU latency; save and reload the IR with dill.
"""

from __future__ import annotations

import io
import time

import dill
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pruning_ir import PruningIR, UniformLabelSelector, verify_pruning


class Block(nn.Module):
    """Residual block; with ``stride=2`` it has a 1x1 downsample shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layers = nn.Sequential(Block(32, 32), Block(32, 64, 2), Block(64, 64), Block(64, 128, 2), Block(128, 128))
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def latencies_ms(models: list[nn.Module], x: torch.Tensor, repeats: int = 30) -> list[float]:
    """Median latency of each model; runs are interleaved so machine noise hits all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            m(x)
        for _ in range(repeats):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - t0)
    return [1000 * sorted(t)[len(t) // 2] for t in times]


def main() -> None:
    torch.manual_seed(0)
    model = SmallResNet().eval()
    x = torch.randn(8, 3, 32, 32)

    ir = PruningIR(model, example_inputs=(x,))
    print(repr(ir))
    labels = UniformLabelSelector(0.5).select(ir)
    pruned = ir.prune(labels=labels)
    slim = pruned.model
    report = verify_pruning(ir, labels)
    print(f"slim == masked original: exact={report.exact} (max |diff| {report.max_abs_diff:.2e})")

    lat = latencies_ms([model, slim], x)
    rows = [("params", sum(p.numel() for p in model.parameters()), sum(p.numel() for p in slim.parameters())),
            ("MACs", macs(model, x), macs(slim, x)),
            ("CPU latency ms (batch 8, median)", lat[0], lat[1])]
    print(f"{'':34s} {'original':>12s} {'pruned':>12s} {'ratio':>7s}")
    for name, a, b in rows:
        print(f"{name:34s} {a:12.4g} {b:12.4g} {b / a:7.3f}")
    print(f"{type(slim).__name__} kept its classes: layers[1].conv1 = {slim.layers[1].conv1}")

    buf = io.BytesIO()
    torch.save(pruned, buf, pickle_module=dill)
    buf.seek(0)
    loaded = torch.load(buf, pickle_module=dill, weights_only=False)  # trusted files only
    with torch.no_grad():
        same = torch.equal(loaded.model(x), slim(x))
    print(f"saved IR: {buf.getbuffer().nbytes / 1e6:.2f} MB, reloaded model identical: {same}")


if __name__ == "__main__":
    main()
