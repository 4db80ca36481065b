"""Progressive resizing: the resolution each epoch trains at, and what it costs.

Owns the plan behind `low_res` / `low_res_until`: the first epoch trains at `low_res` times
the image size, the size rises linearly to the full size by `low_res_until` of the epochs
and stays there, so the last epochs (and validation, always at the full size) see what
prediction will see. Early epochs at lower resolution are cheaper, which buys more epochs in
the same time, as in fastai's and FFCV's recipes. Sizes are multiples of 16 px, so a run
meets only a few shapes (each one a fresh set of oneDNN kernels, or a recompile under
torch.compile).

What an epoch costs is counted as size / full, not (size / full)^2: a convolution's work
scales with the pixels, but loading, augmenting and validating do not, and on 2 CPU cores
epochs at 64 / 80 / 96 / 112 px took 0.45 / 0.57 / 0.76 / 0.92 of a 128 px epoch
(BENCHMARKS.md). The time limit plans with this cost, so it must not flatter small epochs.
"""

from __future__ import annotations

from imgcls.config import TrainConfig

STEP = 16  # px: sizes are rounded to this
# Images (per rank) that re-estimate BatchNorm's statistics at the full size after an epoch
# at a smaller one, for its validation only: the next epoch's batches replace them within a
# few dozen steps. 1,024 images put a channel's mean within ~3% of its spread (1/sqrt(1024));
# bn_recalibrate's 4,096 at full size cost more than a 64 px training epoch of 2,048.
SIZE_RECAL = 1024


def epoch_size(cfg: TrainConfig, epoch: int, epochs: int, min_size: int = 1) -> int:
    """px the 0-based `epoch` of `epochs` trains at (cfg.image_size without low_res); never
    below the network's smallest input (`min_size`, px)."""
    full = cfg.image_size
    if not cfg.low_res or cfg.low_res >= 1:
        return full
    ramp = max(1.0, cfg.low_res_until * epochs)  # epochs over which the size rises
    frac = min(1.0, cfg.low_res + (1 - cfg.low_res) * epoch / ramp)
    size = round(full * frac / STEP) * STEP
    return min(full, max(size, min_size, STEP))  # never above the full size, however small


def epoch_cost(cfg: TrainConfig, epoch: int, epochs: int, min_size: int = 1) -> float:
    """An epoch's time as a fraction of a full-size epoch's (measured: see above)."""
    return epoch_size(cfg, epoch, epochs, min_size) / cfg.image_size


def full_epochs(cfg: TrainConfig, start: int, end: int, epochs: int, min_size: int = 1) -> float:
    """Epochs start..end-1 of a plan of `epochs`, counted in full-size epochs."""
    return sum(epoch_cost(cfg, e, epochs, min_size) for e in range(start, end))


def ramp_line(cfg: TrainConfig, epochs: int, min_size: int = 1) -> str:
    """One line saying the plan's sizes and what they save ("" when all are full size)."""
    sizes = [epoch_size(cfg, e, epochs, min_size) for e in range(epochs)]
    full = sizes.index(cfg.image_size) if cfg.image_size in sizes else epochs
    if full == 0:
        return ""
    saved = 1 - full_epochs(cfg, 0, epochs, epochs, min_size) / epochs
    return (f"Resolution: epochs 1-{full} at {sizes[0]}-{sizes[max(full - 1, 0)]} px, then "
            f"{cfg.image_size} px (--low-res {cfg.low_res:g}; about {saved:.0%} less training "
            "time; validation always at full size)")
