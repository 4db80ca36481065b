"""train: learns, writes a complete run folder, resumes bit-exactly, survives kills and
full disks, and refuses bad input with one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import images
import pytest
import torch
from clirun import run as cli

from imgcls.checkpoint import load_checkpoint
from imgcls.cli import main

TINY = ["--model", "xception-tiny", "--image-size", "32", "--batch-size", "8", "--lr", "3e-3",
        "--threads", "2", "--seed", "3", "--preset", "tutorial"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return images.two_class_tree(tmp_path_factory.mktemp("train") / "data", 24, 40)


def process(*args, timeout=300):
    """`python -m imgcls` in a process of its own: for runs compared bit for bit with
    another process's, and beside kills and signals (`cli` runs in this process)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def weights(path):
    return load_checkpoint(path, train_state=False).weights


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_learns_and_writes_the_run_folder(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "6", *TINY]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["Found 48 files belonging to 2 classes.", "Using 38 files for training.",
                       "Using 10 files for validation."]
    assert sum(line.startswith("Epoch ") for line in out) == 6
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert max(h["val_accuracy"] for h in history) >= 0.8
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f"epoch_{i:03d}.safetensors" for i in range(1, 7)]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 6 and cfg["model"] == "xception-tiny" and cfg["seed"] == 3
    best = load_checkpoint(run / "best.safetensors")
    assert not best.resumable and best.meta["class_names"] == ["cat", "dog"]
    assert best.meta["metrics"]["val_accuracy"] == max(h["val_accuracy"] for h in history)
    assert all(0 < h["val_seconds"] < h["seconds"] for h in history)  # validation's share
    assert load_checkpoint(run / "last.safetensors").meta["epoch"] == 6
    assert json.loads((run / "data.json").read_text())["train_images"] == 38
    # The same curves for TensorBoard (`tensorboard --logdir RUN`), epoch by epoch.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    for tag in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
                "resolution"):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(h["epoch"], pytest.approx(h[tag], rel=1e-6)) for h in history], tag


def test_killed_run_resumes_to_bit_identical_weights(data, tmp_path):
    # 10 epochs of 20 steps: the kill, sent within milliseconds of epoch 2's file, lands
    # seconds before the last epoch on any machine, however busy (5 epochs of 4 steps once
    # finished first).
    long = ["--epochs", "10", "--epoch-images", "160", *TINY]
    ref = tmp_path / "ref"
    assert process("train", data, "--out", ref, *long).returncode == 0

    run = tmp_path / "run"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "train", str(data), "--out", str(run),
                             *long], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "epoch_002.safetensors").exists():
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((run / "checkpoints").glob("epoch_*.safetensors")))
    assert 2 <= done < 10, "the kill came too late to test anything"
    res = process("train", "--resume", run)
    assert res.returncode == 0, res.stderr
    assert f"epoch {done + 1}" in res.stdout
    assert same_weights(ref / "last.safetensors", run / "last.safetensors")
    assert same_weights(ref / "best.safetensors", run / "best.safetensors")
    ref_hist = (ref / "metrics.jsonl").read_text().splitlines()
    run_hist = (run / "metrics.jsonl").read_text().splitlines()
    clock = ("seconds", "val_seconds", "images_per_s", "elapsed_s")
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in clock}
                           for x in lines]
    assert strip(ref_hist) == strip(run_hist)


def test_sigint_saves_a_resumable_checkpoint_mid_epoch(data, tmp_path):
    slow = ["--epochs", "3", "--batch-size", "2", "--image-size", "64", "--threads", "1",
            *TINY[:2], *TINY[6:8], *TINY[10:]]
    ref = tmp_path / "ref"
    assert process("train", data, "--out", ref, *slow).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "train", str(data), "--out", str(run),
                             *slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # metrics.jsonl appears after epoch 1's stop decision: a signal from now on lands in
    # epoch 2, which stops at its next step.
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Resume with: imgcls train --resume" in out
    last = load_checkpoint(run / "last.safetensors")
    assert last.resumable and last.meta["epoch"] == 1 and last.meta["step"] > 0, last.meta
    res = process("train", "--resume", run)
    assert res.returncode == 0, res.stderr
    assert same_weights(ref / "last.safetensors", run / "last.safetensors")
    # The interrupted epoch's loss and accuracy cover all its steps, not only those after
    # the resume: the checkpoint carried the partial sums.
    strip = lambda p: [{k: v for k, v in json.loads(x).items()
                        if k not in ("seconds", "val_seconds", "images_per_s", "elapsed_s")}
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(run) == strip(ref)


def test_a_model_stopped_before_its_first_validation_never_answers_silently(data, tmp_path):
    """Ctrl-C in epoch 1 leaves only a mid-epoch save: old main's predict answered from it
    (99.83% for one class, exit 0) though every entry point promises the best model."""
    import imgcls

    run = tmp_path / "run"
    # Long first epoch (many passes over the folder): the signal lands inside it.
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "train", str(data), "--out",
                             str(run), "--epochs", "2", "--epoch-images", "100000", *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if line.startswith("Each epoch passes"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not (run / "best.safetensors").exists() and load_checkpoint(
        run / "last.safetensors").meta["step"] > 0
    photo = next((data / "cat").iterdir())
    for argv in (["predict", run, photo], ["evaluate", run], ["export", run, "-o",
                                                               tmp_path / "m.onnx"]):
        res = cli(*argv)
        errs = images.error_lines(res.stderr)
        assert res.returncode == 2 and len(errs) == 1, (argv, res.stderr)
        assert "no validated model yet" in errs[0] and "epoch 1 step" in errs[0], errs
    with pytest.raises(imgcls.UserError, match="mid-epoch save"):
        imgcls.load(run)
    # The file itself, named: it answers, and says in one line what it is.
    res = cli("predict", run / "last.safetensors", photo)
    assert res.returncode == 0 and "never validated" in res.stderr, res.stderr


def test_truncated_last_checkpoint_falls_back_to_the_previous(data, tmp_path):
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "3", *TINY).returncode == 0
    last = run / "last.safetensors"
    last.unlink()  # a torn copy: the file is there, its tail is not
    data_ = (run / "checkpoints" / "epoch_003.safetensors").read_bytes()
    last.write_bytes(data_[: len(data_) // 2])
    (run / "checkpoints" / "epoch_003.safetensors").unlink()
    res = cli("train", "--resume", run, "--epochs", "4")
    assert res.returncode == 0, res.stderr
    assert "skipping" in res.stderr and "last.safetensors" in res.stderr
    assert "Resuming" in res.stdout and "epoch_002" in res.stdout
    assert load_checkpoint(run / "last.safetensors").meta["epoch"] == 4


def test_keep_limits_epoch_checkpoints_and_patience_stops_early(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "8", "--keep", "2",
                 "--patience", "2", "--monitor", "val_loss", *TINY]) == 0
    out = capsys.readouterr().out
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Where should it have stopped? Replay the rule on the recorded metrics.
    best, bad, expected = None, 0, len(history)
    for h in history:
        if best is None or h["val_loss"] < best:
            best, bad = h["val_loss"], 0
        else:
            bad += 1
            if bad == 2:
                expected = h["epoch"]
                break
    assert len(history) == expected
    assert ("Early stopping" in out) == (expected < 8)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == [f"epoch_{e:03d}.safetensors" for e in (expected - 1, expected)]
    best_epoch = min(history, key=lambda h: h["val_loss"])["epoch"]
    assert load_checkpoint(run / "best.safetensors").meta["epoch"] == best_epoch


@pytest.mark.parametrize("argv, message", [
    (["--image-size", "8", "--model", "xception"], "too small for xception"),
    (["--model", "resnet9000"], "unknown model"),
    (["--lr", "-1"], "learning rate must be positive"),
    (["--schedule", "linear"], None),  # argparse: its own usage error, exit 2
    (["--threads", "-2"], "threads"),
    (["--device", "tpu"], "not a device imgcls can use"),
    (["--weight-decay", "inf"], "finite"),
])
def test_bad_settings_are_one_line_errors(data, tmp_path, argv, message):
    res = cli("train", data, "--out", tmp_path / "r", *argv)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    if message:
        errs = images.error_lines(res.stderr)
        assert len(errs) == 1 and message in errs[0]


def test_any_trace_of_a_run_refuses_a_new_run_into_its_folder(data, tmp_path):
    """A pruned or copied run folder (best, config and epoch files, no `last`) is a run:
    training over it would replace its best model and rewrite its metrics."""
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", *TINY).returncode == 0
    (run / "last.safetensors").unlink()
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    res = cli("train", data, "--out", run, "--epochs", "1", *TINY)
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert "best.safetensors" in res.stderr and "checkpoints/" in res.stderr
    assert "--resume" in res.stderr  # config and epoch files: it can be continued
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    # An epoch file alone is a trace too.
    only = tmp_path / "only"
    (only / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "epoch_001.safetensors", only / "checkpoints")
    res = cli("train", data, "--out", only, "--epochs", "1", *TINY)
    assert res.returncode == 2 and "already holds a run (checkpoints/)" in res.stderr
    assert "--resume" not in res.stderr  # no config: nothing there can be resumed


def test_one_class_folder_and_resume_mismatch_are_refused(data, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(data / "cat", one / "cat")
    res = cli("train", one, "--out", tmp_path / "r1", *TINY)
    assert res.returncode == 2 and "only one class folder" in res.stderr
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", *TINY).returncode == 0
    res = cli("train", data, "--out", run, "--epochs", "1", *TINY)
    assert res.returncode == 2 and "already holds a run" in res.stderr
    res = cli("train", "--resume", run, "--model", "xception")
    assert res.returncode == 2 and "cannot change model" in res.stderr
    other = images.two_class_tree(tmp_path / "other", 6, 40, classes=("bird", "fish"))
    res = cli("train", other, "--resume", run)  # not the run's folder moved: refused, untouched
    assert res.returncode == 2 and "the run was started with ['cat', 'dog']" in res.stderr
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(data.resolve())


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_while_saving_keeps_the_previous_checkpoint(data, tmp_path):
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        res = cli("train", data, "--out", disk / "run", "--epochs", "20", *TINY)
        assert res.returncode == 2
        assert "disk full while saving" in res.stderr and "Traceback" not in res.stderr
        last = load_checkpoint(disk / "run" / "last.safetensors")
        assert last.resumable and last.meta["epoch"] >= 1
        assert not [p for p in (disk / "run").rglob("*") if ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", str(disk)])


def _whole_and_parts(data, tmp_path, settings: dict, micro: int) -> tuple[dict, dict, dict, str]:
    """Train one epoch with the whole batch per pass and with passes of `micro`: (weights
    of each, the initial weights, the second run's stderr)."""
    from imgcls.models import ModelConfig, create_model

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(settings))
    for name, m in (("whole", settings["batch_size"]), ("parts", micro)):
        res = cli("train", data, "--out", tmp_path / name, "--config", cfg, "--epochs", "1",
                  "--micro-batch", m, "--preset", "tutorial")
        assert res.returncode == 0, res.stderr
    torch.manual_seed(settings["seed"])  # fit() draws the initial weights the same way
    init = create_model(ModelConfig("xception-tiny", 2, settings["model_options"])).state_dict()
    return (weights(tmp_path / "whole" / "last.safetensors"),
            weights(tmp_path / "parts" / "last.safetensors"), init, res.stderr)


def test_micro_batches_accumulate_to_the_same_step(data, tmp_path):
    """Gradient accumulation: 2 passes of 4 = 1 pass of 8, for a batch-independent network.

    The two sum the same gradients in a different order: in float64 (--amp fp64) they agree
    to far below 1e-8 of how far the epoch moved each weight, on any CPU's kernels; a wrong
    accumulation differs by the whole step."""
    settings = {"model": "xception-tiny", "image_size": 32, "batch_size": 8,
                "model_options": {"dropout": 0.0, "norm": "group"}, "seed": 7,
                "optimizer": "sgd", "lr": 0.05, "threads": 1, "amp": "fp64"}
    a, b, init, err = _whole_and_parts(data, tmp_path, settings, 4)
    assert "accumulates gradients over passes of about 4" in err
    assert images.close_after_training(a, b, init) == []
    # The tolerance can fail: a step of half the size is far outside it.
    half = {k: init[k] + (v - init[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    assert images.close_after_training(a, half, init) != []
    # and a run that drops one pass's gradient is caught too (the difference is a pass's share)
    missing = {k: init[k] + (v - init[k]) * 0.9 if v.is_floating_point() else v
               for k, v in a.items()}
    assert images.close_after_training(a, missing, init) != []


def test_automatic_micro_batch_fits_free_memory():
    from imgcls.models import ModelConfig, create_model
    from imgcls.train.memory import auto_micro_batch as _auto_micro_batch

    model = create_model(ModelConfig("xception-tiny", 2))
    dev = torch.device("cpu")
    assert _auto_micro_batch(model, 32, 8, dev) == 8  # small: fits at once
    huge = 2 ** 22  # 4 M images of 32 px: tens of GB of activations
    micro = _auto_micro_batch(model, 32, huge, dev)
    assert micro < huge and huge % micro == 0


def _paths(rows):
    return [r[0] for r in rows]


def test_the_split_is_pinned_when_the_folder_changes(tmp_path):
    """Resume and evaluate use the run's recorded files: what vanished or changed is named
    and left out, what was added is not pulled in, no training photo becomes validation."""
    from imgcls.data.split import read_record

    data = images.two_class_tree(tmp_path / "data", 12, 40)
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", *TINY).returncode == 0
    rec = read_record(run)
    val, train = _paths(rec["val"]), _paths(rec["train"])
    assert len(val) >= 3 and not set(val) & set(train)
    (data / val[0]).unlink()  # vanished
    images.jpeg(data / val[1], seed=4242)  # rewritten: other bytes
    (data / train[0]).unlink()
    for i in range(5):  # added: would reshuffle a positional split
        images.jpeg(data / "cat" / f"a_new{i}.jpg", seed=900 + i)
    res = cli("train", "--resume", run, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert val[0] in res.stderr and val[1] in res.stderr and train[0] in res.stderr
    assert "vanished" in res.stderr and "changed" in res.stderr
    assert "5 file(s) added" in res.stderr
    summary = json.loads((run / "data.json").read_text())
    assert summary["val_images"] == len(val) - 2 and summary["train_images"] == len(train) - 1
    assert read_record(run) == rec  # the record is never rewritten by a resume
    res = cli("evaluate", run, "--json", "--no-figures")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"] == len(val) - 2
    assert val[0] in res.stderr and val[1] in res.stderr


def test_diverging_training_stops_at_the_first_nonfinite_loss(data, tmp_path):
    run = tmp_path / "run"
    res = cli("train", data, "--out", run, "--epochs", "3", *TINY, "--lr", "1e30")
    assert res.returncode == 2
    errs = images.error_lines(res.stderr)
    assert len(errs) == 1 and "diverged" in errs[0] and "step" in errs[0], res.stderr
    assert "nan" not in res.stdout.lower()
    assert not (run / "best.safetensors").exists()  # nothing NaN is ever called best


def test_a_model_with_nan_weights_is_refused_by_predict_evaluate_export(data, tmp_path):
    from imgcls.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", *TINY).returncode == 0
    ck = load_checkpoint(run / "best.safetensors", train_state=False)
    ck.weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                  for k, v in ck.weights.items()}
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, ck)
    photo = next((data / "cat").iterdir())
    for argv in (["predict", bad, photo], ["evaluate", bad, data, "--no-figures"],
                 ["export", bad, "-o", tmp_path / "m.onnx"]):
        res = cli(*argv)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        errs = images.error_lines(res.stderr)
        assert len(errs) == 1 and "NaN" in errs[0], res.stderr
        assert "nan%" not in res.stdout
    assert not (tmp_path / "m.onnx").exists()


def test_single_logit_model_trains_with_the_binary_loss(data, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model_options": {"single_logit": True}}))
    run = tmp_path / "run"
    res = cli("train", data, "--out", run, "--epochs", "3", "--config", cfg, *TINY)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(run / "best.safetensors").weights["fc.weight"].shape[0] == 1
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["loss"] < hist[0]["loss"] and max(h["val_accuracy"] for h in hist) >= 0.7
    res = cli("predict", run, next((data / "dog").iterdir()))
    assert res.returncode == 0 and res.stdout.startswith("This image is "), res.stderr
    five = images.two_class_tree(tmp_path / "five", 4, 40, classes=("a", "b", "c"))
    res = cli("train", five, "--out", tmp_path / "r5", "--config", cfg, *TINY)
    errs = images.error_lines(res.stderr)
    assert res.returncode == 2 and len(errs) == 1 and "exactly two classes" in errs[0]


def test_class_weighted_micro_batches_equal_the_full_batch(tmp_path):
    """--class-weights balanced: passes of 3+2+3 give the full batch's weighted mean."""
    root = tmp_path / "d"
    images.two_class_tree(root, 15, 40)
    for p in sorted((root / "dog").iterdir())[5:]:
        p.unlink()  # 15 cats, 5 dogs
    settings = {"model": "xception-tiny", "image_size": 32, "batch_size": 8, "seed": 7,
                "model_options": {"dropout": 0.0, "norm": "group"}, "flip": False,
                "rotation": 0.0, "optimizer": "sgd", "lr": 0.05, "threads": 1, "amp": "fp64",
                "class_weights": "balanced"}
    a, b, init, _ = _whole_and_parts(root, tmp_path, settings, 3)
    # In float64 the passes' weighted sums agree to rounding; summing each pass's own
    # weighted mean instead is off by ~30%.
    assert images.close_after_training(a, b, init) == []


def test_passes_never_leave_a_single_image():
    from imgcls.train.epoch import _passes

    for n in range(2, 40):
        for micro in range(2, 12):
            sizes = [hi - lo for lo, hi in _passes(n, micro)]
            assert sum(sizes) == n and min(sizes) >= 2, (n, micro, sizes)
            assert max(sizes) <= micro or max(sizes) <= 3, (n, micro, sizes)


def test_resuming_with_other_epochs_says_how_the_schedule_changes(data, tmp_path):
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", "--schedule", "cosine",
               *TINY).returncode == 0
    res = cli("train", "--resume", run, "--epochs", "3")
    assert res.returncode == 0, res.stderr
    assert "re-times the cosine learning-rate schedule" in res.stderr


def test_preset_auto_picks_the_recipe_by_device(data, tmp_path):
    from imgcls.config import PRESETS, resolve

    assert resolve({"device": "cpu"}, "auto").preset == "cpu"
    assert resolve({"device": "cpu"}, "auto").model == PRESETS["cpu"]["model"]
    assert resolve({"device": "cuda"}, "auto").preset == "tutorial"
    assert resolve({"device": "cuda"}, "auto").model == "xception"
    assert resolve({}, "tutorial").model == "xception"  # the tutorial, as it always was
    # On a GPU, auto also passes a small training set over several times an epoch; the
    # tutorial preset named outright stays the tutorial's one pass.
    assert resolve({"device": "cuda"}, "auto").epoch_images > 0
    assert resolve({}, "tutorial").epoch_images == 0
    assert resolve({"device": "cuda", "epoch_images": 0}, "auto").epoch_images == 0
    run = tmp_path / "run"
    res = cli("train", data, "--out", run, "--epochs", "1", "--image-size", "32",
              "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("Recipe: the cpu preset (--device cpu")
    assert json.loads((run / "config.json").read_text())["preset"] == "cpu"


def test_a_small_folder_is_passed_over_several_times_an_epoch(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--epoch-images", "152",
                 *TINY]) == 0
    out = capsys.readouterr().out
    # 38 training photos, 152 images an epoch: 4 whole passes, 19 steps of 8.
    assert "Each epoch passes 4 times over the 38 training photos (19 steps" in out
    last = load_checkpoint(run / "last.safetensors")
    assert last.meta["epoch"] == 1
    assert json.loads((run / "metrics.jsonl").read_text())["epoch"] == 1
    from imgcls.train.plan import epoch_passes

    assert [epoch_passes(2048, n) for n in (240, 480, 1600, 2000, 20000)] == [9, 4, 1, 1, 1]
    assert epoch_passes(0, 10) == 1


def test_mixup_blends_pairs_of_the_batch_and_their_labels(data, tmp_path):
    from imgcls.train.epoch import mixup

    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 4, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    assert mixup(x, y, 0.0)[2] == 1.0 and mixup(x, y, 0.0)[0] is x
    torch.manual_seed(1)
    mixed, partner, lam = mixup(x, y, 0.4)
    torch.manual_seed(1)
    torch.distributions.Beta(0.4, 0.4).sample()
    perm = torch.randperm(6)
    assert 0.5 <= lam <= 1.0 and torch.equal(partner, y[perm])
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm], atol=1e-6)
    # A run with mixup still learns the tiny two-class folder.
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "6", "--mixup", "0.4",
                 *TINY]) == 0
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(h["val_accuracy"] for h in hist) >= 0.8


def test_mixup_auto_blends_only_a_small_set_passed_over_several_times(data, tmp_path, capsys):
    from imgcls.config import resolve
    from imgcls.train.plan import AUTO_MIXUP, MIXUP_MIN_PASSES, mixup_alpha

    assert resolve({}, "cpu").mixup == -1 and resolve({}, "tutorial").mixup == 0
    assert resolve({"mixup": "auto"}).mixup == -1  # as a config file writes it
    assert mixup_alpha(-1, MIXUP_MIN_PASSES) == AUTO_MIXUP
    assert mixup_alpha(-1, MIXUP_MIN_PASSES - 1) == 0.0  # a big set: no mixup
    assert mixup_alpha(0.0, 9) == 0.0 and mixup_alpha(0.4, 1) == 0.4  # an explicit alpha rules
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "1", "--epoch-images", "152",
                 "--mixup", "auto", *TINY]) == 0
    assert f"with mixup (alpha {AUTO_MIXUP:g}; --mixup 0 for none)" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["mixup"] == -1
    for bad in ("lots", "-1", "-0.5", "inf"):  # old main took -1 (its own code for auto)
        res = cli("train", data, "--out", tmp_path / "bad", "--mixup", bad, *TINY)
        assert res.returncode == 2 and f"a number >= 0 or auto, not '{bad}'" in res.stderr


def test_the_cpu_recipe_learns_five_classes_with_passes_and_mixup(tmp_path, capsys):
    """The cpu preset as a CPU user gets it (epoch passes, mixup auto) on five classes."""
    five = images.two_class_tree(tmp_path / "five", 16, 40, classes=("a", "b", "c", "d", "e"))
    run = tmp_path / "run"
    assert main(["train", str(five), "--out", str(run), "--preset", "cpu", "--image-size", "32",
                 "--batch-size", "16", "--epochs", "6", "--epoch-images", "256", "--threads", "2",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "Found 80 files belonging to 5 classes." in out and "with mixup (alpha 1" in out
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(h["val_accuracy"] for h in hist) >= 0.6  # chance is 0.2
    assert main(["predict", str(run), str(five / "c" / "c.0.jpg"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    assert answer["class"] == "c" and len(answer["probabilities"]) == 5
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-3


def test_a_time_limit_fits_the_schedule_to_the_epochs_that_fit(data, tmp_path):
    """Under --time-limit a decaying schedule is re-timed to the epochs the clock allows, so
    the run ends on its smallest learning rates instead of being cut at a high one."""
    # The budget: five times what a 2-epoch run took here, set-up included, so enough epochs
    # fit however slow or busy the machine (old test: a fixed 0.3 minutes) that ending one
    # short of the fitted schedule, after an epoch slower than the pace, still ends low.
    ref = tmp_path / "ref"
    assert cli("train", data, "--out", ref, "--epochs", "2", *TINY).returncode == 0
    took = json.loads((ref / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
    run = tmp_path / "run"
    res = cli("train", data, "--out", run, "--epochs", "400", "--schedule", "onecycle",
              "--time-limit", f"{5 * took / 60:.4f}", *TINY)
    assert res.returncode == 0, res.stderr
    assert "learning-rate schedule now ends with epoch" in res.stdout
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= len(hist) < 400
    # The last epoch ran at the end of the one-cycle: far below the 3e-3 peak.
    assert hist[-1]["lr"] < 0.1 * 3e-3, [h["lr"] for h in hist]
    last = load_checkpoint(run / "last.safetensors")
    # It ended with its fitted schedule (an epoch short where the machine slowed down late)
    assert len(hist) <= last.train_meta["schedule_epochs"] <= len(hist) + 1


def test_a_time_limit_counts_the_checkpoint_writes_of_each_epoch(data, tmp_path, monkeypatch,
                                                                  capsys):
    """On a slow disk (CI's: each fsync a tenth of a second) the checkpoint writes are most
    of a small run's epoch. The pace counted only training and validation, so the plan
    thought ten times the epochs fit and the clock cut the run at a rate near its peak."""
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.1)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "400", "--schedule",
                 "onecycle", "--time-limit", "0.15", *map(str, TINY)]) == 0
    assert "learning-rate schedule now ends with epoch" in capsys.readouterr().out
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= len(hist) < 100
    assert hist[-1]["lr"] < 0.1 * 3e-3, [h["lr"] for h in hist]
    planned = load_checkpoint(run / "last.safetensors").train_meta["schedule_epochs"]
    assert len(hist) <= planned <= len(hist) + 1


def test_a_signal_in_the_last_epochs_validation_ends_the_run_as_finished(data, tmp_path,
                                                                         monkeypatch, capsys):
    """Ctrl-C after the last step: the run has trained every epoch. Old main said 'Stopped
    after epoch 2. Resume with ...' and exited 130, for a run with nothing left to resume."""
    import signal as sig

    from imgcls.train import loop

    real = loop._finish_epoch

    def finish_after_a_signal(cfg, state, *args):
        if state.epoch == 1:  # the last of 2: the signal lands during its validation
            os.kill(os.getpid(), sig.SIGINT)
        return real(cfg, state, *args)

    monkeypatch.setattr(loop, "_finish_epoch", finish_after_a_signal)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--epochs", "2", *map(str, TINY)]) == 0
    out = capsys.readouterr().out
    assert "Resume with" not in out and "Best: epoch" in out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------- no wrong answer

def test_a_second_run_into_a_folder_in_use_is_refused_by_name(data, tmp_path):
    """Old main: both runs exit 0 and mix their files in one folder."""
    run = tmp_path / "run"
    # --epochs 100000: still running when the second starts, on any machine (it is stopped
    # below); 30 epochs once ended first on a fast one.
    first = subprocess.Popen([sys.executable, "-m", "imgcls", "train", str(data), "--out",
                              str(run), "--epochs", "100000", *TINY], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = cli("train", data, "--out", run, "--epochs", "2", *TINY)
        errs = images.error_lines(second.stderr)
        assert second.returncode == 2 and len(errs) == 1, second.stderr
        assert "in use by another imgcls run" in errs[0] and f"pid {first.pid}" in errs[0]
        resumed = cli("train", "--resume", run)  # a resume while it runs: refused the same way
        assert resumed.returncode == 2 and "in use" in resumed.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 100000  # the first run's, untouched


def test_default_run_folders_never_collide(tmp_path, monkeypatch):
    from imgcls.train.runfolder import new_run_dir

    monkeypatch.chdir(tmp_path)
    made = {new_run_dir("/some/data") for _ in range(5)}  # the same second, five runs
    assert len(made) == 5 and all(p.is_dir() and p.parent.name == "runs" for p in made)


def test_a_refused_run_leaves_no_folder_behind(data, tmp_path):
    res = cli("train", data, "--out", tmp_path / "new", "--model", "no-such-net", *TINY[2:])
    assert res.returncode == 2 and not (tmp_path / "new").exists(), res.stderr


def test_the_time_limit_is_the_runs_total_across_resumes(data, tmp_path):
    """Old main: a resumed time-boxed run got a fresh budget and trained on."""
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "2", *TINY).returncode == 0
    spent = load_checkpoint(run / "last.safetensors").train_meta["elapsed_s"]
    assert spent > 0
    res = cli("train", "--resume", run, "--epochs", "6", "--time-limit", f"{spent / 120:.6f}")
    assert res.returncode == 0, res.stderr
    assert "already trained for" in res.stdout and "Epoch 3/" not in res.stdout
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_resuming_a_sample_decodes_only_the_sample(tmp_path):
    """Old main: the resume decoded the whole folder into a new cache and deleted the
    sample's."""
    data = images.two_class_tree(tmp_path / "d", 20, 40)
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    args = ["--max-per-class", "6", "--cache-dir", cache, *TINY]
    assert cli("train", data, "--out", run, "--epochs", "1", *args).returncode == 0
    before = sorted(p.name for p in (cache / "images").iterdir())
    res = cli("train", "--resume", run, "--epochs", "2")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (cache / "images").iterdir()) == before
    assert json.loads((run / "data.json").read_text())["train_images"] + \
        json.loads((run / "data.json").read_text())["val_images"] == 12


def test_no_weight_decay_on_biases_and_normalisation(tmp_path):
    from imgcls.config import TrainConfig
    from imgcls.models import ModelConfig, create_model
    from imgcls.train.optim import make_optimizer

    model = create_model(ModelConfig("resnet-cpu", 2))
    opt = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=0.05), model)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name
    assert any(p.ndim == 1 for p in model.parameters())  # BatchNorm and biases exist
    # a step with zero gradients: decayed kernels shrink, BatchNorm scales stay
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    w_bn, w_conv = bn.weight.detach().clone(), conv.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(bn.weight, w_bn) and not torch.equal(conv.weight, w_conv)


OLD_RUN = Path(__file__).parent / "data" / "run_v0.1"


def test_a_run_folder_written_before_preprocessing_versions_predicts_and_resumes(tmp_path):
    """tests/data/run_v0.1: trained by imgcls at commit bfd554f. It predicts with the pixels
    it was trained on (its recorded preprocessing, version 1) and resumes (its data folder
    moved: --resume with DATA_DIR says where it is now)."""
    import numpy as np

    from imgcls.infer.predictor import Predictor

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(OLD_RUN / "data", data)
    shutil.copytree(OLD_RUN / "run", run)
    predictor = Predictor.from_checkpoint(run, amp="off")
    assert predictor.spec.version == 1
    then = json.loads((OLD_RUN / "predictions.json").read_text())["probabilities"]
    got = predictor.predict([data / rel for rel in then])
    for p, (rel, probs) in zip(got, then.items()):
        assert np.abs(np.array(list(p.probabilities.values())) - list(probs.values())).max() \
            < 1e-5, rel
    res = cli("train", data, "--resume", run, "--epochs", "3", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "Epoch 3/3" in res.stdout
    assert load_checkpoint(run / "last.safetensors").meta["preprocess"]["version"] == 1


def test_after_the_first_epoch_train_says_how_long_the_run_takes(data, tmp_path):
    res = cli("train", data, "--out", tmp_path / "run", "--epochs", "3", *TINY)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "at this pace" in line]
    assert len(lines) == 1 and "the run's 3 epochs take " in lines[0]
    assert "about 0 min" not in lines[0]  # a short run: "under a minute"
    assert res.stdout.index("Epoch 1/3") < res.stdout.index("Epoch 2/3")


def test_the_plan_is_sized_to_the_data(data, tmp_path):
    from imgcls.config import resolve
    from imgcls.train.plan import planned_epochs

    # The cpu preset's 36 epochs of 2,048 images: 20,004 photos train 20 longer epochs.
    assert planned_epochs(36, 2048, 20_004, 0.25) == 20
    assert planned_epochs(36, 2048, 2_000, 0.25) == 36 == planned_epochs(36, 2048, 20_004, 0)
    cpu = resolve({}, "cpu")
    assert planned_epochs(cpu.epochs, cpu.epoch_images, 20_004, cpu.epochs_shrink) == 18
    assert resolve({"epochs": 10}, "cpu").epochs_shrink == 0  # epochs asked for are trained
    # Through train: 38 training photos, epochs "for" 8 images, shrink 0.5 -> 4 * (8/38)**0.5.
    res = cli("train", data, "--out", tmp_path / "run", "--epochs", "4", "--epoch-images", "8",
              "--epochs-shrink", "0.5", *TINY)
    assert res.returncode == 0, res.stderr
    assert "Plan: 2 epochs, not the recipe's 4" in res.stdout
    assert "Epoch 2/2" in res.stdout and "Epoch 3/" not in res.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 2
