"""Layers more than one network uses: the input scaling and TensorFlow's 'SAME' convolution.

Owns the one input-scaling module every imgcls network starts with (`InputScale`: RGB
pixels in 0..255 -> (x / 255 - mean) / std, as timm's pretrained configs state it) and the
'SAME' padding of Keras and TensorFlow (`same_pad`, `SameConv`), which pads the bottom and
right more than the top and left where a stride-2 window does not fit evenly. Weights made
in TensorFlow (the Keras tutorial's Xception, EfficientNet-Lite) were trained with those
windows; PyTorch's symmetric padding would shift every strided layer by half a pixel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# (mean, std) per channel in 0..1 units, what each family of weights was trained on.
UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # x / 255: Keras's Rescaling(1/255)
CENTRED = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))  # x / 255 - 0.5 (the cpu preset's network)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision/timm ResNets
TF_LITE = ((127 / 255,) * 3, (128 / 255,) * 3)  # (x - 127) / 128: EfficientNet-Lite


class InputScale(nn.Module):
    """RGB in 0..255 (uint8 or float) -> (x / 255 - mean) / std per channel.

    mean and std are in 0..1 units. The constants are buffers outside the state dict, so a
    checkpoint's tensors do not depend on them; the model config records them instead."""

    def __init__(self, mean=UNIT[0], std=UNIT[1]):
        super().__init__()
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        std_t = torch.tensor(self.std, dtype=torch.float64).view(1, 3, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.register_buffer("scale", (1 / (255 * std_t)).float(), False)
        self.register_buffer("shift", (mean_t / std_t).float(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.float()
        return x * self.scale.to(x.dtype) - self.shift.to(x.dtype)

    def record(self) -> dict:
        """What a checkpoint stores of it."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of Keras/TF "same" for one dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with Keras "same" padding, also for stride 2 (pads bottom/right when uneven)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        # int(): the ONNX tracer would otherwise record shape arithmetic; H, W are fixed there.
        (t, b), (l, r) = same_pad(int(x.shape[-2]), k, s), same_pad(int(x.shape[-1]), k, s)
        if t == b and l == r:
            return F.conv2d(x, self.weight, self.bias, self.stride, (t, l), self.dilation,
                            self.groups)
        return F.conv2d(F.pad(x, (l, r, t, b)), self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


class Units(nn.Module):
    """A network that runs as a list of units (its stem, its blocks, its last convolution)
    followed by a head (pooling, dropout, classifier). A run can keep the first units fixed
    and compute their output once per photo (train.features). A subclass defines
    `num_units`, `_unit(i, x)`, `unit_modules(i)` and `forward_head`."""

    num_units: int

    def _unit(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unit_modules(self, i: int) -> list[nn.Module]:
        """The modules whose parameters unit i uses."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_units(self, x: torch.Tensor, start: int = 0, stop: int | None = None
                      ) -> torch.Tensor:
        """Units start..stop-1 (all by default)."""
        for i in range(start, self.num_units if stop is None else stop):
            x = self._unit(i, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_units(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_units(x))
