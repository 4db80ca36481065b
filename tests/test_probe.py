"""train/probe: a run with a budget says its plan before epoch 1 and ends within it, its
learning-rate schedule completed; the probe leaves the run as it would have been."""

from __future__ import annotations

import json
import time

import images
import pytest
from clirun import run as cli

from imgcls.checkpoint import load_checkpoint

SMALL = ["--image-size", "48", "--batch-size", "8", "--threads", "2", "--seed", "3",
         "--preset", "cpu", "--epoch-images", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return images.two_class_tree(tmp_path_factory.mktemp("probe") / "data", 16, 40)


def test_a_one_minute_budget_is_planned_first_and_kept(data, tmp_path):
    run = tmp_path / "run"
    t0 = time.perf_counter()
    # 4,000 epochs: more than a minute on any machine (400 fitted on a fast CI runner).
    res = cli("train", data, "--out", run, "--epochs", "4000", "--time-limit", "1", "--keep", "2",
              *SMALL)  # --keep: hundreds of epoch files filled 5 GB
    took = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    plan = next(i for i, x in enumerate(lines) if x.startswith("Plan: "))
    first = next(i for i, x in enumerate(lines) if x.startswith("Epoch 1/"))
    assert plan < first and "of the recipe's 4000" in lines[plan] and "ending near" in lines[plan]
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Within the minute, with a generous margin for a busy machine (the plan is re-fitted
    # after each epoch; each epoch here takes a second or two).
    assert hist[-1]["elapsed_s"] <= 60 * 1.25 and took <= 60 * 1.5, (hist[-1], took)
    assert 2 <= len(hist) < 4000
    # The schedule ran to its end: the last epoch at a small share of the peak rate.
    assert hist[-1]["lr"] < 0.05 * 3e-3
    last = load_checkpoint(run / "last.safetensors")
    assert len(hist) <= last.train_meta["schedule_epochs"] <= len(hist) + 1


def test_the_probe_leaves_the_run_as_it_would_have_been(data, tmp_path):
    """Same settings with and without a budget that fits the whole plan: the same weights,
    bit for bit (the probe trains a copy)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--epochs", "2", "--low-res", "0.5", "--amp", "off", *SMALL]
    assert cli("train", data, "--out", a, *common, "--time-limit", "0").returncode == 0
    res = cli("train", data, "--out", b, *common, "--time-limit", "600")
    assert res.returncode == 0 and "Plan: the recipe's 2 epochs" in res.stdout, res.stdout
    wa = load_checkpoint(a / "last.safetensors").weights
    wb = load_checkpoint(b / "last.safetensors").weights
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
