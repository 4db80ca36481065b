"""How long a run is: epochs for the data's size, passes an epoch, mixup, and the epochs a
time limit fits.

Owns the plan of a run before and while it trains: how many epochs a recipe's plan gives a
training set of this size (`planned_epochs`), how many whole passes over a small set an
epoch makes (`epoch_passes`), whether mixup is on (`mixup_alpha`), and under --time-limit
how many epochs the learning-rate schedule runs over at the pace measured so far
(`epochs_that_fit`, with train.resolution.Pace). Plain arithmetic on numbers: no tensors.
"""

from __future__ import annotations

from imgcls.config import TrainConfig
from imgcls.train import distributed as D
from imgcls.train.report import log
from imgcls.train.resolution import Pace, epoch_size


def epoch_passes(epoch_images: int, n_train: int) -> int:
    """Whole passes over the training set per epoch for `--epoch-images` (0 = one)."""
    if epoch_images <= 0 or n_train <= 0:
        return 1
    return max(1, round(epoch_images / n_train))


def planned_epochs(epochs: int, epoch_images: int, n_train: int, shrink: float) -> int:
    """The epochs of a plan sized to the data: a recipe's `epochs` are for an epoch of
    `epoch_images` images; a larger training set shows more images an epoch, so it needs
    fewer passes, but more images in all: epochs * (epoch_images / n) ** shrink (the cpu
    preset: 0.25, so 20,000 photos train 20 of its 36 epochs: 5.4x the images of 2,048
    photos, in 9.8x the epoch; chosen so the full-size Cats vs Dogs job fits 30 minutes of a
    2-core bf16 CPU with room to spare, BENCHMARKS.md). Never more than `epochs`, never fewer
    than one."""
    if shrink <= 0 or epoch_images <= 0 or n_train <= epoch_images:
        return epochs
    return max(1, min(epochs, round(epochs * (epoch_images / n_train) ** shrink)))


# mixup's alpha under `--mixup auto` (the cpu preset) when an epoch passes over the training
# set at least MIXUP_MIN_PASSES times, i.e. up to ~500 photos at --epoch-images 2048. Measured
# with the cpu preset on catsdogs (BENCHMARKS.md, small folders): +2.5 points at 120 photos
# per class (9 passes), +2.8 at 240 (4 passes), and -1.9 at 1,000 per class (one pass),
# where it slows learning within 40 epochs.
AUTO_MIXUP, MIXUP_MIN_PASSES = 1.0, 4


def plan_run(cfg: TrainConfig, n_train: int, world: D.World) -> TrainConfig:
    """A fresh run's epochs, sized to its training set (--epochs-shrink), said in one line."""
    epochs = planned_epochs(cfg.epochs, cfg.epoch_images, n_train, cfg.epochs_shrink)
    if epochs != cfg.epochs:
        log(world, f"Plan: {epochs} epochs, not the recipe's {cfg.epochs}: each epoch passes "
             f"over all {n_train} training photos, and a larger set needs fewer passes "
             f"(--epochs-shrink {cfg.epochs_shrink:g}; --epochs N to choose)")
        cfg = cfg.replace(epochs=epochs)
    return cfg


def mixup_alpha(setting: float, passes: int) -> float:
    """The alpha a run uses: the setting, or for auto (-1) AUTO_MIXUP on a small set."""
    if setting >= 0:
        return setting
    return AUTO_MIXUP if passes >= MIXUP_MIN_PASSES else 0.0


# A budget's plan aims at this share of it: epoch times on a shared machine wander by ~10%
# (BENCHMARKS.md), and a plan aimed at all of it was cut (or re-timed downwards) by the
# first slow epoch; the rest absorbs such drift.
PLAN_SHARE = 0.95


def epochs_that_fit(cfg: TrainConfig, pace: Pace, epoch: int, planned: int, elapsed_s: float,
                    min_size: int = 1, share: float = 1.0) -> int:
    """The epochs the learning-rate schedule should run over: under --time-limit with a
    decaying schedule, as many as `share` of the time left allows at this run's pace so far
    (up to cfg.epochs), so the run still ends on the schedule's small final rates instead of
    being cut at a high one; otherwise the plan."""
    if not cfg.time_limit or cfg.schedule == "constant":
        return planned
    left = cfg.time_limit * 60 * share - elapsed_s
    # Up to cfg.epochs, not just the current plan: a first epoch slowed by warm-up may have
    # planned too few. Epochs still below the full size cost less (the current plan's ramp),
    # as much less as this run's own epochs have shown (train.resolution.Pace).
    fit, spent, predict = epoch + 1, 0.0, pace.predictor()
    while fit < cfg.epochs:
        spent += predict(epoch_size(cfg, fit, planned, min_size))
        if spent > left:
            break
        fit += 1
    return fit


# Photos in the fixed, seeded sample that validates the epochs below the full size, at each
# one's own size (BatchNorm's statistics then match, so no re-estimation either). Measured:
# on an AVX2 EPYC in float32, validating all 2,000 catsdogs photos at 160 px after every
# epoch, with BatchNorm re-estimated after each smaller one, was a third of the run
# (BENCHMARKS.md). Those early epochs are never the best; 512 photos put an accuracy within
# ~2 points (one standard error) for the curve.
VAL_SAMPLE = 512


def validates_fully(cfg: TrainConfig, epoch: int, epochs: int, min_size: int = 1) -> bool:
    """Whether the 0-based `epoch` validates every photo at the full size: the epochs at the
    full size (the only ones that may become the best; the last always is); the others
    check VAL_SAMPLE photos at their own size."""
    return epoch_size(cfg, epoch, epochs, min_size) == cfg.image_size


def fit_epochs(cfg: TrainConfig, pace: Pace, left_s: float, most: int, min_size: int = 1) -> int:
    """The most epochs, up to `most`, whose plan (each with its own resolution ramp) the
    pace puts within `left_s` seconds; at least one.

    A plan's seconds grow with its epochs (each epoch costs at least its low-resolution
    share), so a bisection finds it: a scan from `most` down was quadratic and spent minutes
    of a one-minute budget planning a recipe of 4,000 epochs."""
    if pace.plan_seconds(cfg, 0, most, most, min_size) <= left_s:
        return most
    lo, hi = 1, most  # lo: fits or is the floor; hi: does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pace.plan_seconds(cfg, 0, mid, mid, min_size) <= left_s:
            lo = mid
        else:
            hi = mid
    return lo
