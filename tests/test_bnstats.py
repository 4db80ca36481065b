"""bnstats: BatchNorm statistics re-estimated exactly; the one-class warning fires on a
collapsed run and stays quiet on a healthy one."""

from __future__ import annotations

import json

import images
import numpy as np
import torch
import torch.nn as nn
from clirun import run as cli

from imgcls.train.bnstats import collapse_warning, recalibrate
from imgcls.train.distributed import World


class _Loader:
    def __init__(self, x, bs):
        self.x, self.bs = x, bs

    def __iter__(self):
        from types import SimpleNamespace

        for i in range(0, len(self.x), self.bs):
            yield SimpleNamespace(images=self.x[i:i + self.bs])


def test_recalibrate_gives_the_training_images_exact_statistics():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    # float64: batch-by-batch and all-at-once statistics sum in another order
    model = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.01), nn.Dropout(0.5)).double()
    x = torch.randint(0, 256, (12, 8, 8, 3), dtype=torch.uint8)  # NHWC uint8, as the cache
    with torch.no_grad():
        feats = conv(x.permute(0, 3, 1, 2).double())
    from contextlib import nullcontext

    used = recalibrate(model, _Loader(x, 4), 100, 4, nullcontext, World())
    assert used == 12
    bn = model[1]
    # Equal-weight batches of 4: the mean of batch means = the mean over all 12 images.
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-12, atol=1e-9)
    per_batch_var = torch.stack([feats[i:i + 4].var((0, 2, 3), unbiased=True) for i in (0, 4, 8)])
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), rtol=1e-12)
    assert bn.momentum == 0.01 and model.training  # momentum and mode restored


def test_collapse_warning_rules():
    names = ["cat", "dog"]
    t = np.array([10, 10])
    assert "answers 'dog' for every" in collapse_warning(np.array([0, 20]), t, 0.5, 0.9, names, 2)
    assert collapse_warning(np.array([0, 20]), t, 0.5, 0.52, names, 1) is None  # untrained yet
    assert "no better than" in collapse_warning(np.array([3, 17]), t, 0.51, 0.95, names, 5)
    assert collapse_warning(np.array([9, 11]), t, 0.8, 0.95, names, 5) is None
    # It suggests the cpu recipe, except to a run that already trains with it (old main did).
    told = [collapse_warning(np.array([0, 20]), t, 0.5, 0.9, names, 2, preset)
            for preset in ("tutorial", "cpu")]
    assert "--preset cpu" in told[0] and "--preset cpu" not in told[1]


def _train(data, run, *extra):
    return cli("train", data, "--out", run, "--preset", "tutorial", "--model", "xception-tiny",
               "--image-size", "32", "--batch-size", "8", "--lr", "3e-3", "--seed", "3",
               "--threads", "2", "--epochs", "4", *extra)


def test_a_collapsed_run_is_named_and_recalibration_prevents_it(tmp_path):
    """A small folder with the tutorial's slow BatchNorm: without re-estimated statistics
    the network answers one class in evaluation mode, and says so; with them it does not."""
    data = images.two_class_tree(tmp_path / "data", 16, 40)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model_options": {"bn_momentum": 0.01}, "bn_recalibrate": 0}))
    res = _train(data, tmp_path / "off", "--config", cfg)
    assert res.returncode == 0, res.stderr
    assert "for every validation photo" in res.stderr or "no better than" in res.stderr
    cfg.write_text(json.dumps({"model_options": {"bn_momentum": 0.01}}))
    res = _train(data, tmp_path / "on", "--config", cfg)
    assert res.returncode == 0, res.stderr
    assert "learnt nothing" not in res.stderr
    hist = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert max(h["val_accuracy"] for h in hist) >= 0.8


def test_recalibration_is_needed_where_the_running_statistics_trail_an_epoch():
    from imgcls.train.bnstats import needs_recalibration

    keras_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01))
    torch_default = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # momentum 0.1
    cumulative = nn.Sequential(nn.BatchNorm2d(4, momentum=None))
    assert needs_recalibration(keras_like, 31)  # 100-step memory, 31-step epochs
    assert not needs_recalibration(keras_like, 200)
    assert not needs_recalibration(torch_default, 31)
    assert needs_recalibration(torch_default, 4)  # a 240-photo folder at batch 64
    assert needs_recalibration(cumulative, 10_000)
    assert not needs_recalibration(nn.Sequential(nn.Conv2d(3, 4, 3)), 1)
