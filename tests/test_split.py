"""split: seeded, stratified by default, Keras-identical on request, or a validation folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import images
import pytest
from keras_fixture import CASES, write_tree

from imgcls.cli import main
from imgcls.data.scan import scan
from imgcls.data.split import split_index, split_with_val_dir
from imgcls.errors import UserError

EXPECTED = json.loads((Path(__file__).parent / "data" / "keras_split.json").read_text())


def _img(path: Path, i: int) -> None:
    fmt = {".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}.get(path.suffix.lower(), "JPEG")
    images.save(path, images.pattern(8, 8, i), fmt)


@pytest.fixture
def keras_tree(tmp_path):
    return write_tree(tmp_path / "data", _img)


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: f"{c['val_split']}-{c['seed']}")
def test_keras_split_matches_real_keras(keras_tree, case):
    index = scan(keras_tree)
    sp = split_index(index, case["val_split"], case["seed"], "keras")
    assert [s.path for s in sp.train.samples] == case["train"]
    assert [s.path for s in sp.val.samples] == case["val"]


def test_committed_keras_cases_cover_the_fixture():
    assert [(c["val_split"], c["seed"]) for c in EXPECTED["cases"]] == CASES


def test_stratified_split_is_seeded_disjoint_and_proportional(keras_tree):
    index = scan(keras_tree)
    a = split_index(index, 0.3, seed=5)
    b = split_index(index, 0.3, seed=5)
    c = split_index(index, 0.3, seed=6)
    paths = lambda x: [s.path for s in x.samples]
    assert paths(a.train) == paths(b.train) and paths(a.val) == paths(b.val)
    assert paths(a.val) != paths(c.val)
    assert not set(paths(a.train)) & set(paths(a.val))
    assert sorted(paths(a.train) + paths(a.val)) == sorted(s.path for s in index.samples)
    total = Counter(index.labels)
    val = Counter(s.label for s in a.val.samples)
    for label, n in total.items():
        assert val[label] == round(0.3 * n)


def test_tiny_class_keeps_one_image_each_side(tmp_path):
    for i in range(10):
        images.jpeg(tmp_path / "d" / "big" / f"{i}.jpg", seed=i)
    for i in range(2):
        images.jpeg(tmp_path / "d" / "small" / f"{i}.jpg", seed=50 + i)
    sp = split_index(scan(tmp_path / "d"), 0.2, 1)
    assert Counter(s.label for s in sp.val.samples) == {0: 2, 1: 1}
    assert Counter(s.label for s in sp.train.samples) == {0: 8, 1: 1}


def test_val_dir_must_have_the_same_classes(tmp_path):
    for cls in ("a", "b"):
        images.jpeg(tmp_path / "train" / cls / "x.jpg", seed=ord(cls))
        images.jpeg(tmp_path / "val" / cls / "y.jpg", seed=ord(cls) + 10)
    images.jpeg(tmp_path / "other" / "a" / "y.jpg")
    images.jpeg(tmp_path / "other" / "c" / "y.jpg", seed=9)
    sp = split_with_val_dir(scan(tmp_path / "train"), scan(tmp_path / "val"))
    assert [s.path for s in sp.val.samples] == ["a/y.jpg", "b/y.jpg"]
    with pytest.raises(UserError, match="must be the same"):
        split_with_val_dir(scan(tmp_path / "train"), scan(tmp_path / "other"))


def test_split_command(keras_tree, capsys):
    assert main(["split", str(keras_tree), "--split", "keras", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["val"] == EXPECTED["cases"][0]["val"]
    assert main(["split", str(keras_tree)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Found 44 files belonging to 3 classes.", "Using 35 files for training.",
        "Using 9 files for validation."]
    assert main(["split", str(keras_tree), "--val-split", "1.5"]) == 2
    assert "--val-split: must be from 0.001 to 0.999" in capsys.readouterr().err


def test_identical_copies_stay_on_one_side_of_the_split(tmp_path, capsys):
    import shutil

    root = tmp_path / "d"
    for cls in ("a", "b"):
        for i in range(10):
            images.jpeg(root / cls / f"{i}.jpg", seed=100 * len(cls) + i + (50 if cls == "b" else 0))
    for i in range(4):  # four photos with two more copies each, in the same class
        for k in (1, 2):
            shutil.copyfile(root / "a" / f"{i}.jpg", root / "a" / f"{i}_copy{k}.jpg")
    index = scan(root)
    for method in ("stratified", "keras"):
        for seed in range(6):
            sp = split_index(index, 0.3, seed, method)
            val = {s.digest for s in sp.val.samples}
            assert not val & {s.digest for s in sp.train.samples}, (method, seed)
    assert split_index(index, 0.3, 1).groups_kept_together == 4
    assert main(["split", str(root)]) == 0
    assert "Kept 4 groups of byte-identical files on one side" in capsys.readouterr().out


def test_a_val_dir_photo_that_is_also_a_training_photo_is_left_out(tmp_path):
    import shutil

    for cls in ("a", "b"):
        for i in range(3):
            images.jpeg(tmp_path / "train" / cls / f"{i}.jpg", seed=10 * ord(cls) + i)
            images.jpeg(tmp_path / "val" / cls / f"v{i}.jpg", seed=10 * ord(cls) + i + 5)
    shutil.copyfile(tmp_path / "train" / "a" / "0.jpg", tmp_path / "val" / "a" / "leak.jpg")
    sp = split_with_val_dir(scan(tmp_path / "train"), scan(tmp_path / "val"))
    assert "a/leak.jpg" not in [s.path for s in sp.val.samples] and len(sp.val.samples) == 6
    assert sp.notes and "a/leak.jpg" in sp.notes[0]
