"""Batch augmentation as pure tensor functions, on whatever device the batch is on.

Owns the random transforms used in training: horizontal flip, rotation (Keras's meaning of
the factor: 0.1 = up to +-0.1 of a full turn, +-36 degrees, reflect fill, bilinear), zoom,
translation, brightness and contrast. Every random draw comes from a torch.Generator, so a
seed reproduces the same augmentation. Nothing here runs at evaluation.

Built on torch's own affine_grid/grid_sample rather than kornia: one dependency fewer, and
rotation, zoom, translation and (when they run) the flip fold into one 2x3 matrix per image,
so a batch is resampled once, on a channels_last tensor (2x faster than NCHW on CPU).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # random horizontal flip with probability 0.5
    rotation: float = 0.1  # fraction of a full turn: angle ~ U(-f, f) * 360 degrees
    zoom: float = 0.0  # scale ~ U(1 - z, 1 + z); > 1 shows more of the image (zoom out)
    translate: float = 0.0  # shift ~ U(-t, t) of the width and height
    brightness: float = 0.0  # add U(-b, b) * 255
    contrast: float = 0.0  # scale around the image mean by U(1 - c, 1 + c)

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.zoom or self.translate)

    @property
    def active(self) -> bool:
        return bool(self.flip or self.geometric or self.brightness or self.contrast)

    def to_dict(self) -> dict:
        return asdict(self)


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float (float32 unless the model is float64) in
    0..255, channels_last in memory.

    The permute is free (a view) and already has channels_last strides, which is the layout
    the convolutions want on both CPU and GPU.
    """
    return images.permute(0, 3, 1, 2).to(dtype)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink a (B, 3, H, W) float batch to size x size px: bilinear with antialiasing (as
    Pillow's resize), so a lower training resolution sees the photo, not an aliased copy."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def flip_mask(n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < 0.5


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5 (exact: an index operation)."""
    mask = flip_mask(x.shape[0], g, x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def affine_matrices(n: int, h: int, w: int, angles: torch.Tensor | None = None,
                    scales: torch.Tensor | None = None, shifts: torch.Tensor | None = None,
                    flips: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """(n, 2, 3) matrices for affine_grid: output coords -> input coords (normalised).

    Rotation is done in pixel units (then normalised) so that non-square images rotate
    without shearing.
    """
    theta = torch.zeros(n, 2, 3, device=device)
    cos = torch.cos(angles) if angles is not None else torch.ones(n, device=device)
    sin = torch.sin(angles) if angles is not None else torch.zeros(n, device=device)
    s = scales if scales is not None else torch.ones(n, device=device)
    fx = torch.where(flips, -1.0, 1.0) if flips is not None else torch.ones(n, device=device)
    theta[:, 0, 0] = cos * s * fx
    theta[:, 0, 1] = -sin * s * (h / w)
    theta[:, 1, 0] = sin * s * (w / h) * fx
    theta[:, 1, 1] = cos * s
    if shifts is not None:
        theta[:, :, 2] = 2 * shifts
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its matrix: bilinear, reflecting at the borders."""
    b, _, h, w = x.shape
    grid = F.affine_grid(theta.to(x.dtype), [b, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_color(x: torch.Tensor, brightness: float, contrast: float,
                 g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    if contrast:
        c = _uniform(b, 1 - contrast, 1 + contrast, g, x.device)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean
    if brightness:
        x = x + _uniform(b, -brightness, brightness, g, x.device)[:, None, None, None] * 255
    return x.clamp(0, 255)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Apply cfg to a (B, 3, H, W) float batch in 0..255 (as from to_float)."""
    b, _, h, w = x.shape
    dev = x.device
    if cfg.geometric:
        # One resampling for everything geometric; the flip rides along in the matrix.
        flips = flip_mask(b, g, dev) if cfg.flip else None
        angles = _uniform(b, -cfg.rotation, cfg.rotation, g, dev) * 2 * math.pi \
            if cfg.rotation else None
        scales = _uniform(b, 1 - cfg.zoom, 1 + cfg.zoom, g, dev) if cfg.zoom else None
        shifts = (torch.rand(b, 2, generator=g, device=dev) * 2 - 1) * cfg.translate \
            if cfg.translate else None
        x = warp(x, affine_matrices(b, h, w, angles, scales,
                                    shifts, flips, device=dev))
    elif cfg.flip:
        x = random_flip(x, g)
    if cfg.brightness or cfg.contrast:
        x = random_color(x, cfg.brightness, cfg.contrast, g)
    return x
