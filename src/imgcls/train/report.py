"""What a run says: the precision line, the epoch line, the CPU hint, progress bars,
TensorBoard, and rank 0's messages (other ranks stay quiet).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imgcls.config import TrainConfig
from imgcls.errors import PeerError, UserError
from imgcls.logs import NOTE
from imgcls.train import distributed as D
from imgcls.train.resolution import Pace
from imgcls.words import duration as _minutes

logger = logging.getLogger(__name__)


def log(world: D.World, text: str, file=None) -> None:
    """Rank 0's message, logged: a line for stdout (file None), or with file=sys.stderr a
    note or warning by its prefix ("imgcls: note: ", "imgcls: warning: "). Other ranks
    stay quiet."""
    if not world.main:
        return
    if file is None:
        logger.info(text)
    elif text.startswith("imgcls: warning: "):
        logger.warning(text[len("imgcls: warning: "):])
    else:
        logger.info(text.removeprefix("imgcls: note: ").removeprefix("imgcls: "), extra=NOTE)


def stop_everywhere(world: D.World, message: str):
    """Raise the same stop on every rank; only rank 0's is printed."""
    raise UserError(message) if world.main else PeerError(message)


def precision_line(device: torch.device, amp: str) -> str:
    from imgcls.runtime import precision_for

    p = precision_for(device.type, amp)
    if p == "fp64":
        return "float64 throughout (--amp fp64: for checking, several times slower)"
    if p == "fp32":
        why = ("--amp off" if amp == "off" else "--amp auto: this CPU has no native bf16")
        return f"float32 ({why})"
    why = {"auto": "this CPU computes bf16 natively" if device.type == "cpu" else "the GPU's",
           "bf16": "--amp bf16", "fp16": "--amp fp16"}[amp]
    return f"{p} mixed precision, weights in float32 ({why}; --amp off for float32)"


def epoch_line(h: dict, epochs: int) -> str:
    return (f"Epoch {h['epoch']}/{epochs}  loss {h['loss']:.4f}  accuracy {h['accuracy']:.4f}  "
            f"val_loss {h['val_loss']:.4f}  val_accuracy {h['val_accuracy']:.4f}  "
            f"{h['images_per_s']:.1f} img/s  {h['seconds']:.1f}s")


# A later estimate of the run's length is said again when it differs from the last one said
# by more than this share (and a minute: a short run's warm-up is no news). After one epoch
# only one size is timed: on the AVX2 EPYC in float32 the first line put a progressive
# full-size run at 77 minutes (+32% once an 80 px epoch was timed; it took nearer two hours;
# convolutions dominate there, the side rule was measured where loading weighs as much), and
# the user heard nothing more. Not less: epoch times on a shared 2-core machine wander by
# ~10% and the fit's reach to the full size doubles that (catsdogs there, three seeds: the
# estimates moved within -20% / +16% of the first one around what the runs took).
REVISE = 0.25


def pace_note(cfg: TrainConfig, h: dict, first: bool, planned: int, pace: Pace, said: float,
              min_size: int = 1) -> tuple[str, float]:
    """After epoch h["epoch"]: the pace line to print ("" for none) and the run's length in
    seconds the user has now been told (`said` before it). After a session's first epoch,
    how long the run takes at this pace and what --time-limit gives up (or would give);
    after a later one, the length again if it moved by more than REVISE (never under
    --time-limit, whose re-fits say it)."""
    done = h["epoch"]
    if done >= planned:
        return "", said
    left = pace.plan_seconds(cfg, done, planned, planned, min_size)
    total = h["elapsed_s"] + left
    if not first:
        if cfg.time_limit or not said or abs(total - said) <= max(REVISE * said, 60.0):
            return "", said
        return (f"imgcls: note: revised: the run's {planned} epochs take "
                f"{_minutes(total)} in all, {_minutes(left)} from now (said before: "
                f"{_minutes(said)}; the latest epoch, at {pace.seen[-1][0]} px, took "
                f"{pace.seen[-1][1]:.0f} s)"), total
    unit = "a full-size epoch" if cfg.low_res else "an epoch"
    line = (f"imgcls: note: at this pace ({pace.seconds(cfg.image_size):.0f} s {unit}) the "
            f"run's {planned} epochs take {_minutes(total)} in all, {_minutes(left)} "
            "from now")
    if cfg.time_limit and planned < cfg.epochs:
        every = h["elapsed_s"] + pace.plan_seconds(cfg, done, cfg.epochs, cfg.epochs, min_size)
        line += (f"; --time-limit {cfg.time_limit:g} fits {planned} of its {cfg.epochs} "
                 f"epochs (all {cfg.epochs}: {_minutes(every)})")
    elif not cfg.time_limit:
        line += "; --time-limit MIN fits the schedule to a budget"
    return line, total


def cpu_hint(cfg: TrainConfig, steps: int, seconds: float, done: int) -> None:
    """On a CPU, say what the tutorial recipe will cost and point to the CPU preset."""
    if cfg.model != "xception" or done <= 0:
        return
    per_epoch = seconds / done * steps
    if per_epoch < 300:
        return
    logger.info(f"on this CPU one epoch of {cfg.model} at {cfg.image_size} px takes "
                f"{_minutes(per_epoch)} ({cfg.epochs} epochs: {_minutes(per_epoch * cfg.epochs)}). "
                "`--preset cpu` trains a CPU-sized network instead (see BENCHMARKS.md).",
                extra=NOTE)


# Below this many training photos a run from scratch is told, once, of --init: on a folder of
# 250 Cats vs Dogs photos the cpu recipe reached 0.78 and EfficientNet-Lite0's ImageNet
# weights 0.95+ (BENCHMARKS.md, "Start from a model that knows photos"); at 2,000 photos
# 0.91 against 0.98. Above it the gap narrows and the hint would be noise.
HINT_BELOW = 10_000


def imagenet_hint(cfg: TrainConfig, n_train: int) -> str:
    """The one line that points a small run from scratch at ImageNet weights ("" for none)."""
    if cfg.init or n_train >= HINT_BELOW:
        return ""
    return (f"imgcls: note: {n_train} training photos are few to learn from scratch; a model "
            "that already knows photos would likely do much better: add --init "
            "efficientnet-lite0 (ImageNet weights, installed with imgcls)")


def progress_bar(world: D.World, steps: int, epoch: int, epochs: int, initial: int):
    from imgcls.runtime import interactive

    if not world.main or not interactive():
        return None
    from tqdm.auto import tqdm  # widgets in Jupyter, text elsewhere

    return tqdm(total=steps, initial=initial, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                leave=False, dynamic_ncols=True)


def tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tb"))
