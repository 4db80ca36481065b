"""cli: the rough edges a new user meets get one true line each (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import images
from imgcls.cli import main


def cli(*args):
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    data = images.two_class_tree(base / "data", 10, 40, classes=("cat", "dog", "fox"))
    return data, images.train_tiny(data, base / "run", "--epochs", "1")


def test_a_run_folder_must_be_a_folder_outside_the_data(trained, tmp_path):
    data, _ = trained
    for out, words in ((data / "cat" / "cat.1.jpg", "existing file"),
                       (data / "runs", "inside the data folder")):
        res = cli("train", data, "--out", out, "--epochs", "1")
        errs = images.error_lines(res.stderr)
        assert res.returncode == 2 and len(errs) == 1 and words in errs[0], res.stderr
    assert not (data / "runs").exists()


def test_help_texts_are_true(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "94.30% cat" in out and "%%" not in out
    assert main(["summary", "--list"]) == 0
    assert "xception" in capsys.readouterr().out.split()


def test_predict_names_every_file_when_several_were_asked(trained, tmp_path, capsys):
    data, run = trained
    good = data / "cat" / "cat.0.jpg"
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "missing.jpg"), str(good)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{good}: ")


def test_top_k_is_at_least_one_and_capped(trained, capsys):
    data, run = trained
    good = str(data / "fox" / "fox.0.jpg")
    for k in ("0", "-3"):
        assert main(["predict", str(run), good, "--top-k", k]) == 2
        assert "--top-k: must be at least 1" in capsys.readouterr().err
    assert main(["predict", str(run), good, "--top-k", "50"]) == 0
    assert capsys.readouterr().out.count("%") == 3  # three classes, not 50


def test_predict_has_the_same_pixel_guard_as_everything_else(trained, capsys):
    data, run = trained
    good = str(data / "cat" / "cat.0.jpg")
    assert main(["predict", str(run), good, "--max-pixels", "100"]) == 1
    assert "limit" in capsys.readouterr().err
    assert main(["predict", str(run), good]) == 0


def test_evaluate_on_some_of_the_classes(trained, tmp_path, capsys):
    data, run = trained
    import shutil

    shutil.copytree(data / "fox", tmp_path / "few" / "fox")
    capsys.readouterr()
    assert main(["evaluate", str(run), str(tmp_path / "few"), "--json", "--no-figures"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the run trained on some of these very photos: scored apart, never mixed in
    assert report["images"] + report["in_training"] == 10 and report["in_training"] > 0
    assert report["per_class"]["fox"]["support"] == report["images"]
    assert report["per_class"]["cat"]["support"] == 0


def test_train_says_what_the_scan_left_out(tmp_path):
    data = images.two_class_tree(tmp_path / "d", 8, 40)
    (data / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    res = cli("train", data, "--out", tmp_path / "run", "--epochs", "1", "--preset",
              "tutorial", "--model", "xception-tiny", "--image-size", "32", "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    assert "1 broken file left out" in res.stderr and f"imgcls scan {data}" in res.stderr


def test_an_empty_class_folder_prints_the_report_then_the_error(tmp_path, capsys):
    data = images.two_class_tree(tmp_path / "d", 3, 40)
    (data / "emu").mkdir()
    (data / "emu" / "broken.jpg").write_bytes(b"")
    assert main(["scan", str(data)]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("Found 6 files") and "emu/broken.jpg: empty file" in captured.out
    assert "has no usable image" in captured.err
    assert main(["scan", str(data), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["per_class"]["emu"] == 0


def test_a_file_deleted_during_the_scan_is_not_called_a_link(tmp_path):
    from imgcls.scan import check_file

    gone = tmp_path / "gone.jpg"
    status, reason, *_ = check_file(str(gone), True, 10**8, 4)
    assert status == "rejected" and reason == "unreadable: vanished during the scan"
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "link.jpg")
    assert check_file(str(tmp_path / "link.jpg"), True, 10**8, 4)[1] == "unreadable: broken symlink"


def test_a_device_imgcls_cannot_use_is_one_line(trained, capsys):
    data, run = trained
    good = str(data / "cat" / "cat.0.jpg")
    assert main(["predict", str(run), good, "--device", "tpu"]) == 2
    errs = images.error_lines(capsys.readouterr().err)
    assert len(errs) == 1 and "not a device imgcls can use" in errs[0]
