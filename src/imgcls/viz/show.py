"""`imgcls show`: look at what training will see, before training.

Owns the tutorial's two first figures: the first 9 training images with their class names,
and 9 augmentations of one image. Images are prepared with the run's preprocess spec and in
its epoch-0 order (api.show_batch resolves the run's settings), without building a cache.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from imgcls.data.augment import AugmentConfig, augment_batch, to_float
from imgcls.data.index import DatasetIndex
from imgcls.data.loader import epoch_order
from imgcls.data.preprocess import ImageError, PreprocessSpec, load_image
from imgcls.fsutil import display
from imgcls.viz.plots import image_grid


def first_training_images(index: DatasetIndex, train: DatasetIndex, spec: PreprocessSpec,
                          seed: int, n: int = 9, passes: int = 1
                          ) -> list[tuple[np.ndarray, str, str]]:
    """(pixels, class name, path) of the first n images of training epoch 0, in the order
    the loader gives them (`passes` whole passes over a small set an epoch: another order)."""
    position = {s.path: i for i, s in enumerate(index.samples)}
    order = epoch_order(np.array([position[s.path] for s in train.samples]), seed, 0,
                        passes=passes)
    out = []
    for pos in order:
        s = index.samples[int(pos)]
        try:
            out.append((load_image(index.abspath(s), spec), index.class_names[s.label], s.path))
        except ImageError:
            continue  # changed since the scan; the cache would leave it out too
        if len(out) == n:
            break
    return out


def samples_figure(items, path: str | os.PathLike | None = None):
    return image_grid([a for a, _, _ in items], [c for _, c, _ in items], path)


def augment_figure(pixels: np.ndarray, cfg: AugmentConfig, seed: int,
                   path: str | os.PathLike | None = None, label: str = "", n: int = 9):
    x = to_float(torch.from_numpy(np.repeat(pixels[None], n, axis=0)))
    g = torch.Generator().manual_seed(seed)
    out = augment_batch(x, cfg, g).round().clamp(0, 255).to(torch.uint8)
    imgs = [img.permute(1, 2, 0).numpy() for img in out]
    return image_grid(imgs, [f"{label} #{i + 1}".strip() for i in range(n)], path,
               title=f"{n} augmentations ({display(label)})" if label else None)
