"""show: the two tutorial figures are real pictures of the training images."""

from __future__ import annotations

import images
import numpy as np
from PIL import Image

from imgcls.cli import main


def make_tree(root):
    for i in range(12):
        images.jpeg(root / ("cat" if i % 2 else "dog") / f"{i}.jpg", w=50, h=40, seed=i)
    return root


def assert_real_picture(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img.reshape(-1, 3).std(axis=0).max() > 20  # not one colour


def test_show_samples_and_augmentations(tmp_path, capsys):
    root = make_tree(tmp_path / "data")
    out = tmp_path / "samples.png"
    assert main(["show", str(root), "-o", str(out), "--image-size", "48"]) == 0
    assert_real_picture(out)
    aug = tmp_path / "aug.png"
    assert main(["show", str(root), "-o", str(aug), "--augment", "--image-size", "48"]) == 0
    assert_real_picture(aug)
    assert "Wrote" in capsys.readouterr().out
