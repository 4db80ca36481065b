"""cli: the rough edges a new user meets get one true line each (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import images
import pytest

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
    # train's help quotes the defaults and the presets' values as they are (it said the cpu
    # preset's epochs-shrink was 0.25 after the preset moved to 0.40).
    from imgcls.config import PRESETS, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    cpu, base = PRESETS["cpu"], TrainConfig()
    for text in (f"cpu preset {cpu['epochs_shrink']:g};", f"cpu preset {cpu['epoch_images']})",
                 f"(default {base.image_size})", f"(default {base.batch_size};",
                 f"finetune: {PRESETS['finetune']['layer_lr_decay']:g})"):
        assert text in out, text


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
    from imgcls.data.scan import check_file

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


# ----------------------------------------------------------------------------- every mistake

def _mistakes(data, run, tmp):
    """(argv, words): each a mistake a user made on old main that ended in a traceback or a
    misleading line; each must now be one `imgcls: error:` line naming the problem."""
    photo = str(data / "cat" / "cat.0.jpg")
    tiny = ["--preset", "tutorial", "--model", "xception-tiny", "--epochs", "1"]
    bad_cfg = {}
    for name, content in (("lr", '{"lr": "fast"}'), ("bs", '{"batch_size": "8"}'),
                          ("size", '{"image_size": [40, 32]}'), ("seed", '{"seed": 3.5}'),
                          ("list", "[1, 2]"), ("bool", '{"batch_size": true}')):
        bad_cfg[name] = tmp / f"{name}.json"
        bad_cfg[name].write_text(content)
    out = str(tmp / "new-run")
    return [
        (["predict", run, photo, "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["evaluate", run, "--batch-size", "-3"], "--batch-size: must be at least 1"),
        (["train", data, "--out", out, "--weight-decay", "-1", *tiny], "weight decay must be >= 0"),
        (["train", data, "--out", out, "--seed", "-1", *tiny], "seed must be >= 0"),
        (["train", data, "--out", out, "--batch-size", "1", "--image-size", "32", *tiny],
         "batch size must be at least 2"),
        (["train", data, "--out", out, "--micro-batch", "1", "--image-size", "32", *tiny],
         "micro batch must be 0 (automatic) or at least 2"),
        (["train", data, "--out", out, "--image-size", "100000", *tiny], "image size must be 1 to 2048"),
        (["train", data, "--out", "/proc/x", *tiny], "cannot write the run folder /proc/x"),
        (["train", data, "--out", f"{run}/best.safetensors/x", *tiny], "Not a directory"),
        (["scan", data, "--workers", "-1"], "--workers: must be at least 0"),
        (["train", data, "--out", out, "--config", bad_cfg["lr"], *tiny], "lr must be a number"),
        (["train", data, "--out", out, "--config", bad_cfg["bs"], *tiny], "batch-size must be a whole number"),
        (["train", data, "--out", out, "--config", bad_cfg["size"], *tiny], "image-size must be a whole number"),
        (["train", data, "--out", out, "--config", bad_cfg["seed"], *tiny], "seed must be a whole number"),
        (["train", data, "--out", out, "--config", bad_cfg["list"], *tiny], "not a list"),
        (["train", data, "--out", out, "--config", bad_cfg["bool"], *tiny], "not True (bool)"),
        (["scan", data, "--max-pixels", "-1"], "--max-pixels: must be at least 0"),
        (["predict", run, photo, "--max-pixels", "-5"], "--max-pixels: must be at least 0"),
        (["serve", run, "--max-upload-mb", "-1"], "--max-upload-mb: must be at least"),
        (["serve", run, "--max-files", "0"], "--max-files: must be at least 1"),
        (["train", "--resume", run, "--out", tmp / "other"], "a resumed run continues in its own folder"),
        (["train", data, "--epochs", "x"], "--epochs: invalid int value: 'x'"),
        (["predict"], "the following arguments are required"),
    ]


def test_every_listed_mistake_is_one_line_with_exit_2(trained, tmp_path, capsys):
    data, run = trained
    for argv, words in _mistakes(data, run, tmp_path):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        errs = images.error_lines(err)
        assert rc == 2 and len(errs) == 1 and words in errs[0], (argv, rc, err)
        assert not (tmp_path / "new-run").exists(), argv  # nothing left behind
        assert not (tmp_path / "other").exists(), argv


def test_max_pixels_zero_means_no_limit_everywhere(trained, capsys):
    data, run = trained
    assert main(["scan", str(data), "--max-pixels", "0"]) == 0
    assert "Found 30 files" in capsys.readouterr().out
    assert main(["predict", str(run), str(data / "cat" / "cat.0.jpg"), "--max-pixels", "0"]) == 0
    for cmd in ("scan", "train", "predict", "serve"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "0 = no limit" in capsys.readouterr().out, cmd


def test_the_api_refuses_or_takes_every_input_kind(trained):
    import numpy as np
    import torch

    import imgcls

    data, run = trained
    model = imgcls.load(run)
    photo = data / "cat" / "cat.0.jpg"
    want = model.probabilities(photo)
    assert np.allclose(model.probabilities(photo.read_bytes()), want, atol=1e-4)
    arr = np.asarray(__import__("PIL.Image").Image.open(photo).convert("RGB"))
    assert np.allclose(model.probabilities(torch.from_numpy(arr.copy()).permute(2, 0, 1)),
                       want, atol=1e-4)
    # Batches: (N, H, W, 3) arrays and PyTorch's (N, C, H, W) layout (old main refused the
    # tensor batch, naming only array shapes).
    # Each is compared with the same two photos given as a list: the same batch of 2, so the
    # same computation (a batch of 1 may take other kernels, and bf16 rounds differently).
    pair = model.probabilities([arr, arr[:, ::-1]])
    assert pair.shape == (2, len(model.class_names))
    assert np.allclose(model.probabilities(np.stack([arr, arr[:, ::-1]])), pair, atol=1e-6)
    chw = torch.from_numpy(np.stack([arr, arr[:, ::-1]]).copy()).permute(0, 3, 1, 2)
    assert np.allclose(model.probabilities(chw), pair, atol=1e-6)
    with pytest.raises(imgcls.UserError, match=r"\(C, H, W\)"):
        model.probabilities(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(imgcls.UserError, match="an empty array"):
        model.probabilities(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(imgcls.UserError, match="NoneType is not an image"):
        model.predict(None)


def test_evaluate_finds_a_moved_data_folder(trained, tmp_path, capsys):
    """Old main: a moved data folder made `evaluate RUN` impossible (no way to say where)."""
    import shutil

    data, run = trained
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tmp_path / "nowhere"), "--no-figures"]) == 2
    assert main(["evaluate", str(run), "--data", str(moved), "--json", "--no-figures"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == json.loads((run / "data.json").read_text())["val_images"]
    assert report["data"] == str(moved.resolve())


def test_evaluate_says_the_runs_data_folder_is_gone(tmp_path, capsys):
    """Old main: 'DATA: no such folder', naming neither the run it came from nor --data."""
    data = images.two_class_tree(tmp_path / "data", 6, 40)
    run = images.train_tiny(data, tmp_path / "run", "--epochs", "1")
    data.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoints" / "epoch_001.safetensors"),
                 "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone" in err[0] and "--data DIR" in err[0]
