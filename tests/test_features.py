"""train/features: `--tune-units N` keeps the trunk fixed and trains the top on its stored
outputs, and the model that results answers through the whole network exactly as
validation said."""

from __future__ import annotations

import json

import images
import pytest
import torch
from clirun import run as cli

from imgcls.checkpoint import load_checkpoint
from imgcls.models import ModelConfig, create_model

SMALL = ["--image-size", "32", "--batch-size", "8", "--threads", "2", "--seed", "3",
         "--epochs", "2", "--epoch-images", "64"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("features")
    data = images.two_class_tree(base / "data", 12, 40, classes=("red", "blue", "green"))
    source = create_model(ModelConfig("efficientnet-lite0", 1000)).state_dict()
    torch.save(source, base / "lite0.pth")
    run = base / "run"
    res = cli("train", data, "--init", base / "lite0.pth", "--out", run, "--tune-units", "3",
              "--amp", "off", *SMALL)
    assert res.returncode == 0, res.stderr
    return data, run, source, res.stdout


def test_the_trunk_keeps_the_sources_weights_and_statistics(trained):
    data, run, source, out = trained
    line = next(x for x in out.splitlines() if x.startswith("Fixed:"))
    assert "the first 15 of 18 units keep the source's weights (--tune-units 3)" in line
    assert "and their mirror images" in line
    w = load_checkpoint(run / "best.safetensors").weights
    trunk = [k for k in w if k.startswith(("_conv_stem", "_bn0")) or
             any(k.startswith(f"_blocks.{i}.") for i in range(14))]
    assert trunk and all(torch.equal(w[k], source[k]) for k in trunk)
    top = [k for k in w if k.startswith(("_blocks.15.", "_conv_head")) and k.endswith("weight")]
    assert top and any(not torch.equal(w[k], source[k]) for k in top)
    # BatchNorm keeps ImageNet's statistics in the top too (a few dozen photos' would be noise).
    stats = [k for k in w if "running_" in k]
    assert all(torch.equal(w[k], source[k]) for k in stats)
    assert w["_fc.weight"].shape == (3, 1280)
    # The input scaling the weights expect is recorded, not implied by code defaults.
    opts = load_checkpoint(run / "best.safetensors").meta["model"]["options"]
    assert opts["mean"] == pytest.approx([127 / 255] * 3) and opts["std"] == pytest.approx(
        [128 / 255] * 3)


def test_the_whole_network_answers_as_validation_on_stored_outputs_said(trained):
    """Validation ran the top on stored trunk outputs; evaluate runs the whole network on
    the photos: the same loss (float32 both, --amp off)."""
    data, run, _, _ = trained
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(hist, key=lambda h: h["val_accuracy"])
    res = cli("evaluate", run, "--json", "--no-tta", "--amp", "off", "--no-figures")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["images"] == best["val_images"]
    assert report["loss"] == pytest.approx(best["val_loss"], rel=1e-4, abs=1e-6)
    assert report["accuracy"] == pytest.approx(best["val_accuracy"])


def test_every_network_runs_in_units_and_keeps_its_fixed_ones(trained, tmp_path):
    """From scratch too: xception-tiny with its first units fixed keeps their initial
    weights (the seed's), and the rest learns."""
    data, _, _, _ = trained
    res = cli("train", data, "--out", tmp_path / "r", "--tune-units", "2", "--model",
              "xception-tiny", "--preset", "tutorial", *SMALL)
    assert res.returncode == 0 and not images.error_lines(res.stderr), res.stderr
    torch.manual_seed(3)  # the run's seed: its initial weights
    start = create_model(ModelConfig("xception-tiny", 3)).state_dict()
    w = load_checkpoint(tmp_path / "r" / "best.safetensors").weights
    fixed = [k for k in w if k.startswith(("stem.", "blocks.0."))]
    assert fixed and all(torch.equal(w[k], start[k]) for k in fixed)
    assert not torch.equal(w["fc.weight"], start["fc.weight"])


def test_a_run_on_stored_outputs_resumes_and_keeps_its_trunk(trained, tmp_path):
    """--resume recomputes the fixed units' outputs from the run's own weights (the same as
    the source's) and trains on."""
    import shutil

    data, run, source, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    res = cli("train", "--resume", copy, "--epochs", "3")
    assert res.returncode == 0, res.stderr
    assert "Fixed: the first 15 of 18 units" in res.stdout
    hist = (copy / "metrics.jsonl").read_text().splitlines()
    assert len(hist) == 3
    w = load_checkpoint(copy / "last.safetensors").weights
    assert all(torch.equal(w[k], source[k]) for k in source if k.startswith("_blocks.3."))
