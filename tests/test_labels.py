"""labels: classes from file names (Kaggle's flat cat.0.jpg layout) and from CSV files, with
every problem row reported, and the whole job (scan, train, resume, evaluate) on them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import images
import pytest
from clirun import run as cli

from imgcls.cli import main
from imgcls.data.scan import ScanOptions, scan
from imgcls.errors import UserError

TINY = ["--preset", "tutorial", "--model", "xception-tiny", "--image-size", "32"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
KAGGLE = r"name:^(cat|dog)\."


@pytest.fixture
def flat(tmp_path):
    """Kaggle's own layout: one flat folder of cat.N.jpg and dog.N.jpg."""
    root = tmp_path / "train"
    root.mkdir()
    source = next((d for d in (SHARED / "catsdogs25k", SHARED / "catsdogs" / "train")
                   if (d / "cats").is_dir()), None)
    if source is not None:  # real Kaggle photos, linked under Kaggle's flat names
        for cls, name in (("cats", "cat"), ("dogs", "dog")):
            for i, src in enumerate(sorted((source / cls).iterdir())[:12]):
                os.symlink(src, root / f"{name}.{i}.jpg")
    else:  # without the shared set: photos of our own, the same names
        for i in range(12):
            images.jpeg(root / f"cat.{i}.jpg", seed=i)
            images.jpeg(root / f"dog.{i}.jpg", seed=100 + i)
    (root / "readme.txt").write_text("Kaggle's Dogs vs. Cats\n")
    images.jpeg(root / "unknown.jpg", seed=999)
    return root


def test_labels_from_kaggle_file_names(flat, capsys):
    index = scan(flat, ScanOptions(labels=KAGGLE))
    assert index.class_names == ["cat", "dog"] and index.per_class() == {"cat": 12, "dog": 12}
    assert all(os.path.basename(s.path).startswith(index.class_names[s.label]) for s in index.samples)
    ignored = {n.path: n.reason for n in index.ignored}
    assert "no label in the file name" in ignored["unknown.jpg"]
    assert main(["scan", str(flat), "--labels", KAGGLE]) == 0
    out = capsys.readouterr().out
    assert "Found 24 files belonging to 2 classes." in out and "1 file names without a label" in out
    with pytest.raises(UserError, match="not a regular expression"):
        scan(flat, ScanOptions(labels="name:(cat"))


def test_train_resume_and_evaluate_with_labels_from_names(flat, tmp_path):
    run = tmp_path / "run"
    images.train_tiny(flat, run, "--epochs", "1", "--labels", KAGGLE)
    assert json.loads((run / "config.json").read_text())["labels"] == KAGGLE
    res = cli("train", "--resume", run, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    res = cli("evaluate", run, "--json", "--no-figures")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["class_names"] == ["cat", "dog"]
    assert report["images"] == json.loads((run / "data.json").read_text())["val_images"]


def test_labels_from_a_csv_with_every_kind_of_bad_row(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(8):
        images.jpeg(root / "img" / f"a{i}.jpg", seed=i)
        images.jpeg(root / "img" / f"b{i}.jpg", seed=50 + i)
    images.jpeg(root / "img" / "unlisted.jpg", seed=77)
    (root / "img" / "broken.jpg").write_bytes(b"")
    rows = ["file_name,notes,label"]
    rows += [f"img/a{i}.jpg,x,ant" for i in range(8)] + [f"img/b{i}.jpg,y,bee" for i in range(8)]
    rows += ["img/broken.jpg,,ant", "img/gone.jpg,,ant", "img/a0.jpg,,bee", "img/b1.jpg,,"]
    labels = root / "labels.csv"  # inside the data folder, as Kaggle ships it
    labels.write_text("\n".join(rows) + "\n")
    doc_rc = main(["scan", str(root), "--labels", f"csv:{labels}", "--json"])
    assert doc_rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == ["ant", "bee"]
    assert doc["per_class"] == {"ant": 7, "bee": 8}  # a0 is in two classes: out
    p = doc["label_problems"]
    assert p["rows naming missing files"] == ["line 19: img/gone.jpg"]
    assert p["files listed twice with different labels"] == ["img/a0.jpg (ant, bee)"]
    assert p["empty labels"] == ["line 21 (img/b1.jpg)"]
    assert p["files present but not listed"] == ["img/unlisted.jpg"]
    rejected = {r["path"]: r["reason"] for r in doc["rejected"]}
    assert rejected["img/broken.jpg"] == "empty file (0 bytes)" and "two different labels" in rejected["img/a0.jpg"]
    assert main(["scan", str(root), "--labels", f"csv:{labels}"]) == 0
    out = capsys.readouterr().out
    assert "1 rows naming missing files: line 19: img/gone.jpg" in out
    # Named columns, and ids without their extension (as Kaggle competitions write them).
    ids = root / "ids.csv"
    ids.write_text("id,breed\n" + "".join(f"img/a{i},ant\nimg/b{i},bee\n" for i in range(8)))
    index = scan(root, ScanOptions(labels=f"csv:{ids}:id,breed"))
    assert index.per_class() == {"ant": 8, "bee": 8}


def test_csv_paths_are_resolved_and_those_leaving_the_folder_refused(tmp_path, capsys):
    """Old main stripped `./` character by character: `../outside.jpg` labelled
    DATA/outside.jpg and `/etc/passwd.jpg` DATA/etc/passwd.jpg."""
    root = tmp_path / "data"
    for i in range(4):
        images.jpeg(root / f"a{i}.jpg", seed=i)
        images.jpeg(root / f"b{i}.jpg", seed=50 + i)
    images.jpeg(root / "outside.jpg", seed=90)  # same names as the rows that leave the folder
    images.jpeg(root / "etc" / "passwd.jpg", seed=91)
    images.jpeg(root / "c0.jpg", seed=92)
    images.jpeg(tmp_path / "outside.jpg", seed=93)
    rows = ["path,label"] + [f"./a{i}.jpg,ant" for i in range(4)]
    rows += [f"sub/../b{i}.jpg,bee" for i in range(3)] + [f"{root / 'b3.jpg'},bee"]
    rows += ["../outside.jpg,ant", "/etc/passwd.jpg,bee", "c0.jpg,"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    index = scan(root, ScanOptions(labels=f"csv:{tmp_path / 'labels.csv'}"))
    labelled = {s.path: index.class_names[s.label] for s in index.samples}
    assert labelled == {**{f"a{i}.jpg": "ant" for i in range(4)},
                        **{f"b{i}.jpg": "bee" for i in range(4)}}
    outside = index.label_problems["rows naming files outside the data folder"]
    assert outside == ["line 10: ../outside.jpg", "line 11: /etc/passwd.jpg"]
    reasons = {n.path: n.reason for n in index.ignored}
    assert reasons["c0.jpg"] == "its row in labels.csv has an empty label"
    assert reasons["outside.jpg"] == "not listed in labels.csv"


def test_train_prints_what_scan_reports_about_labels(flat, tmp_path):
    """Old main: train said nothing of unlabelled files, bad rows or listed-twice files."""
    images.jpeg(flat / "Cat.7.jpg", seed=7)  # a capital: the rule does not match it
    res = cli("train", flat, "--out", tmp_path / "run", "--labels", KAGGLE, "--epochs", "1",
              *TINY, "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    assert "file names without a label: Cat.7.jpg, unknown.jpg" in res.stderr
    root = tmp_path / "data"
    for i in range(6):
        images.jpeg(root / f"a{i}.jpg", seed=i)
        images.jpeg(root / f"b{i}.jpg", seed=50 + i)
    rows = ["path,label"] + [f"a{i}.jpg,ant" for i in range(6)] + \
        [f"b{i}.jpg,bee" for i in range(6)] + ["a0.jpg,bee", "gone.jpg,ant"]
    (tmp_path / "l.csv").write_text("\n".join(rows) + "\n")
    res = cli("train", root, "--out", tmp_path / "run2", "--labels", f"csv:{tmp_path / 'l.csv'}",
              "--epochs", "1", *TINY, "--batch-size", "4")
    assert res.returncode == 0, res.stderr
    assert "1 rows naming missing files: line 15: gone.jpg" in res.stderr
    assert "1 files listed twice with different labels: a0.jpg (ant, bee)" in res.stderr
    assert "broken file" not in res.stderr  # a conflict is no broken file


def test_classes_that_differ_only_in_case_are_named(tmp_path):
    root = tmp_path / "flat"
    for i in range(6):
        images.jpeg(root / f"cat.{i}.jpg", seed=i)
        images.jpeg(root / f"dog.{i}.jpg", seed=50 + i)
    images.jpeg(root / "Cat.9.jpg", seed=9)
    res = cli("train", root, "--out", tmp_path / "run", "--labels", r"name:^([A-Za-z]+)\.",
              "--epochs", "1", *TINY, "--batch-size", "4")
    assert "classes 'Cat' and 'cat' differ only in case" in res.stderr
    assert "Cat (1) has fewer than the 5 photos" in res.stderr


def test_file_name_labels_walk_with_the_same_link_policy_as_class_folders(tmp_path):
    """One walker (data/files.py) for every label source: a link that would give a photo
    of the folder a second name is not followed; a link to a photo outside is."""
    root = tmp_path / "flat"
    for i in range(4):
        images.jpeg(root / f"cat.{i}.jpg", seed=i)
        images.jpeg(root / f"dog.{i}.jpg", seed=50 + i)
    outside = images.jpeg(tmp_path / "elsewhere" / "x.jpg", seed=99)
    (root / "more").mkdir()
    os.symlink(root / "cat.0.jpg", root / "more" / "dog.9.jpg")  # a cat, relabelled as a dog
    os.symlink(outside, root / "more" / "cat.7.jpg")
    index = scan(root, ScanOptions(labels=KAGGLE))
    paths = {s.path for s in index.samples}
    assert "more/dog.9.jpg" not in paths and "more/cat.7.jpg" in paths
    why = {n.path: n.reason for n in index.ignored}["more/dog.9.jpg"]
    assert "inside the data folder: not followed" in why
