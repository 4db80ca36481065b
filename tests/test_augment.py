"""augment: seeded, exact flip, identity at zero, real rotation, inactive pieces are no-ops."""

from __future__ import annotations

import math

import images
import numpy as np
import torch

from imgcls.data.augment import (
    AugmentConfig,
    affine_matrices,
    augment_batch,
    random_flip,
    to_float,
    warp,
)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Each image turned by its angle (radians) through augment's own resampling."""
    b, _, h, w = x.shape
    return warp(x, affine_matrices(b, h, w, angles=angles))


def batch(n=8, h=20, w=28):
    arr = np.stack([images.pattern(w, h, s) for s in range(n)])
    return to_float(torch.from_numpy(arr))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_to_float_is_nchw_channels_last_with_the_same_values():
    u8 = torch.from_numpy(np.stack([images.pattern(28, 20, 1)]))
    x = to_float(u8)
    assert x.shape == (1, 3, 20, 28) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[0, 1], u8[0, :, :, 1].float())


def test_flip_is_an_exact_mirror_of_some_images_and_leaves_the_rest():
    x = batch(16)
    y = random_flip(x, gen(0))
    flipped = [i for i in range(16) if torch.equal(y[i], x[i].flip(-1))]
    kept = [i for i in range(16) if torch.equal(y[i], x[i])]
    assert sorted(flipped + kept) == list(range(16))
    assert 0 < len(flipped) < 16


def test_rotation_by_zero_is_the_identity():
    x = batch(4)
    assert torch.allclose(rotate(x, torch.zeros(4)), x, atol=1e-3)
    # Nothing geometric asked for: the batch is not resampled at all.
    assert augment_batch(x, AugmentConfig(flip=False, rotation=0.0), gen(0)) is x


def test_rotation_by_a_half_turn_is_a_point_reflection():
    x = batch(2, 20, 20)
    y = rotate(x, torch.full((2,), math.pi))
    assert torch.allclose(y, x.flip(-1).flip(-2), atol=1e-2)


def test_quarter_turn_rotates_counter_clockwise():
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 15:] = 255  # a bar pointing right from the centre
    y = rotate(x, torch.tensor([math.pi / 2]))
    assert y[0, 0, :6, 10].mean() > 200  # now points up
    assert y[0, 0, 10, 15:].mean() < 30


def test_same_seed_same_augmentation_different_seed_different():
    cfg = AugmentConfig(flip=True, rotation=0.1, zoom=0.1, translate=0.1, brightness=0.1,
                        contrast=0.1)
    x = batch(6)
    a, b, c = (augment_batch(x, cfg, gen(s)) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert not torch.equal(a, x)


def test_rotation_angles_respect_the_factor():
    # A small factor barely moves a smooth image; a large one moves it a lot.
    x = batch(8, 32, 32)
    small = augment_batch(x, AugmentConfig(flip=False, rotation=0.005), gen(1))
    large = augment_batch(x, AugmentConfig(flip=False, rotation=0.25), gen(1))
    assert (small - x).abs().mean() < (large - x).abs().mean() / 3


def test_flip_only_config_is_exact_and_nothing_active_is_identity():
    x = batch(8)
    y = augment_batch(x, AugmentConfig(flip=True, rotation=0.0), gen(2))
    assert all(torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1)) for i in range(8))
    off = AugmentConfig(flip=False, rotation=0.0)
    assert not off.active and torch.equal(augment_batch(x, off, gen(2)), x)
