"""Seeded train/validation split of a DatasetIndex.

Owns the three ways to choose validation images:
- "stratified" (default): each class split in the same proportion, so a small class is
  never missing from validation;
- "keras": exactly the files `keras.utils.image_dataset_from_directory(..., validation_split,
  subset="both", seed)` puts in each subset, so results compare with the Keras tutorial;
- an explicit validation folder, scanned on its own (`split_with_val_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.scan import DatasetIndex

SPLIT_METHODS = ("stratified", "keras")


@dataclass
class Split:
    train: DatasetIndex
    val: DatasetIndex
    method: str
    seed: int
    val_fraction: float


def split_index(index: DatasetIndex, val_fraction: float = 0.2, seed: int = 1337,
                method: str = "stratified") -> Split:
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {val_fraction}")
    if method == "stratified":
        train_pos, val_pos = _stratified(index.labels, val_fraction, seed)
    elif method == "keras":
        train_pos, val_pos = _keras(index, val_fraction, seed)
    else:
        raise UserError(f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}")
    if not train_pos or not val_pos:
        raise UserError(f"{len(index.samples)} images are too few to split with --val-split "
                        f"{val_fraction}: one subset would be empty")
    return Split(index.subset(train_pos), index.subset(val_pos), method, seed, val_fraction)


def _stratified(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels_arr):
        pos = np.flatnonzero(labels_arr == c)
        rng.shuffle(pos)
        # Round to nearest, but keep one image on each side when the class has two or more.
        n_val = int(round(val_fraction * len(pos)))
        if len(pos) >= 2:
            n_val = min(max(n_val, 1), len(pos) - 1)
        val.extend(pos[:n_val].tolist())
        train.extend(pos[n_val:].tolist())
    return sorted(train), sorted(val)


def keras_order(index: DatasetIndex) -> list[int]:
    """Positions of index.samples in the order Keras's index_directory lists files.

    Keras walks each class folder with sorted(os.walk(class_dir), key=dirpath) and sorted file
    names per folder, classes in sorted order; comparing (folder, file name) reproduces it.
    """
    def key(i: int):
        s = index.samples[i]
        folder, name = os.path.split(s.path)
        return (s.label, folder, name)

    return sorted(range(len(index.samples)), key=key)


def _keras(index: DatasetIndex, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.asarray(keras_order(index))
    # Keras shuffles paths and labels with two RandomState(seed) generators, i.e. by one
    # permutation that depends only on the length; then the *last* int(f * n) are validation.
    np.random.RandomState(seed).shuffle(order)
    n_val = int(val_fraction * len(order))
    if n_val == 0:
        return order.tolist(), []
    return order[:-n_val].tolist(), order[-n_val:].tolist()


def split_with_val_dir(train: DatasetIndex, val: DatasetIndex) -> Split:
    """Use a separately scanned validation folder; its classes must match the training ones."""
    if val.class_names != train.class_names:
        raise UserError(f"validation folder {display(val.root)} has classes "
                        f"{val.class_names}, the training folder {display(train.root)} has "
                        f"{train.class_names}; they must be the same")
    return Split(train, val, "val-dir", 0, len(val.samples) / (len(train.samples) + len(val.samples)))
