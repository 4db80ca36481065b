"""train.resolution: progressive resizing trains early epochs smaller, ends and validates at
the full size, and the clock (time limit, pace line) counts the cheaper epochs."""

from __future__ import annotations

import images
import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.checkpoint import load_checkpoint
from imgcls.config import TrainConfig
from imgcls.data.augment import resize_batch
from imgcls.train.plan import epochs_that_fit
from imgcls.train.report import pace_note
from imgcls.train.resolution import Pace, epoch_cost, epoch_size, full_epochs, ramp_line


def test_the_plan_rises_from_low_res_to_the_full_size_and_stays():
    cfg = TrainConfig(image_size=128, low_res=0.5, low_res_until=0.75)
    sizes = [epoch_size(cfg, e, 30) for e in range(30)]
    assert sizes[0] == 64 and sizes[-1] == 128
    assert sizes == sorted(sizes) and all(s % 16 == 0 for s in sizes)
    # Full size by 3/4 of the epochs (rounding reaches it a little sooner), then kept.
    assert 15 < sizes.index(128) <= 22 and all(s == 128 for s in sizes[22:])
    # Cheaper, counted by the side (what epochs took, not what their pixels promise).
    assert epoch_cost(cfg, 0, 30) == 0.5
    assert 22 < full_epochs(cfg, 0, 30, 30) < 26
    # Off: every epoch full size; never below the network's smallest input.
    assert {epoch_size(TrainConfig(image_size=128), e, 30) for e in range(30)} == {128}
    assert epoch_size(TrainConfig(image_size=48, low_res=0.1), 0, 30, min_size=32) == 32
    # A network that needs 32 px at 32 px: nothing to ramp, and nothing said of a ramp.
    small = TrainConfig(image_size=32, low_res=0.5)
    assert ramp_line(small, 10, min_size=32) == "" and epoch_cost(small, 0, 10, 32) == 1
    assert epoch_size(TrainConfig(image_size=8, low_res=0.5), 0, 10) == 8  # never upscaled
    # The full size itself is reached, not its nearest multiple of 16 (180 px ended at 176:
    # no epoch was ever at the size prediction uses), and the last epoch is at it however
    # short the plan (3 epochs ended at 112 of 128 px).
    odd = TrainConfig(image_size=180, low_res=0.4, low_res_until=0.75)
    assert [epoch_size(odd, e, 18) for e in range(18)][-4:] == [180] * 4
    assert max(epoch_size(odd, e, 18) for e in range(18)) == 180
    for n in (1, 2, 3):
        assert epoch_size(cfg, n - 1, n) == 128 and epoch_size(odd, n - 1, n) == 180
    assert epoch_size(cfg, 0, 2) < 128
    # The line says what validation does: a sample below the full size, or (a validation
    # set small enough to check whole) every photo at the full size every epoch.
    assert "fixed sample" in ramp_line(cfg, 30)
    assert ramp_line(cfg, 30).startswith("Resolution: epochs 1-")
    assert ramp_line(cfg, 2).startswith("Resolution: epoch 1 at 64 px, then 128 px")
    whole = ramp_line(cfg, 30, sampled=False)
    assert "fixed sample" not in whole and "every photo at the full size, every epoch" in whole


def test_resize_batch_shrinks_as_pillow_does():
    """Antialiased bilinear, as Pillow's resize: a shrunk photo, not an aliased sample."""
    arr = images.pattern(64, 64, seed=5)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    got = resize_batch(x, 32)[0].permute(1, 2, 0).numpy()
    want = np.asarray(Image.fromarray(arr).resize((32, 32), Image.BILINEAR), dtype=np.float32)
    assert np.abs(got - want).mean() < 1.0 and np.abs(got - want).max() < 4
    assert resize_batch(x, 64) is x


def test_a_time_limit_counts_the_cheaper_small_epochs():
    """With 10 minutes left at 60 s a full-size epoch, epochs at half the side fit more than
    10 more."""
    plain = TrainConfig(image_size=128, epochs=40, time_limit=20, schedule="cosine")
    ramp = plain.replace(low_res=0.5, low_res_until=0.75)
    pace = Pace([(128, 60.0)])
    assert epochs_that_fit(plain, pace, 0, 40, 600.0) == 11
    assert epochs_that_fit(ramp, pace, 0, 40, 600.0) > 15


def test_the_pace_is_learnt_from_the_sizes_timed():
    """One size timed: seconds in proportion to the side. Two or more: a + b * size^2, as the
    AVX2 EPYC's float32 epochs went (135 / 177 / 240 / 392 s at 64 / 80 / 96 / 128 px): its
    160 px epoch is planned near the 557 s it took, not at the side rule's 338 s."""
    assert Pace().seconds(128) == 0
    assert Pace([(64, 135.0)]).seconds(128) == pytest.approx(270.0)
    avx2 = Pace([(64, 135.0), (80, 177.0), (96, 240.0), (128, 392.0)])
    assert [avx2.seconds(s) for s in (64, 96, 128)] == pytest.approx([135, 240, 392], rel=0.03)
    assert 560 < avx2.seconds(160) < 610
    # Two sizes are enough to see it: a 30-minute budget after two epochs plans fewer of the
    # dear full-size epochs than the side rule (that run fitted 5 in the end).
    cfg = TrainConfig(image_size=160, epochs=45, low_res=0.4, low_res_until=0.75,
                      time_limit=30, schedule="cosine")
    by_side, learnt = Pace([(80, 177.0)]), Pace([(64, 135.0), (80, 177.0)])
    assert epochs_that_fit(cfg, learnt, 1, 9, 360.0) < epochs_that_fit(cfg, by_side, 1, 9, 360.0)
    # A machine that slowed down late is planned at its latest pace, never a faster one.
    assert Pace([(128, 60.0), (128, 60.0), (128, 120.0)]).seconds(128) == 120.0
    assert Pace([(64, 10.0), (128, 90.0), (128, 30.0)]).seconds(128) == pytest.approx(60.0)


def test_the_run_length_is_said_again_when_larger_epochs_change_it():
    """The AVX2 EPYC's 18-epoch float32 plan: after epoch 1 (64 px) the side rule puts the
    run near 77 minutes; once an 80 px epoch is timed the run is said again, longer (it took
    nearer two hours); an epoch that changes the length little says nothing."""
    cfg = TrainConfig(image_size=160, epochs=18, low_res=0.4, low_res_until=0.75)
    sizes = [epoch_size(cfg, e, 18) for e in range(18)]
    assert sizes[:3] == [64, 64, 80]
    pace, said, lines = Pace(), 0.0, []
    for epoch, seconds in enumerate((135.0, 135.0, 177.0)):
        pace.add(sizes[epoch], seconds)
        h = {"epoch": epoch + 1, "elapsed_s": 40.0 + sum(t for _, t in pace.seen)}
        line, said = pace_note(cfg, h, epoch == 0, 18, pace, said)
        lines.append((line, said))
    (first, said1), (second, said2), (third, said3) = lines
    assert "at this pace" in first and 50 * 60 < said1 < 80 * 60
    assert second == "" and said2 == said1  # the same size again: the same estimate
    assert "revised" in third and said3 > 1.3 * said1
    assert f"about {said1 / 60:.0f} min" in third  # what it said before
    # Under --time-limit the re-fitted schedule says it; the last epoch says nothing.
    limited = cfg.replace(time_limit=30)
    assert pace_note(limited, {"epoch": 3, "elapsed_s": 487.0}, False, 18, pace, said1)[0] == ""
    assert pace_note(cfg, {"epoch": 18, "elapsed_s": 487.0}, True, 18, pace, 0.0)[0] == ""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return images.two_class_tree(tmp_path_factory.mktemp("res") / "data", 24, 40)


def test_training_sees_small_images_early_and_validates_at_full_size(data, tmp_path, caplog):
    seen: list[tuple[bool, int]] = []  # (training?, height) of every input to the stem

    def spy(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            seen.append((module.training, args[0].shape[-1]))

    caplog.set_level("INFO")
    hook = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        run = imgcls.fit(data, out=tmp_path / "run", preset="cpu", image_size=64, epochs=4,
                         epoch_images=0, low_res=0.5, low_res_until=0.5, batch_size=8, threads=2,
                         seed=3)
    finally:
        hook.remove()
    assert "Resolution: epochs 1-2 at 32-48 px, then 64 px" in caplog.text
    train_sizes = [s for training, s in seen if training]
    assert train_sizes[0] == 32 and train_sizes[-1] == 64 and train_sizes == sorted(train_sizes)
    # Validation (and BatchNorm's re-estimation before it) only ever at the full size.
    assert {s for training, s in seen if not training} == {64}
    assert np.isfinite(run.history[-1]["val_loss"])


def test_epochs_below_the_full_size_validate_a_sample_at_their_own_size(data, tmp_path,
                                                                        monkeypatch):
    """Validation cost a third of a catsdogs run on an AVX2 CPU: every photo at the full
    size after every epoch, BatchNorm re-estimated after each smaller one. Now the ramp's
    epochs check a fixed sample at their own size (no re-estimation), and only the epochs at
    the full size, which alone may be the best, check every photo."""
    import imgcls.train.state as state_module

    monkeypatch.setattr(state_module, "VAL_SAMPLE", 4)  # 10 validation photos here
    seen: list[tuple[int, int]] = []  # (batch, height) of every evaluation-mode stem input

    def spy(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3 and not module.training:
            seen.append((args[0].shape[0], args[0].shape[-1]))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(spy)
    try:
        run = imgcls.fit(data, out=tmp_path / "run", preset="cpu", image_size=64, epochs=4,
                         epoch_images=0, low_res=0.5, low_res_until=0.5, batch_size=8,
                         threads=2, seed=3)
    finally:
        hook.remove()
    hist = run.history
    assert [h["resolution"] for h in hist] == [32, 48, 64, 64]
    assert [h["val_full"] for h in hist] == [False, False, True, True]
    assert [h["val_images"] for h in hist] == [4, 4, 10, 10]
    # Evaluation mode saw the sample at 32 and 48 px, nothing else below 64 px: no
    # re-estimation of BatchNorm (training images) at the full size after a small epoch.
    assert sorted({s for _, s in seen}) == [32, 48, 64]
    assert sum(b for b, s in seen if s < 64) == 8
    assert run.best_epoch in (3, 4)
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.meta["epoch"] == run.best_epoch
