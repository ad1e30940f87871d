"""A zoo of tiny pure-PyTorch models, each isolating ONE channel-coupling case.

Every model is a test case for a dependency-aware structured pruner that must
discover, with no configuration, which channels are coupled.  The class
docstring of each model names the coupling case and states the correct
coupling ("labels" below means: channels that must be kept or removed
together, at matching indices).

Conventions that make bugs fail loudly:

* Channel counts are distinct within a model (no reuse where avoidable, no
  squares), and spatial sizes are non-square and differ from the channel
  counts, so a transposed or mixed-up dim produces a shape error rather than a
  silently wrong result.
* Norm layers get random running stats and random affine parameters, and
  layer-scale / token / position parameters are random, so slicing the wrong
  indices changes the output.
* Every model is tiny (well under 50k parameters, forward well under 50 ms).

``TOY_CASES`` maps a case name to a factory returning ``(model, example_inputs)``
where the model is built right after ``torch.manual_seed(0)``, is in eval mode,
and ``example_inputs`` is a tuple of tensors with batch size 2.

Run ``python tests/toy_zoo.py`` for a quick self-check.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TOY_CASES", "ToyCase", "ToyFactory"]

ToyCase = tuple[nn.Module, tuple[Tensor, ...]]
ToyFactory = Callable[[], ToyCase]

TOY_CASES: dict[str, ToyFactory] = {}

BATCH = 2


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


class HandRMSNorm(nn.Module):
    """Hand-written RMSNorm over the last dim: ``x * rsqrt(mean(x^2)) * weight``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    HandRMSNorm,
)


@torch.no_grad()
def _randomize_norms(model: nn.Module) -> None:
    """Give every norm layer non-trivial running stats and affine params."""
    for m in model.modules():
        if not isinstance(m, _NORM_TYPES):
            continue
        running_mean = getattr(m, "running_mean", None)
        running_var = getattr(m, "running_var", None)
        if isinstance(running_mean, Tensor):
            running_mean.normal_(0.0, 0.5)
        if isinstance(running_var, Tensor):
            running_var.uniform_(0.5, 2.0)
        weight = getattr(m, "weight", None)
        bias = getattr(m, "bias", None)
        if isinstance(weight, Tensor):
            weight.uniform_(0.5, 1.5)
        if isinstance(bias, Tensor):
            bias.normal_(0.0, 0.5)


def _register(name: str) -> Callable[[ToyFactory], ToyFactory]:
    def deco(fn: ToyFactory) -> ToyFactory:
        if name in TOY_CASES:
            raise KeyError(f"duplicate toy case {name!r}")
        TOY_CASES[name] = fn
        return fn

    return deco


def _build(
    ctor: Callable[[], nn.Module],
    make_inputs: Callable[[], tuple[Tensor, ...]],
) -> ToyCase:
    """Seed, build, randomize norms, eval; then make the inputs (also seeded)."""
    torch.manual_seed(0)
    model = ctor()
    _randomize_norms(model)
    model.eval()
    return model, make_inputs()


def _randn(*shapes: tuple[int, ...]) -> Callable[[], tuple[Tensor, ...]]:
    def make() -> tuple[Tensor, ...]:
        return tuple(torch.randn(BATCH, *s) for s in shapes)

    return make


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


# --------------------------------------------------------------------------- #
# CNN cases
# --------------------------------------------------------------------------- #


class ChainNet(nn.Module):
    """Case: plain chain conv-bn-relu-conv-bn-relu-pool-flatten-linear.

    Coupling: conv1 out-channels, bn1 and conv2 in-channels share labels (6);
    conv2 out-channels, bn2 and fc in-features share labels (10; global pool
    makes flatten 1:1 per channel).  The 3 input channels and the classifier's
    7 outputs must keep their size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 10, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(10)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


@_register("chain")
def _chain() -> ToyCase:
    return _build(ChainNet, _randn((3, 11, 13)))


class MLPNet(nn.Module):
    """Case: Linear chain with LayerNorm.

    Coupling: fc1 out-features, ln1 (weight/bias) and fc2 in-features share
    labels (12); fc2 out, ln2 and fc3 in share labels (18).  The 5 input
    features and 7 outputs must keep their size.  LayerNorm statistics are over
    the pruned dim, so pruning changes values but not structure.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.ln1 = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 18)
        self.ln2 = nn.LayerNorm(18)
        self.fc3 = nn.Linear(18, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.ln1(self.fc1(x)))
        x = F.relu(self.ln2(self.fc2(x)))
        return self.fc3(x)


@_register("mlp")
def _mlp() -> ToyCase:
    return _build(MLPNet, _randn((5,)))


class ResidualNet(nn.Module):
    """Case: basic residual block with identity shortcut (``out = f(x) + x``).

    Coupling: stem conv out-channels, stem bn, block.conv1 in-channels,
    block.conv2 out-channels, block.bn2 and fc in-features all share ONE label
    set (6) because of the identity add.  block.conv1 out / block.bn1 /
    block.conv2 in form an independent group (10).  Output 7 fixed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 6)
        self.conv1 = nn.Conv2d(6, 10, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


@_register("residual")
def _residual() -> ToyCase:
    return _build(ResidualNet, _randn((3, 11, 13)))


class ResidualDownsampleNet(nn.Module):
    """Case: residual block with a 1x1 conv + bn downsample shortcut (stride 2).

    Coupling: block.conv2 out, block.bn2, downsample conv out, downsample bn
    and fc in-features share labels (14) because of the add.  The stem's
    out-channels (6) feed BOTH block.conv1 and the downsample conv, so stem
    conv out / stem bn / conv1 in / downsample in share labels.  conv1 out /
    bn1 / conv2 in (10) are independent.  Output 5 fixed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 6)
        self.conv1 = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 14, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(14)
        self.downsample = nn.Sequential(
            nn.Conv2d(6, 14, 1, stride=2, bias=False),
            nn.BatchNorm2d(14),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(14, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(y + self.downsample(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@_register("residual_downsample")
def _residual_downsample() -> ToyCase:
    return _build(ResidualDownsampleNet, _randn((3, 11, 13)))


class SEGateNet(nn.Module):
    """Case: squeeze-excitation, gate broadcast-multiplied over channels.

    Coupling: conv1 out, bn1, se.fc1 in-features, se.fc2 out-features and
    conv2 in-channels share labels (10): the (N,10) gate is viewed to
    (N,10,1,1) and multiplied elementwise with the (N,10,H,W) feature map.
    The SE bottleneck (fc1 out / fc2 in, 6) is independent.  conv2 out (14)
    is the model output and must keep its size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(10)
        self.fc1 = nn.Linear(10, 6)
        self.fc2 = nn.Linear(6, 10)
        self.conv2 = nn.Conv2d(10, 14, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        n, c = x.shape[0], x.shape[1]
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        x = x * s.view(n, c, 1, 1)
        return self.conv2(x)


@_register("se_gate")
def _se_gate() -> ToyCase:
    return _build(SEGateNet, _randn((3, 11, 13)))


class ConcatNet(nn.Module):
    """Case: DenseNet-style concat ``cat([x, f(x)], 1)`` then norm + conv.

    Coupling: the concatenated 17 channels are two label ranges: [0:6] are the
    stem's out-channels (stem conv, stem bn, branch conv in, AND norm/conv2
    in-channels at offsets 0..5); [6:17] are branch conv out-channels (branch
    bn, and norm/conv2 in-channels at offsets 6..16).  The post-concat bn
    must be sliced at those offsets.  conv2 out (14) is the output, fixed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 6)
        self.branch = _conv_bn_relu(6, 11)
        self.norm = nn.BatchNorm2d(17)
        self.conv2 = nn.Conv2d(17, 14, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.branch(x)], dim=1)
        return self.conv2(F.relu(self.norm(x)))


@_register("concat")
def _concat() -> ToyCase:
    return _build(ConcatNet, _randn((3, 11, 13)))


class InceptionNet(nn.Module):
    """Case: 3-branch inception block concatenated along channels.

    Coupling: stem out (6) feeds all three branches' first convs (shared
    labels).  The concat (26) is three label ranges: [0:5] b1 conv out,
    [5:15] b2's second conv out, [15:26] b3 conv out (after a max-pool, which
    is channel-wise).  The head conv's in-channels are sliced per range.
    b2's inner width (7) is independent.  Head conv out (13) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 6)
        self.b1 = _conv_bn_relu(6, 5, k=1)
        self.b2 = nn.Sequential(_conv_bn_relu(6, 7, k=1), _conv_bn_relu(7, 10, k=3))
        self.b3 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(6, 11, k=1)
        )
        self.head = nn.Conv2d(26, 13, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)
        return self.head(x)


@_register("inception")
def _inception() -> ToyCase:
    return _build(InceptionNet, _randn((3, 11, 13)))


class SplitChunkNet(nn.Module):
    """Case: conv -> torch.split (unequal parts) -> two different convs -> concat.

    Coupling: conv1 out-channels [0:5] share labels with conv_a in-channels;
    [5:13] with conv_b in-channels (bn1 is sliced over both ranges).  The
    split sizes [5, 8] must be rewritten to the kept counts.  The concat (18)
    is two ranges: [0:7] conv_a out, [7:18] conv_b out, mapping to conv_out
    in-channels.  conv_out out (6) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 13, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(13)
        self.conv_a = nn.Conv2d(5, 7, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 11, 1)
        self.conv_out = nn.Conv2d(18, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        a, b = torch.split(x, [5, 8], dim=1)
        x = torch.cat([F.relu(self.conv_a(a)), F.relu(self.conv_b(b))], dim=1)
        return self.conv_out(x)


@_register("split_chunk")
def _split_chunk() -> ToyCase:
    return _build(SplitChunkNet, _randn((3, 11, 13)))


class SplitAddNet(nn.Module):
    """Case: conv -> torch.split(x, 6) into two equal halves -> two convs -> ADD.

    (The Torch-Pruning IndexError case.)  Coupling: conv1 out-channels [0:6]
    share labels with conv_a in-channels and [6:12] with conv_b in-channels
    (bn1 sliced over both); the integer split size 6 must be rewritten to
    explicit sizes (or the halves pruned symmetrically).  conv_a out, conv_b
    out and conv_out in-channels share ONE label set (10) because of the add.
    conv_out out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv_a = nn.Conv2d(6, 10, 3, padding=1)
        self.conv_b = nn.Conv2d(6, 10, 1)
        self.conv_out = nn.Conv2d(10, 7, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        a, b = torch.split(x, 6, dim=1)
        x = F.relu(self.conv_a(a) + self.conv_b(b))
        return self.conv_out(x)


@_register("split_add")
def _split_add() -> ToyCase:
    return _build(SplitAddNet, _randn((3, 11, 13)))


class ChannelShuffleNet(nn.Module):
    """Case: ShuffleNetV2 stride-1 unit (chunk, branch, cat, channel shuffle).

    The stem (12) is chunked: x1 = stem[0:6] passes through, x2 = stem[6:12]
    feeds the branch (1x1 6->10, depthwise 3x3 on 10, 1x1 10->6).  The concat
    [x1, branch(x2)] is shuffled by view(N,2,6,H,W)->transpose(1,2)->view, so
    shuffled channel 2*i+g comes from half g, index i.  Correct coupling:
    stem channel i (i<6) -> head in-channel 2*i; branch out channel j -> head
    in-channel 2*j+1; stem channel 6+j -> branch conv1 in-channel j.  The
    view requires both halves to keep the same count (the chunk too), so the
    two halves can only be pruned by equal amounts.  The branch's inner width
    (10: conv1 out, dw conv, conv3 in) is independent; the depthwise conv's
    in/out are one label set.  Head conv out (7) is the output.
    """

    groups = 2

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, 12)
        self.branch = nn.Sequential(
            nn.Conv2d(6, 10, 1, bias=False),
            nn.BatchNorm2d(10),
            nn.ReLU(),
            nn.Conv2d(10, 10, 3, padding=1, groups=10, bias=False),
            nn.BatchNorm2d(10),
            nn.Conv2d(10, 6, 1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(12, 7, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat([x1, self.branch(x2)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, self.groups, c // self.groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(n, c, h, w)
        return self.head(x)


@_register("channel_shuffle")
def _channel_shuffle() -> ToyCase:
    return _build(ChannelShuffleNet, _randn((3, 11, 13)))


class FlattenLinearNet(nn.Module):
    """Case: VGG-style conv -> flatten over C x H x W -> Linear.

    Coupling: conv1 out / bn1 / conv2 in share labels (6).  conv2 out-channel c
    (of 11), bn2 channel c, and fc1 in-features [c*35 : (c+1)*35] share one
    label (spatial 5x7 after the pool: flatten is C-major).  fc1 out (13) /
    fc2 in are independent.  fc2 out (5) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(3, 6),
            _conv_bn_relu(6, 11),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(11 * 5 * 7, 13)
        self.fc2 = nn.Linear(13, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


@_register("flatten_linear")
def _flatten_linear() -> ToyCase:
    return _build(FlattenLinearNet, _randn((3, 10, 14)))


class ConvNeXtBlockNet(nn.Module):
    """Case: ConvNeXt block (permute to channels-last, LN, Linear, layer-scale).

    Stem (patchify conv 3->10, k=2, s=2), then block: depthwise 7x7 conv,
    permute(0,2,3,1), LayerNorm(10), Linear 10->40, GELU, Linear 40->10,
    ``gamma * x`` (gamma an nn.Parameter of shape (10,)), permute(0,3,1,2),
    residual add; then global pool and Linear head.  Coupling: stem out,
    dwconv (in = out, one label set), LN, pw1 in-features, pw2 out-features,
    gamma, the residual and head in-features share labels (10).  pw1 out /
    pw2 in (40) are independent.  Head out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 2, stride=2)
        self.dwconv = nn.Conv2d(10, 10, 7, padding=3, groups=10)
        self.norm = nn.LayerNorm(10)
        self.pwconv1 = nn.Linear(10, 40)
        self.pwconv2 = nn.Linear(40, 10)
        self.gamma = nn.Parameter(torch.rand(10) + 0.5)
        self.head = nn.Linear(10, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.pwconv2(F.gelu(self.pwconv1(x)))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        x = shortcut + x
        return self.head(x.mean((2, 3)))


@_register("permute_linear")
def _permute_linear() -> ToyCase:
    return _build(ConvNeXtBlockNet, _randn((3, 10, 14)))


class GroupedConvNet(nn.Module):
    """Case: ResNeXt-style grouped conv (groups=4) between 1x1 convs.

    conv1 (3->12), bn1, grouped conv (12->20, groups=4: 3 in / 5 out per
    group), bn2, conv3 (20->14), bn3.  Coupling: conv1 out / bn1 / gconv in
    share labels, and gconv out / bn2 / conv3 in share labels; additionally
    in-channels 3g..3g+2 and out-channels 5g..5g+4 belong to group g, so
    pruning must keep every group the same size (prune equally per group, or
    whole groups with both their in- and out-channels, updating ``groups``).
    conv3 out (14) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.gconv = nn.Conv2d(12, 20, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(20)
        self.conv3 = nn.Conv2d(20, 14, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(14)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.gconv(x)))
        return self.bn3(self.conv3(x))


@_register("grouped_conv")
def _grouped_conv() -> ToyCase:
    return _build(GroupedConvNet, _randn((3, 11, 13)))


class InvertedResidualNet(nn.Module):
    """Case: MobileNetV2 inverted residual with a depthwise conv.

    stem (3->6), expand 1x1 (6->22), depthwise 3x3 (22, groups=22), project
    1x1 (22->6), residual add, pool, Linear head.  Coupling: expand out /
    bn / depthwise in AND depthwise out (the same channel: a depthwise conv's
    in and out are one label set, ``groups`` must follow) / dw bn / project in
    share labels (22).  Stem out, project out, project bn, residual and head
    in share labels (6).  Head out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU6()
        )
        self.expand = nn.Sequential(
            nn.Conv2d(6, 22, 1, bias=False), nn.BatchNorm2d(22), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(22, 22, 3, padding=1, groups=22, bias=False),
            nn.BatchNorm2d(22),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(22, 6, 1, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


@_register("depthwise")
def _depthwise() -> ToyCase:
    return _build(InvertedResidualNet, _randn((3, 11, 13)))


class GroupNormNet(nn.Module):
    """Case: conv + GroupNorm(num_groups=3).

    conv1 (3->15), GroupNorm(3, 15), ReLU, conv2 (15->7).  Coupling: conv1 out,
    gn weight/bias and conv2 in share labels; channels 5g..5g+4 form norm
    group g, so pruning must keep the groups equally sized (prune the same
    number from every group, or whole groups updating ``num_groups``).
    conv2 out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 15, 3, padding=1)
        self.gn = nn.GroupNorm(3, 15)
        self.conv2 = nn.Conv2d(15, 7, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.gn(self.conv1(x))))


@_register("groupnorm")
def _groupnorm() -> ToyCase:
    return _build(GroupNormNet, _randn((3, 11, 13)))


class RMSNormNet(nn.Module):
    """Case: Linear + hand-written RMSNorm module, and torch's nn.RMSNorm.

    fc1 (5->12), HandRMSNorm(12) (``x * rsqrt(mean(x^2)) * weight``), GELU,
    fc2 (12->18), nn.RMSNorm(18), fc3 (18->7).  Coupling: fc1 out, the
    hand-written norm's weight and fc2 in share labels (12); fc2 out,
    nn.RMSNorm weight and fc3 in share labels (18).  The hand-written norm's
    mean over the last dim is a reduction over the pruned channels (values
    change, structure is fine).  fc3 out (7) is the output.  Input is
    (N, T=11, 5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 12)
        self.norm1 = HandRMSNorm(12)
        self.fc2 = nn.Linear(12, 18)
        self.norm2 = nn.RMSNorm(18, eps=1e-6)
        self.fc3 = nn.Linear(18, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.norm1(self.fc1(x)))
        x = self.norm2(self.fc2(x))
        return self.fc3(x)


@_register("rmsnorm")
def _rmsnorm() -> ToyCase:
    return _build(RMSNormNet, _randn((11, 5)))


# --------------------------------------------------------------------------- #
# attention cases
# --------------------------------------------------------------------------- #


class SeparateQKVAttention(nn.Module):
    """Case: self-attention with separate q/k/v Linear, explicit matmul+softmax.

    Model dim 14, attention dim 15 = 3 heads x head_dim 5; input (N, T=7, 14);
    ``x + o_proj(attn(x))`` then head Linear (14->6).  Coupling: q_proj out
    row h*5+d and k_proj out row h*5+d share a label (they meet in q @ k^T);
    v_proj out row h*5+d and o_proj in column h*5+d share a label.  The view
    to (N,T,3,5) requires every head to keep the same head_dim (prune
    equally per head, or whole heads across q/k/v/o).  Model dim: q/k/v in,
    o_proj out, the residual and head in share labels (14).  Head out (6) is
    the output.
    """

    num_heads = 3
    head_dim = 5

    def __init__(self) -> None:
        super().__init__()
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(14, inner)
        self.k_proj = nn.Linear(14, inner)
        self.v_proj = nn.Linear(14, inner)
        self.o_proj = nn.Linear(inner, 14)
        self.head = nn.Linear(14, 6)

    def _heads(self, t: Tensor) -> Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        y = self.attend(q, k, v)
        y = y.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        x = x + self.o_proj(y)
        return self.head(x)


@_register("mha_separate")
def _mha_separate() -> ToyCase:
    return _build(SeparateQKVAttention, _randn((7, 14)))


class FusedQKVAttention(nn.Module):
    """Case: fused qkv Linear (out 3*20) then reshape(B,T,3,H,D).permute.

    Model dim 14, 4 heads x head_dim 5 (4 heads, so that the literal 3 of the
    q/k/v axis differs from every size attribute).  qkv rows [0:20] are q,
    [20:40] k, [40:60] v (row offset + h*5 + d).  Coupling: qkv row h*5+d (q)
    and row 20+h*5+d (k) share a label; qkv row 40+h*5+d (v) and proj
    in-column h*5+d share a label; the reshape requires q, k and v to keep the
    same per-head count and every head the same head_dim (whole-head pruning
    removes 3 x 5 rows at three offsets plus 5 proj columns).  qkv in, proj
    out, residual and head in share labels (14).  Head out (6) is the output.
    """

    num_heads = 4
    head_dim = 5

    def __init__(self) -> None:
        super().__init__()
        inner = self.num_heads * self.head_dim
        self.qkv = nn.Linear(14, 3 * inner)
        self.proj = nn.Linear(inner, 14)
        self.head = nn.Linear(14, 6)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        qkv = (
            self.qkv(x)
            .reshape(b, s, 3, self.num_heads, self.head_dim)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (self.head_dim**-0.5)
        y = attn.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        x = x + self.proj(y)
        return self.head(x)


@_register("mha_fused")
def _mha_fused() -> ToyCase:
    return _build(FusedQKVAttention, _randn((7, 14)))


class SDPAAttention(SeparateQKVAttention):
    """Case: separate q/k/v Linear with F.scaled_dot_product_attention.

    Same structure and coupling as ``mha_separate`` (model dim 14, 3 heads x
    head_dim 5; q/k rows share labels per (head, dim), v rows share labels with
    o_proj in-columns, equal head_dim across heads), but the attention core is
    the fused SDPA op (causal), which the pruner must know is per-head and
    pairs q/k on the last dim and carries v's last dim to the output.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@_register("mha_sdpa")
def _mha_sdpa() -> ToyCase:
    return _build(SDPAAttention, _randn((7, 14)))


class TorchMHANet(nn.Module):
    """Case: nn.MultiheadAttention(15, 3, batch_first=True).

    embed Linear (6->15), MHA self-attention, residual, head Linear (15->10).
    Coupling: MHA's embed_dim (15) is both its in_proj input dim and its
    out_proj output dim, so embed out, in_proj_weight columns, out_proj rows,
    the residual and head in share labels.  Inside, the packed
    in_proj_weight (45, 15) has q/k/v row blocks at offsets 0/15/30: q and k
    rows share labels per (head, dim) and v rows share labels with
    out_proj columns; heads (3) are whole units across q/k/v/out_proj.
    The stock class ties the inner dim to embed_dim in Python, so a pruned
    module becomes ``pruning_ir.modules.PrunedMultiheadAttention``.  Head
    out (10) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 15)
        self.attn = nn.MultiheadAttention(15, 3, batch_first=True)
        self.head = nn.Linear(15, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(x + y)


@_register("mha_torch")
def _mha_torch() -> ToyCase:
    return _build(TorchMHANet, _randn((7, 6)))


class GQAAttention(nn.Module):
    """Case: grouped-query attention, 6 query heads sharing 2 kv heads.

    Model dim 10, head_dim 4; q_proj 10->24, k_proj/v_proj 10->8, o_proj
    24->10; kv heads are repeated with expand+reshape (HF ``repeat_kv``) or
    repeat_interleave.  Query head h uses kv head h // 3.  Coupling: q_proj
    row h*4+d shares a label with k_proj row (h//3)*4+d; o_proj in-column
    h*4+d shares a label with v_proj row (h//3)*4+d.  Pruning kv head j means
    pruning query heads 3j..3j+2 (and their o_proj columns); head_dim must
    stay equal across all heads.  Model dim: q/k/v in, o_proj out, residual,
    head in share labels (10).  Head out (5) is the output.  Input (N, 7, 10).
    """

    num_heads = 6
    num_kv_heads = 2
    head_dim = 4

    def __init__(self, use_repeat_interleave: bool = False) -> None:
        super().__init__()
        self.use_repeat_interleave = use_repeat_interleave
        self.q_proj = nn.Linear(10, self.num_heads * self.head_dim)
        self.k_proj = nn.Linear(10, self.num_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(10, self.num_kv_heads * self.head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, 10)
        self.head = nn.Linear(10, 5)

    def _repeat_kv(self, t: Tensor) -> Tensor:
        n_rep = self.num_heads // self.num_kv_heads
        if self.use_repeat_interleave:
            return t.repeat_interleave(n_rep, dim=1)
        b, kvh, s, d = t.shape
        t = t[:, :, None, :, :].expand(b, kvh, n_rep, s, d)
        return t.reshape(b, kvh * n_rep, s, d)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        k = self._repeat_kv(k)
        v = self._repeat_kv(v)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        y = y.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        x = x + self.o_proj(y)
        return self.head(x)


@_register("gqa")
def _gqa() -> ToyCase:
    return _build(GQAAttention, _randn((7, 10)))


@_register("gqa_repeat_interleave")
def _gqa_repeat_interleave() -> ToyCase:
    return _build(lambda: GQAAttention(use_repeat_interleave=True), _randn((7, 10)))


# --------------------------------------------------------------------------- #
# embedding / token cases
# --------------------------------------------------------------------------- #


class TiedEmbeddingLM(nn.Module):
    """Case: token embedding + MLP + lm_head whose weight IS the embedding weight.

    Embedding(37, 14); ``e + fc2(gelu(fc1(e)))`` with fc1 14->22, fc2 22->14;
    lm_head Linear(14, 37, bias=False) with ``lm_head.weight = embed.weight``.
    Coupling: embedding dim (embed.weight columns == lm_head in-features, the
    SAME tensor, must be sliced once and stay tied), fc1 in, fc2 out and the
    residual share labels (14).  fc1 out / fc2 in (22) are independent.  The
    vocabulary (37: embedding rows, lm_head out) must keep its size.  Input is
    token ids (N, T=7), int64.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(37, 14)
        self.fc1 = nn.Linear(14, 22)
        self.fc2 = nn.Linear(22, 14)
        self.lm_head = nn.Linear(14, 37, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        e = self.embed(ids)
        h = e + self.fc2(F.gelu(self.fc1(e)))
        return self.lm_head(h)


@_register("embedding_tied")
def _embedding_tied() -> ToyCase:
    return _build(TiedEmbeddingLM, lambda: (torch.randint(0, 37, (BATCH, 7)),))


class ClsTokenPosNet(nn.Module):
    """Case: ViT-like patch conv, flatten, cat class token, add position embedding.

    Patch conv 3->10 (k=s=4) on a 12x24 image -> 3x6 = 18 patches; flatten(2)
    .transpose(1,2) -> (N,18,10); cat an nn.Parameter class token (1,1,10)
    expanded to (N,1,10) along the token dim -> (N,19,10); add an
    nn.Parameter position embedding (1,19,10); LayerNorm; Linear on the class
    token.  Coupling: patch conv out-channels, cls_token last dim, pos_embed
    last dim, LN and head in-features share labels (10).  The token count (19)
    is NOT a channel dim and must not be pruned.  Head out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 10, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 10))
        self.pos_embed = nn.Parameter(torch.randn(1, 19, 10))
        self.norm = nn.LayerNorm(10)
        self.head = nn.Linear(10, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(x)
        return self.head(x[:, 0])


@_register("cls_token_pos")
def _cls_token_pos() -> ToyCase:
    return _build(ClsTokenPosNet, _randn((3, 12, 24)))


class HFConv1DMLP(nn.Module):
    """Case: GPT-2 style MLP using transformers' Conv1D (weight is (in, out)!).

    LayerNorm(10), c_fc = Conv1D(nf=26, nx=10) (weight (10, 26)), GELU,
    c_proj = Conv1D(nf=10, nx=26) (weight (26, 10)), residual, head Linear
    (10->7).  Coupling: c_fc out-features are weight dim 1 and bias dim 0;
    c_proj in-features are weight dim 0; they share labels (26, independent).
    LN, c_fc in (weight dim 0), c_proj out (weight dim 1, bias), residual and
    head in share labels (10).  ``nf``/``nx`` attributes must be updated.
    Head out (7) is the output.  Input (N, T=11, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.ln = nn.LayerNorm(10)
        self.c_fc = Conv1D(26, 10)
        self.c_proj = Conv1D(10, 26)
        # Conv1D inits its bias to zeros; randomize so bias slicing is observable.
        with torch.no_grad():
            self.c_fc.bias.normal_(0.0, 0.5)
            self.c_proj.bias.normal_(0.0, 0.5)
            self.c_fc.weight.normal_(0.0, 0.3)
            self.c_proj.weight.normal_(0.0, 0.3)
        self.head = nn.Linear(10, 7)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.c_proj(F.gelu(self.c_fc(self.ln(x))))
        return self.head(x)


@_register("conv1d_hf")
def _conv1d_hf() -> ToyCase:
    return _build(HFConv1DMLP, _randn((11, 10)))


# --------------------------------------------------------------------------- #
# cases that must be (partly) refused
# --------------------------------------------------------------------------- #


class UnknownOpNet(nn.Module):
    """Case: an op the pruner cannot know (torch.fft.rfft over the channel dim).

    conv1 (3->12), bn1, ReLU; branch a: conv_a (12->10); branch b:
    ``torch.fft.rfft(x, dim=1).abs()`` mixes all 12 channels into 7 -> conv_b
    (7->10); a + b; conv_out (10->5).  Coupling: everything touching the
    rfft is unprunable — conv1 out / bn1 / conv_a in (they share labels with
    the rfft input) and conv_b in (the rfft output).  conv_a out, conv_b out
    and conv_out in share labels (10) and remain prunable.  conv_out out (5)
    is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv_a = nn.Conv2d(12, 10, 1)
        self.conv_b = nn.Conv2d(7, 10, 1)
        self.conv_out = nn.Conv2d(10, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        a = self.conv_a(x)
        b = self.conv_b(torch.fft.rfft(x, dim=1).abs())
        return self.conv_out(F.relu(a + b))


@_register("unknown_op")
def _unknown_op() -> ToyCase:
    return _build(UnknownOpNet, _randn((3, 11, 13)))


class DataDependentIndexNet(nn.Module):
    """Case: channel-dim indexing with a data-dependent index.

    conv1 (3->12), bn1, ReLU; ``idx = x.mean((0,2,3)).argsort()[:7]``;
    ``x[:, idx]`` -> 7 channels; conv2 (7->10).  Which conv1 channels reach
    which conv2 in-channel depends on the data, so conv1 out / bn1 and conv2
    in are unprunable (and the constant k=7 is baked in).  conv2 out (10) is
    the output.
    """

    k = 7

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(self.k, 10, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        idx = x.mean((0, 2, 3)).argsort()[: self.k]
        return self.conv2(x[:, idx])


@_register("data_dependent_index")
def _data_dependent_index() -> ToyCase:
    return _build(DataDependentIndexNet, _randn((3, 11, 13)))


class LiteralGroupsSliceNet(nn.Module):
    """Case: channel sizes written as literals in ``forward`` (run-time patches) on the gradient path.

    pw (3->12, 1x1) -> ``F.conv2d(h, w, groups=4)`` with ``w`` (12, 3, 3, 3): 4 conv groups of
    3 channels; ``cat(h[:, 2:6], h[:, 9:12])`` (7 channels, literal bounds) -> dropout -> out
    (7->5). Pruning changes ``groups=4`` and the slice bounds, which a patch rewrites below
    autograd: the backward formulas of conv (groups) and slice (start/end) must see the new
    values too (they did not: backward failed or put gradients at the old positions). The
    dropout makes train-mode checks meaningful. Prunable: the conv groups (4), the kept
    channels inside a conv group that the slices do not cut, and the sliced channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 12, 1)
        self.w = nn.Parameter(torch.randn(12, 3, 3, 3) * 0.3)
        self.drop = nn.Dropout(0.2)
        self.out = nn.Conv2d(7, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.conv2d(self.pw(x), self.w, padding=1, groups=4)
        h = torch.cat([h[:, 2:6], h[:, 9:12]], 1)
        return self.out(self.drop(F.relu(h)))


@_register("literal_groups_slice")
def _literal_groups_slice() -> ToyCase:
    return _build(LiteralGroupsSliceNet, _randn((3, 6, 7)))


# --------------------------------------------------------------------------- #
# interface / layout cases
# --------------------------------------------------------------------------- #


class MultiInputOutputNet(nn.Module):
    """Case: two inputs (image, vector), dict of two outputs.

    image (N,3,10,14) -> conv1 (3->6) -> bn -> ReLU -> fmap; vector (N,5) ->
    vec_fc (5->6).  ``fused = fmap.mean((2,3)) + vec_fc(v)`` -> cls_fc
    (6->7) -> out "logits"; fmap -> aux_conv (6->13) -> out "aux".
    Coupling: conv1 out / bn, vec_fc out, cls_fc in and aux_conv in share
    labels (6).  Both outputs (7 logits, 13 aux channels) and both inputs
    (3 channels, 5 features) must keep their size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(3, 6)
        self.vec_fc = nn.Linear(5, 6)
        self.cls_fc = nn.Linear(6, 7)
        self.aux_conv = nn.Conv2d(6, 13, 1)

    def forward(self, image: Tensor, vec: Tensor) -> dict[str, Tensor]:
        fmap = self.conv1(image)
        fused = fmap.mean((2, 3)) + self.vec_fc(vec)
        return {"logits": self.cls_fc(F.relu(fused)), "aux": self.aux_conv(fmap)}


@_register("multi_input_output")
def _multi_input_output() -> ToyCase:
    return _build(MultiInputOutputNet, _randn((3, 10, 14), (5,)))


class ConvTransposeNet(nn.Module):
    """Case: conv -> ConvTranspose2d -> conv (transposed weight layout).

    conv1 (3->6), bn1, ConvTranspose2d(6, 10, k=2, s=2) whose weight is
    (in=6, out=10, 2, 2), bn2, conv3 (10->7).  Coupling: conv1 out / bn1 /
    deconv in-channels (weight dim 0) share labels (6); deconv out-channels
    (weight dim 1, bias) / bn2 / conv3 in share labels (10).  conv3 out (7)
    is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.deconv = nn.ConvTranspose2d(6, 10, 2, stride=2)
        self.bn2 = nn.BatchNorm2d(10)
        self.conv3 = nn.Conv2d(10, 7, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.deconv(x)))
        return self.conv3(x)


@_register("conv_transpose")
def _conv_transpose() -> ToyCase:
    return _build(ConvTransposeNet, _randn((3, 5, 7)))


class PixelShuffleNet(nn.Module):
    """Case: conv -> PixelShuffle(2) -> conv.

    conv1 (3->20), PixelShuffle(2) -> 5 channels at 2x resolution, conv2
    (5->7).  Coupling: conv1 out-channels 4c..4c+3 (a block of r^2 = 4
    consecutive channels) all map to pixel-shuffled channel c, i.e. to conv2
    in-channel c: they can only be pruned as a whole block together with
    conv2 in-channel c.  conv2 out (7) is the output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 20, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(5, 7, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.shuffle(self.conv1(x))))


@_register("pixel_shuffle")
def _pixel_shuffle() -> ToyCase:
    return _build(PixelShuffleNet, _randn((3, 5, 7)))


class Conv1dChainNet(nn.Module):
    """Case: Conv1d / BatchNorm1d chain (sequence data, no recurrence).

    conv1 (3->6), BatchNorm1d(6) on (N,C,L), conv2 (6->10), BatchNorm1d(10),
    global average pool over L, fc1 (10->14), BatchNorm1d(14) on (N,C),
    fc2 (14->5).  Coupling: conv1 out / bn1 / conv2 in (6); conv2 out / bn2 /
    fc1 in (10); fc1 out / bn3 / fc2 in (14).  fc2 out (5) is the output.
    Input (N, 3, L=17).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(6)
        self.conv2 = nn.Conv1d(6, 10, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(10)
        self.fc1 = nn.Linear(10, 14)
        self.bn3 = nn.BatchNorm1d(14)
        self.fc2 = nn.Linear(14, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = x.mean(-1)
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc2(x)


@_register("lstm_free_1d")
def _lstm_free_1d() -> ToyCase:
    return _build(Conv1dChainNet, _randn((3, 17)))


# --------------------------------------------------------------------------- #
# self-check
# --------------------------------------------------------------------------- #


def _leaves(out: Any) -> list[tuple[str, Tensor]]:
    """Flatten a (nested) tensor / tuple / list / dict output into named leaves."""
    if isinstance(out, Tensor):
        return [("", out)]
    if isinstance(out, dict):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        items = list(enumerate(out))
    else:
        raise TypeError(f"unexpected output type {type(out)!r}")
    result: list[tuple[str, Tensor]] = []
    for key, value in items:
        for sub, t in _leaves(value):
            result.append((f"{key}{'.' + sub if sub else ''}", t))
    return result


def _self_check() -> None:
    for name, factory in TOY_CASES.items():
        model, inputs = factory()
        assert not model.training, name
        assert all(t.shape[0] == BATCH for t in inputs), name
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params <= 50_000, (name, n_params)
        with torch.no_grad():
            out = model(*inputs)
            t0 = time.perf_counter()
            out = model(*inputs)
            ms = (time.perf_counter() - t0) * 1e3
        leaves = _leaves(out)
        assert all(torch.isfinite(t).all() for _, t in leaves), name
        shapes = ", ".join(f"{k + ':' if k else ''}{tuple(t.shape)}" for k, t in leaves)
        print(f"{name:24s} params={n_params:6d}  fwd={ms:6.2f}ms  out={shapes}")
    print(f"{len(TOY_CASES)} cases OK")


if __name__ == "__main__":
    _self_check()
