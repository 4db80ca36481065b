"""Progressive resizing: the resolution each epoch trains at, and what it costs.

Owns the plan behind `low_res` / `low_res_until`: the first epoch trains at `low_res` times
the image size, the size rises linearly to the full size by `low_res_until` of the epochs
and stays there, so the last epochs (and validation, always at the full size) see what
prediction will see. Early epochs at lower resolution are cheaper, which buys more epochs in
the same time, as in fastai's and FFCV's recipes. Sizes are multiples of 16 px, so a run
meets only a few shapes (each one a fresh set of oneDNN kernels, or a recompile under
torch.compile).

What an epoch costs before any epoch has been timed is counted as size / full, not (size /
full)^2: a convolution's work scales with the pixels, but loading, augmenting and validating
do not, and on the Intel AMX machine (bf16) epochs at 64 / 80 / 96 / 112 px took 0.45 /
0.57 / 0.76 / 0.92 of a 128 px epoch (BENCHMARKS.md). How the two shares weigh depends on
the machine, so once a run has timed epochs of two sizes `Pace` learns them (the time limit
and the pace line plan with it, so it must not flatter small epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

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
    if not cfg.low_res or cfg.low_res >= 1 or epochs <= 1:
        return full
    # Epochs over which the size rises: the last epoch is always at the full size, however
    # short the plan (a 3-epoch run ended at 112 of 128 px and was never validated whole).
    ramp = max(1.0, min(cfg.low_res_until * epochs, epochs - 1))
    frac = cfg.low_res + (1 - cfg.low_res) * epoch / ramp
    if frac >= 1:  # the full size itself, not its nearest multiple of STEP (180 -> 176)
        return full
    size = round(full * frac / STEP) * STEP
    return min(full, max(size, min_size, STEP))  # never above the full size, however small


def epoch_cost(cfg: TrainConfig, epoch: int, epochs: int, min_size: int = 1) -> float:
    """An epoch's time as a fraction of a full-size epoch's (measured: see above)."""
    return epoch_size(cfg, epoch, epochs, min_size) / cfg.image_size


@dataclass
class Pace:
    """Seconds an epoch of a given size takes, learnt from the epochs this process ran: the
    clock of the time limit and of the pace line.

    One size timed: the probe's curve (train.probe timed two sizes) scaled to that epoch, or
    without a probe seconds in proportion to the side (epoch_cost's rule). Two or more: t = a
    + b * size^2 fitted to each size's median epoch (a: what the pixels do not drive,
    validation at the full size and loading; b: the convolutions, which weigh more on a slow
    CPU). On the AVX2 EPYC in float32, epochs at 64 / 80 / 96 / 128 px took 135 / 177 / 240 /
    392 s, which the fit meets within 3% (and puts 160 px at 587 s: it took 557), while the
    side rule put a 160 px epoch at 338 s, so a 30-minute budget was re-fitted four times
    (9, 7, 6, 5 epochs).
    The AMX Xeon's bf16 epochs (0.45 / 0.57 / 0.76 / 0.92 of a 128 px one at 64-112 px) come
    out 15% dear at 128 px: a plan a little short that grows, the safe side. A machine that
    slows down late (other work started on it) is planned at its latest pace, never faster."""

    seen: list[tuple[int, float]] = field(default_factory=list)  # (px, seconds) per epoch
    # (px, seconds) estimated before any epoch ran (train.probe): used until one has
    probed: list[tuple[int, float]] = field(default_factory=list)

    def add(self, size: int, seconds: float) -> None:
        self.seen.append((size, seconds))

    def seconds(self, size: int) -> float:
        """Predicted seconds of an epoch at `size` px (0 before any epoch was timed or
        probed)."""
        return self.predictor()(size)

    def predictor(self):
        """size (px) -> predicted seconds, fitted once to what has been seen so far."""
        points = self.seen or self.probed
        if not points:
            return lambda size: 0.0
        if self.probed and len({s for s, _ in self.seen}) == 1:
            # One size timed for real: the probe's curve over sizes, scaled to that epoch.
            # The side rule alone put the full job's 18 epochs at 17 minutes after a 64 px
            # epoch, though the probe had timed 160 px and planned 24 (they took 25).
            probed = self._model(self.probed)
            size, t = self.seen[-1]
            scale = t / max(probed(size), 1e-9)
            return lambda s: probed(s) * scale
        last_size, last = points[-1]
        model = self._model(points)
        slower = max(1.0, last / max(model(last_size), 1e-9))  # the latest epoch's pace
        return lambda size: model(size) * slower

    def plan_seconds(self, cfg: TrainConfig, start: int, end: int, epochs: int,
                     min_size: int = 1) -> float:
        """Predicted seconds of epochs start..end-1 of a plan of `epochs`."""
        predict = self.predictor()  # fitted once for the whole plan, not once an epoch
        return sum(predict(epoch_size(cfg, e, epochs, min_size)) for e in range(start, end))

    @staticmethod
    def _model(seen: list[tuple[int, float]]):
        by_size: dict[int, list[float]] = {}
        for size, t in seen:
            by_size.setdefault(size, []).append(t)
        points = [(s, median(ts)) for s, ts in sorted(by_size.items())]
        fit = _fit(points)
        if fit is not None:
            a, b = fit
            return lambda size: a + b * size * size
        size0, t0 = points[-1]  # the largest size timed
        return lambda size: t0 * size / size0


def _fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares t = a + b * size^2 over (size, seconds): (a, b), or None for fewer than
    two sizes or a fit that is not a cost (a < 0, b <= 0)."""
    if len(points) < 2:
        return None
    xs, ys = [s * s for s, _ in points], [t for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    return (a, b) if b > 0 and a >= 0 else None


def full_epochs(cfg: TrainConfig, start: int, end: int, epochs: int, min_size: int = 1) -> float:
    """Epochs start..end-1 of a plan of `epochs`, counted in full-size epochs."""
    return sum(epoch_cost(cfg, e, epochs, min_size) for e in range(start, end))


def ramp_line(cfg: TrainConfig, epochs: int, min_size: int = 1, sampled: bool = True) -> str:
    """One line saying the plan's sizes and what they save ("" when all are full size);
    `sampled`: the smaller epochs validate a fixed sample (a small validation set is
    checked whole, at the full size, every epoch)."""
    sizes = [epoch_size(cfg, e, epochs, min_size) for e in range(epochs)]
    full = sizes.index(cfg.image_size)  # the last epoch always is at the full size
    if full == 0:
        return ""
    saved = 1 - full_epochs(cfg, 0, epochs, epochs, min_size) / epochs
    lo, hi = sizes[0], sizes[full - 1]
    which = (f"epoch 1 at {lo}" if full == 1 else
             f"epochs 1-{full} at {lo}" + (f"-{hi}" if hi != lo else ""))
    check = ("a fixed sample at each epoch's size until then, every photo at the full size "
             "from there (only those epochs may be the best)" if sampled else
             "every photo at the full size, every epoch")
    return (f"Resolution: {which} px, then {cfg.image_size} px (--low-res {cfg.low_res:g}; "
            f"about {saved:.0%} less training time); validation: {check}")
