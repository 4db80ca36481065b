"""The Keras tutorial's small Xception network, layer for layer, in PyTorch.

Owns the seed network. Keras's "same" padding pads the bottom/right more than the top/left
when a stride-2 window does not fit evenly; PyTorch pads symmetrically. We reproduce Keras's
windows exactly (asymmetric pad for the entry conv, ceil_mode pooling), so shapes, parameter
counts (2,722,777 trainable + 8,288 BatchNorm statistics with one logit) and sampling
positions all match the tutorial. BatchNorm uses Keras's momentum (0.99) and epsilon (1e-3).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls.models.layers import UNIT, InputScale, SameConv, Units

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # Keras: epsilon=1e-3, momentum=0.99 (= 1 - 0.01 here)


def bn(c: int, momentum: float = BN_MOMENTUM, norm: str = "batch") -> nn.Module:
    """BatchNorm as Keras configures it; or GroupNorm, whose result does not depend on the
    batch (small per-GPU batches, exact DDP equivalence tests)."""
    if norm == "group":
        return nn.GroupNorm(min(8, c), c, eps=BN_EPS)
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=momentum)


class SameMaxPool(nn.Module):
    """MaxPooling2D(3, strides=2, padding="same") with Keras's windows.

    For an even size Keras pads one row at the bottom: that is ceil_mode with no padding. For
    an odd size it pads one on each side: padding=1 (ceil_mode then changes nothing).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = int(x.shape[-2]) % 2, int(x.shape[-1]) % 2
        return F.max_pool2d(x, 3, 2, (ph, pw), ceil_mode=True)


class StridedPointwise(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as "keep every s-th pixel, then a 1x1 conv".

    The same arithmetic and the same parameters as nn.Conv2d(cin, cout, 1, stride=s), but
    it never reaches oneDNN's strided 1x1 weight-gradient kernel: in oneDNN 3.12 (PyTorch
    2.13, AVX-512 CPUs) that kernel crashes the process (SIGSEGV/SIGABRT/SIGBUS) for
    channels_last inputs, 2+ threads, an odd batch and narrow widths (61 of 288 shapes
    probed, e.g. batch 5, 8 -> 16 channels, 16x16). Stride 1 crashed in none of the same 288.
    """

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        return F.conv2d(x[..., ::s, ::s], self.weight, self.bias)  # (B, cout, ceil(H/s), ceil(W/s))


class SeparableConv(nn.Sequential):
    """Keras SeparableConv2D: depthwise 3x3 (no bias) then pointwise 1x1 (with bias)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(
            nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=True))


class XBlock(nn.Module):
    """[ReLU, SepConv, BN] x 2, MaxPool 3/2, plus a 1x1 stride-2 projection of the input."""

    def __init__(self, cin: int, cout: int, bn_momentum: float = BN_MOMENTUM, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), SeparableConv(cin, cout), bn(cout, bn_momentum, norm),
            nn.ReLU(), SeparableConv(cout, cout), bn(cout, bn_momentum, norm),
            SameMaxPool())
        self.residual = StridedPointwise(cin, cout, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.residual(x)


class Xception(Units):
    """The tutorial network; widths are parameters so smaller variants reuse the code."""

    def __init__(self, num_classes: int, entry: int = 128, blocks=(256, 512, 728),
                 exit_width: int = 1024, dropout: float = 0.25, single_logit: bool = False,
                 bn_momentum: float = BN_MOMENTUM, norm: str = "batch", mean=UNIT[0],
                 std=UNIT[1]):
        super().__init__()
        self.num_logits = 1 if single_logit else num_classes
        self.input_scale = InputScale(mean, std)  # Keras's Rescaling(1/255)
        self.stem = nn.Sequential(SameConv(3, entry, 3, stride=2), bn(entry, bn_momentum, norm),
                                  nn.ReLU())
        chans = [entry, *blocks]
        self.blocks = nn.Sequential(*[XBlock(a, b, bn_momentum, norm)
                                      for a, b in zip(chans, chans[1:])])
        self.exit = nn.Sequential(SeparableConv(chans[-1], exit_width),
                                  bn(exit_width, bn_momentum, norm), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(exit_width, self.num_logits)
        self.min_size = 2 ** (1 + len(blocks))  # every stride-2 stage keeps >= 1 pixel

    def groups(self) -> list[nn.Module]:
        """Stages from the input to the head, for discriminative learning rates."""
        return [self.stem, *self.blocks, self.exit, self.fc]

    @property
    def num_units(self) -> int:
        return len(self.blocks) + 2

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.stem(self.input_scale(x))  # (B, entry, H/2, W/2)
        if i <= len(self.blocks):
            return self.blocks[i - 1](x)  # each block halves H and W
        return self.exit(x)  # (B, exit_width, H/16, W/16) for three blocks

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [self.stem] if i == 0 else [self.blocks[i - 1]] if i <= len(self.blocks) \
            else [self.exit]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).flatten(1)  # (B, exit_width)
        return self.fc(self.dropout(x))  # (B, num_logits)
