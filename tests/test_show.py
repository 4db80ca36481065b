"""show: the tutorial's two figures show what training sees: its photos, in its order, with
its pixel recipe, and its augmentation."""

from __future__ import annotations

import images
import numpy as np
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.config import resolve
from imgcls.data.cache import build_cache
from imgcls.data.loader import BatchLoader
from imgcls.data.preprocess import PreprocessSpec
from imgcls.train.plan import epoch_passes
from imgcls.train.prepare import scan_and_split


def make_tree(root):
    for i in range(12):
        images.jpeg(root / ("cat" if i % 2 else "dog") / f"{i}.jpg", w=50, h=40, seed=i)
    return root


def assert_real_picture(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img.reshape(-1, 3).std(axis=0).max() > 20  # not one colour


def shown(fig) -> list[tuple[str, np.ndarray]]:
    """(title, pixels) of each panel of a figure from viz.plots.image_grid."""
    return [(ax.get_title(), np.asarray(ax.get_images()[0].get_array()))
            for ax in fig.axes if ax.get_images()]


def test_show_draws_the_first_batch_training_sees(tmp_path, capsys):
    """The cpu recipe passes 12 photos many times an epoch (--epoch-images), which orders
    them otherwise than one pass (old main drew the one-pass order, at 180 px)."""
    import imgcls

    root = make_tree(tmp_path / "data")
    out = tmp_path / "samples.png"
    assert main(["show", str(root), "-o", str(out), "--preset", "cpu"]) == 0
    assert_real_picture(out)
    fig = imgcls.show_batch(root, preset="cpu")
    cfg = resolve({"data_dir": str(root)}, "cpu")
    index, _, sp = scan_and_split(cfg)
    spec = PreprocessSpec(cfg.image_size, cfg.image_size, resize=cfg.resize)
    cache = build_cache(index, spec, str(tmp_path / "cache"))
    rows = cache.rows_for([s.path for s in sp.train.samples])
    passes = epoch_passes(cfg.epoch_images, len(rows))
    assert passes > 1
    loader = BatchLoader(cache, rows, 9, seed=cfg.seed, passes=passes)
    loader.set_epoch(0)
    first = next(iter(loader))
    want = [(cache.class_names[int(cache.labels[r])], first.images[i].numpy())
            for i, r in enumerate(first.rows)]
    got = shown(fig)
    assert [t for t, _ in got] == [c for c, _ in want]
    assert all(np.array_equal(g, w) for (_, g), (_, w) in zip(got, want))
    assert got[0][1].shape == (cfg.image_size, cfg.image_size, 3)


def test_show_augmentations_follow_the_recipe(tmp_path):
    import imgcls

    root = make_tree(tmp_path / "data")
    aug = tmp_path / "aug.png"
    assert main(["show", str(root), "-o", str(aug), "--augment", "--image-size", "48"]) == 0
    assert_real_picture(aug)
    still = shown(imgcls.show_batch(root, augment=True, image_size=48, flip=False,
                                    rotation=0.0, preset="tutorial"))
    moved = shown(imgcls.show_batch(root, augment=True, image_size=48, preset="tutorial"))
    # No augmentation: nine copies of the photo. The tutorial's flip and rotation: not.
    assert all(np.array_equal(p, still[0][1]) for _, p in still)
    assert sum(not np.array_equal(p, still[0][1]) for _, p in moved) >= 6
    assert torch.tensor(still[0][1]).shape == (48, 48, 3)
