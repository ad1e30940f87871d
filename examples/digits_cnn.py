"""A small residual CNN on scikit-learn's bundled ``digits`` (8x8 grey images, 10 classes).

Reusable pieces for the quickstart and the criteria benchmark; nothing here is part of
``pruning_ir`` and nothing is downloaded (``sklearn.datasets.load_digits`` ships with
scikit-learn):

* :func:`load_digits_split`: a fixed, seeded, stratified train/test split as tensors;
* :class:`DigitsResNet` / :func:`make_model`: residual blocks with BatchNorm and 1x1
  downsample shortcuts, so the residual adds couple channels across blocks;
* :func:`train`, :func:`evaluate`, :func:`recalibrate_bn` (BN recalibration);
* :func:`macs`, :func:`latency_ms`;
* :func:`select_for_macs`: bisect a selector's ratio to hit a MACs budget.

Every random choice takes a seed and goes through ``torch.manual_seed`` or a seeded
``torch.Generator``, so a run is repeatable on the same machine and thread count.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from pruning_ir import Label, LabelSelector, PruningIR


# --------------------------------------------------------------------------- data
@dataclass
class Split:
    """Train and test tensors: images ``(N, 1, 8, 8)`` float32 (standardised), labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __repr__(self) -> str:
        return f"Split(train={len(self.y_train)}, test={len(self.y_test)}, image={tuple(self.x_train.shape[1:])})"


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's ``digits``, split once (stratified, ``seed``) into train and test.

    Pixels (0..16) are standardised with the training set's mean and standard deviation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=y.numpy())
    tr, te = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    mean, std = x[tr].mean(), x[tr].std()
    return Split((x[tr] - mean) / std, y[tr], (x[te] - mean) / std, y[te])


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` mini-batches; with ``shuffle`` the order comes from a generator seeded with ``seed``."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        j = order[i:i + batch_size]
        yield x[j], y[j]


# --------------------------------------------------------------------------- model
class Block(nn.Module):
    """Residual block; when the shape changes it has a 1x1 conv + BN downsample shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class DigitsResNet(nn.Module):
    """ResNet-style CNN for ``(N, 1, 8, 8)`` images: 8x8 -> 4x4 -> 2x2, global mean pool, linear head.

    With the default ``widths=(32, 64, 128)``: stem 32, blocks 32, 32->64 (stride 2), 64,
    64->128 (stride 2), 128. The residual adds tie each stage's channels into one label group.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128), classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        w = list(widths)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        blocks: list[nn.Module] = [Block(w[0], w[0])]
        for cin, cout in itertools.pairwise(w):
            blocks += [Block(cin, cout, 2), Block(cout, cout)]
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(w[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


def make_model(seed: int = 0, widths: Sequence[int] = (32, 64, 128), classes: int = 10) -> DigitsResNet:
    """A freshly initialised :class:`DigitsResNet` (initialisation seeded with ``seed``)."""
    torch.manual_seed(seed)
    return DigitsResNet(widths, classes)


# --------------------------------------------------------------------------- training
def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, *, batch_size: int = 64,
          lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
          desc: str = "train") -> list[float]:
    """Train with AdamW and a one-cycle learning-rate schedule; returns each epoch's mean loss.

    The model is left in eval mode. Batch order is seeded per epoch (``seed + epoch``).
    """
    torch.manual_seed(seed)
    steps_per_epoch = -(-len(y) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    losses: list[float] = []
    model.train()
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        total, n = 0.0, 0
        for xb, yb in batches(x, y, batch_size, shuffle=True, seed=seed + epoch):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(yb)
            n += len(yb)
        losses.append(total / max(n, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    model.zero_grad(set_to_none=True)
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in ``[0, 1]`` (the model is put in eval mode)."""
    model.eval()
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += int((model(xb).argmax(1) == yb).sum())
    return correct / max(len(y), 1)


def recalibrate_bn(model: nn.Module, loader_batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                   progress: bool = False) -> int:
    """BN recalibration (:func:`pruning_ir.recovery.recalibrate_bn`): every BatchNorm's running
    statistics reset and re-estimated as a plain average over ``loader_batches``, only the norms in
    train mode. A batch is an input tensor or a sequence whose first item is the input. Returns the
    number of batches seen; the model is left in eval mode."""
    from pruning_ir.recovery import recalibrate_bn as recalibrate

    bar = tqdm(loader_batches, desc="BN recalibration", unit="batch", disable=not progress, leave=False)
    n = recalibrate(model, bar)
    model.eval()
    return n


# --------------------------------------------------------------------------- cost
def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``x`` (``FlopCounterMode`` flops / 2), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def latency_ms(models: Sequence[nn.Module], x: torch.Tensor, repeats: int = 30, warmup: int = 3) -> list[float]:
    """Median forward latency of each model in ms; runs are interleaved so machine noise hits all alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for _ in range(warmup):
            for m in models:
                m(x)
        for _ in range(repeats):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - t0)
    return [1000 * sorted(t)[len(t) // 2] for t in times]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- selection at a MACs budget
@dataclass
class MacsSelection:
    """What :func:`select_for_macs` found: the labels, the selector ratio, and the MACs they give."""

    labels: list[Label]
    ratio: float
    macs: int
    base_macs: int

    @property
    def fraction(self) -> float:
        return self.macs / self.base_macs


def select_for_macs(ir: PruningIR, selector_factory: Callable[[float], LabelSelector], target_macs_fraction: float,
                    x: torch.Tensor, *, iters: int = 24, snapshot: str = "main") -> MacsSelection:
    """Bisect ``selector_factory(ratio)``'s ratio so the slim model's MACs are as close as possible
    to, and not above, ``target_macs_fraction`` of ``ir.model``'s MACs on ``x``.

    Assumes removed labels grow with the ratio (true of selectors that remove the lowest
    scores first), so MACs shrink monotonically. Each probe is ``ir.prune(..., verify=False)``
    plus a MACs count (cached per label set). Ratios are probed in ``(0, 1)``; raises
    ``ValueError`` when even the largest probed ratio stays above the budget.
    """
    if not 0.0 < target_macs_fraction < 1.0:
        raise ValueError(f"target_macs_fraction must be in (0, 1), got {target_macs_fraction}")
    base = macs(ir.model, x)
    budget = target_macs_fraction * base
    cache: dict[tuple[tuple[int, int], ...], int] = {}

    def evaluate_ratio(ratio: float) -> tuple[list[Label], int]:
        labels = selector_factory(ratio).select(ir, snapshot)
        key = tuple(sorted((lab.group, lab.index) for lab in labels))
        if key not in cache:
            cache[key] = macs(ir.prune(snapshot, labels=labels, verify=False).model, x) if labels else base
        return labels, cache[key]

    best: MacsSelection | None = None
    lo, hi = 0.0, 1.0  # invariant: ratio lo is over the budget (ratio 0 removes nothing); hi is not, or is 1
    for _ in range(iters):
        mid = (lo + hi) / 2
        labels, m = evaluate_ratio(mid)
        if m <= budget:
            hi = mid
            if best is None or m >= best.macs:  # as close to the budget, with a smaller ratio
                best = MacsSelection(labels, mid, m, base)
        else:
            lo = mid
    if best is None:
        raise ValueError(f"{selector_factory(lo)!r} still leaves {m / base:.3f} of the MACs "
                         f"(> {target_macs_fraction}): this selector cannot meet the budget")
    return best
