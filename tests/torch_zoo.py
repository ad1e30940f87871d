"""Full-size reference models in plain PyTorch (no torchvision) + a meta LLaMA-7B.

These are the "real" architectures used for benchmarks and for shape/size checks at
realistic scale, complementing the tiny models of ``tests/hf_zoo.py``:

* :func:`resnet50` - ResNet-50 v1.5 (bottleneck blocks, stride on the 3x3 conv,
  1x1-conv + BN projection shortcuts, widths 64..2048, 1000 classes); module names and
  parameter count (25,557,032) match ``torchvision.models.resnet50``.
* :func:`mobilenet_v2` - MobileNetV2 width 1.0 (inverted residuals, depthwise 3x3
  convs, ReLU6, linear bottlenecks); names and parameter count (3,504,872) match
  ``torchvision.models.mobilenet_v2``.
* :func:`vit_b_16` - ViT-B/16 with torchvision's module names and parameter count
  (86,567,656): ``nn.MultiheadAttention`` blocks, class token, position embedding.
* :func:`llama_7b_meta` - ``transformers.LlamaForCausalLM`` with the real LLaMA-7B
  config, built on the ``meta`` device (no memory is allocated, nothing can be
  computed numerically; useful for graph capture / planning at scale).

The CNNs are seeded with ``torch.manual_seed(0)``, use torchvision's initialisation and
then get random BatchNorm statistics / affine parameters
(:func:`tests.zoo_types.perturb_constant_tensors`) so channel-slicing bugs are visible.

Run ``python tests/torch_zoo.py`` to build and run every case once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Works both as ``tests.torch_zoo`` and with ``tests/`` itself on sys.path.
try:
    from tests.zoo_types import ZooCase, perturb_constant_tensors, self_check
except ImportError:  # pragma: no cover - depends on how the file is imported
    from zoo_types import (  # type: ignore[no-redef]
        ZooCase,
        perturb_constant_tensors,
        self_check,
    )

__all__ = [
    "META_CASES",
    "TORCH_CASES",
    "Bottleneck",
    "InvertedResidual",
    "MobileNetV2",
    "ResNet50",
    "VisionTransformer",
    "llama_7b_meta",
    "mobilenet_v2",
    "resnet50",
    "vit_b_16",
]

IMAGENET_INPUT_SHAPE = (1, 3, 224, 224)


def _image_input(seed: int = 1234) -> torch.Tensor:
    return torch.randn(
        IMAGENET_INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)
    )


def _init_cnn(model: nn.Module) -> None:
    """torchvision init: kaiming-normal (fan_out) convs, BN = (1, 0), N(0, 0.01) fc."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------ ResNet-50
class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1 reduce -> 3x3 (stride here) -> 1x1 expand (x4)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(
            width, planes * self.expansion, kernel_size=1, bias=False
        )
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's module layout (conv1/bn1/layer1..4/avgpool/fc)."""

    def __init__(
        self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        _init_cnn(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample: nn.Module | None = None
        out_planes = planes * Bottleneck.expansion
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(out_planes),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        layers.extend(Bottleneck(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet50() -> ZooCase:
    """ResNet-50 (25,557,032 params): input (1, 3, 224, 224), logits (1, 1000)."""
    torch.manual_seed(0)
    model = perturb_constant_tensors(ResNet50(), seed=0).eval()
    return ZooCase(name="resnet50", model=model, example_inputs=(_image_input(),))


# ---------------------------------------------------------------------- MobileNetV2
def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6 (torchvision Conv2dNormActivation)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_planes,
                out_planes,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (ReLU6 both) -> 1x1 linear project (+ skip).

    The skip connection is used when ``stride == 1`` and ``inp == oup``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers.extend(
            [
                ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's module layout (``features`` / ``classifier``)."""

    # t (expansion), c (output channels), n (repeats), s (first stride)
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        input_channel = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            output_channel = _make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(
                    InvertedResidual(
                        input_channel, output_channel, stride, expand_ratio=t
                    )
                )
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        _init_cnn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2() -> ZooCase:
    """MobileNetV2 1.0 (3,504,872 params): input (1, 3, 224, 224), logits (1, 1000)."""
    torch.manual_seed(0)
    model = perturb_constant_tensors(MobileNetV2(), seed=0).eval()
    return ZooCase(
        name="mobilenet_v2_torch", model=model, example_inputs=(_image_input(),)
    )


# ------------------------------------------------------------------------- LLaMA-7B
LLAMA_7B_CONFIG: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _logits(out: Any) -> torch.Tensor:
    return out.logits


def llama_7b_meta() -> ZooCase:
    """LlamaForCausalLM with the LLaMA-7B config on the ``meta`` device (~6.74B params).

    Example input: ``input_ids`` of shape ``(1, 16)`` on ``meta``; kwargs are an
    all-ones ``attention_mask`` (1, 16) on ``meta`` and ``use_cache=False``. Eager
    attention.
    The forward pass runs (shape propagation only) and returns meta logits
    ``(1, 16, 32000)``. Requires ``transformers``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_7B_CONFIG, attn_implementation="eager")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
        input_ids = torch.zeros(1, 16, dtype=torch.long)
        attention_mask = torch.ones(1, 16, dtype=torch.long)
    return ZooCase(
        name="llama_7b_meta",
        model=model.eval(),
        example_inputs=(input_ids,),
        # An explicit attention_mask is required on meta: without one, transformers'
        # packed-sequence detection calls ``.all()`` on position_ids (-> .item()).
        example_kwargs={"attention_mask": attention_mask, "use_cache": False},
        output_to_tensor=_logits,
    )


# ---------------------------------------------------------------------- ViT (torchvision layout)
class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (torchvision ``MLPBlock``)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Pre-norm block with ``nn.MultiheadAttention`` (torchvision ``EncoderBlock``)."""

    def __init__(self, heads: int, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq: int, layers: int, heads: int, dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(*[EncoderBlock(heads, dim, mlp_dim) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """ViT with torchvision's module names: ``conv_proj``, ``class_token``,
    ``encoder.pos_embedding``, ``encoder.layers.<i>.self_attention`` (``nn.MultiheadAttention``),
    ``heads.head``."""

    def __init__(self, image: int = 224, patch: int = 16, layers: int = 12, heads: int = 12, dim: int = 768,
                 mlp_dim: int = 3072, classes: int = 1000) -> None:
        super().__init__()
        self.patch = patch
        self.dim = dim
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = Encoder((image // patch) ** 2 + 1, layers, heads, dim, mlp_dim)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16() -> ZooCase:
    """ViT-B/16 (86,567,656 params, as ``torchvision.models.vit_b_16``): input (1, 3, 224, 224)."""
    torch.manual_seed(0)
    model = perturb_constant_tensors(VisionTransformer(), seed=0).eval()
    return ZooCase(name="vit_b_16_torch", model=model, example_inputs=(_image_input(),))


# ------------------------------------------------------------------------- registry
TORCH_CASES: dict[str, Callable[[], ZooCase]] = {
    "resnet50": resnet50,
    "mobilenet_v2_torch": mobilenet_v2,
    "vit_b_16_torch": vit_b_16,
}

META_CASES: dict[str, Callable[[], ZooCase]] = {
    "llama_7b_meta": llama_7b_meta,
}


if __name__ == "__main__":
    import importlib.util
    import sys

    cases = dict(TORCH_CASES)
    if importlib.util.find_spec("transformers") is not None:
        cases.update(META_CASES)
    sys.exit(1 if self_check(cases, repeats=1) else 0)
