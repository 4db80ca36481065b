"""ResNet-18/34/50/101 with torchvision's parameter names and shapes, so the weights people
have (torchvision's and timm's ResNet files, which share these names) load as they are.

Owns those networks and the input normalisation their published weights expect. Like every
imgcls network they take RGB pixels in 0..255; the first module turns them into
(x / 255 - mean) / std with ImageNet's mean and std (or the `mean`/`std` options), as
torchvision's and timm's ResNet weights were trained on. The normalisation is part of the
network, so training, predict, serve and the exported ONNX graph all apply it the same way.
The layout follows torchvision.models.resnet (He et al. 2016, with the stride on the 3x3
convolution of a bottleneck, "ResNet v1.5").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from imgcls.models.layers import IMAGENET, InputScale, Units

# Blocks per stage: torchvision's resnet18/34/50/101.
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(Units):
    """torchvision's ResNet: conv1/bn1/maxpool, layer1..layer4, avgpool, fc."""

    head = ("fc",)  # the class-dependent part: replaced when a run starts from other classes

    def __init__(self, num_classes: int, depth: int = 18, mean=IMAGENET[0], std=IMAGENET[1],
                 dropout: float = 0.0):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, not {depth}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.num_logits = num_classes
        self.min_size = 32
        self.input_scale = InputScale(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes * block.expansion:
                down = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride,
                                               bias=False),
                                     nn.BatchNorm2d(planes * block.expansion))
            layers = [block(cin, planes, stride, down)]
            cin = planes * block.expansion
            layers += [block(cin, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def groups(self) -> list[nn.Module]:
        """Stages from the input to the head, for discriminative learning rates."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3,
                self.layer4, self.fc]

    def _blocks(self) -> list[nn.Module]:
        return [b for i in range(1, 5) for b in getattr(self, f"layer{i}")]

    @property
    def num_units(self) -> int:
        """The stem, then every block of layer1..layer4."""
        return 1 + len(self._blocks())

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 0:
            return self.maxpool(self.relu(self.bn1(self.conv1(self.input_scale(x)))))
        return self._blocks()[i - 1](x)

    def unit_modules(self, i: int) -> list[nn.Module]:
        return [self.conv1, self.bn1] if i == 0 else [self._blocks()[i - 1]]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def depth_of(state: dict) -> int | None:
    """Which torchvision ResNet a state dict holds, from its names; None if none."""
    if "conv1.weight" not in state or "layer4.0.conv1.weight" not in state:
        return None
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    return next((d for d, (k, b) in DEPTHS.items() if (k, b) == (kind, blocks)), None)
