"""train/plan: the epochs a budget fits, and which epochs validate every photo, as
arithmetic on a given pace (no clock involved)."""

from __future__ import annotations

from imgcls.config import PRESETS, TrainConfig
from imgcls.train.plan import fit_epochs, planned_epochs, validates_fully
from imgcls.train.resolution import Pace, epoch_size

CPU = TrainConfig(**{k: v for k, v in PRESETS["cpu"].items()})


def test_a_budget_fits_the_most_epochs_whose_plan_fits():
    """The AVX2 EPYC's float32 epochs (64 px 135 s ... 160 px ~560 s): 30 minutes fit a
    short plan; each plan is timed with its own ramp; more time never fits fewer."""
    pace = Pace(probed=[(64, 135.0), (160, 560.0)])
    fits = {}
    for minutes in (5, 30, 60, 120, 10_000):
        left = minutes * 60.0
        e = fits[minutes] = fit_epochs(CPU, pace, left, 45)
        assert 1 <= e <= 45
        if e > 1:
            assert pace.plan_seconds(CPU, 0, e, e) <= left
        if e < 45:
            assert pace.plan_seconds(CPU, 0, e + 1, e + 1) > left
    assert fits[5] == 1 and 2 < fits[30] < fits[60] < fits[120] and fits[10_000] == 45


def test_a_long_recipe_is_fitted_to_the_last_epoch_that_fits():
    """A recipe of 4,000 epochs (old main scanned every count down from it, each plan summed
    epoch by epoch: minutes of a one-minute budget went into planning)."""
    pace = Pace(probed=[(32, 0.5), (48, 1.0)])
    cfg = CPU.replace(image_size=48)
    for left in (0.4, 3.0, 60.0, 600.0, 3000.0):
        e = fit_epochs(cfg, pace, left, 4000)
        assert 1 <= e <= 4000
        assert e == 1 or pace.plan_seconds(cfg, 0, e, e) <= left
        assert e == 4000 or pace.plan_seconds(cfg, 0, e + 1, e + 1) > left, (left, e)


def test_real_epochs_replace_the_probes_estimate():
    pace = Pace(probed=[(64, 10.0), (160, 40.0)])
    assert pace.seconds(160) == 40.0
    pace.add(64, 30.0)  # the machine is three times slower than the probe said
    assert pace.seconds(64) == 30.0 and pace.seconds(160) > 40.0


def test_only_full_size_epochs_and_the_last_validate_every_photo():
    epochs = planned_epochs(CPU.epochs, CPU.epoch_images, 20_004, CPU.epochs_shrink)
    full = [validates_fully(CPU, e, epochs) for e in range(epochs)]
    sizes = [epoch_size(CPU, e, epochs) for e in range(epochs)]
    assert full == [s == CPU.image_size for s in sizes] and full[-1]
    assert 0 < sum(full) < epochs
    assert all(validates_fully(CPU.replace(low_res=0.0), e, epochs) for e in range(epochs))
