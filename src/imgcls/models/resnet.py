"""A small plain ResNet for CPUs: dense 3x3 convolutions, BatchNorm, max-pool downsampling.

Owns the CPU preset's network. On a CPU, dense 3x3 convolutions reach a far larger share of
peak FLOP/s than the depthwise convolutions of Xception (memory-bound), so for the same
time a plain ResNet sees more images; channels double as resolution halves, like
airbench's CIFAR network, with one residual pair of convolutions per stage.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from imgcls.models.layers import CENTRED, InputScale, Units


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Stage(nn.Module):
    """conv (cin -> cout), max-pool /2, then a residual pair of convs at cout."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = nn.Sequential(conv_bn(cin, cout), nn.MaxPool2d(2))
        self.res = nn.Sequential(conv_bn(cout, cout), conv_bn(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.res(x)


class SmallResNet(Units):
    def __init__(self, num_classes: int, widths=(32, 64, 128, 256), stem: int = 24,
                 dropout: float = 0.2, mean=CENTRED[0], std=CENTRED[1]):
        super().__init__()
        self.num_logits = num_classes
        # x / 255 - 0.5: centred inputs; BatchNorm follows, so no per-channel statistics needed
        self.input_scale = InputScale(mean, std)
        self.stem = conv_bn(3, stem, stride=2)  # (B, stem, H/2, W/2)
        chans = [stem, *widths]
        self.stages = nn.Sequential(*[Stage(a, b) for a, b in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(chans[-1], num_classes)
        self.min_size = 2 ** (1 + len(widths))

    def groups(self) -> list[nn.Module]:
        """Stages from the input to the head, for discriminative learning rates."""
        return [self.stem, *self.stages, self.fc]

    @property
    def num_units(self) -> int:
        return len(self.stages) + 1

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.stem(self.input_scale(x))  # (B, stem, H/2, W/2)
        return self.stages[i - 1](x)  # (B, widths[-1], H/32, W/32) after four stages

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [self.stem] if i == 0 else [self.stages[i - 1]]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(x).flatten(1)))
