"""The rules that end a run or pick its best epoch, after each epoch.

Owns what happens between one epoch and the next: which epoch is the best so far and may be
(monitor; a sampled validation is not comparable), the stop rules (a signal, divergence,
the time limit, patience: agreed by every rank through distributed.agree), re-timing the
schedule to the epochs a time limit fits, and the message a diverged run ends with.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from imgcls.checkpoint import LAST
from imgcls.config import TrainConfig
from imgcls.fsutil import display
from imgcls.train import distributed as D
from imgcls.train.plan import PLAN_SHARE, epochs_that_fit
from imgcls.train.report import log
from imgcls.train.resolution import epoch_size
from imgcls.train.state import FitResult, StopFlag, TrainState
from imgcls.words import count

MAXIMIZE = {"val_accuracy": True, "accuracy": True, "val_loss": False, "loss": False}


def diverged_message(cfg: TrainConfig, global_step: int, steps: int, run: Path,
                     last_epoch: int) -> str:
    epoch, step = divmod(global_step - 1, steps)
    kept = (f"the last finite checkpoint is kept ({display(run / LAST)}, epoch {last_epoch})"
            if last_epoch else "no epoch had finished, so nothing was saved")
    return (f"training diverged: the loss became NaN or infinite at epoch {epoch + 1}, step "
            f"{step + 1} (learning rate {cfg.lr:g}, weight decay {cfg.weight_decay:g}; a "
            f"learning rate or weight decay too high is the usual cause); {kept}")


def epoch_stops(cfg: TrainConfig, state: TrainState, h: dict, stop: StopFlag,
                world: D.World, device: torch.device) -> dict:
    """The stop rules after an epoch, agreed by every rank (each rank's clock and signals
    may differ; the validation metrics are already the same everywhere)."""
    # Another epoch is out of time when the pace (the same the plan is fitted by) puts its
    # end past the budget: the plan then ends here too, unless an epoch ran slower than
    # the pace predicted.
    nxt = epoch_size(cfg, state.epoch + 1, state.epochs, state.min_size)
    out_of_time = bool(cfg.time_limit and state.epoch + 1 < state.epochs and
                       h["elapsed_s"] + state.pace.seconds(nxt) > cfg.time_limit * 60)
    patience = bool(cfg.patience and state.bad_epochs >= cfg.patience)
    # After the first epoch (which corrects the probe's estimate) the plan may grow, aimed
    # at PLAN_SHARE of the budget; later it only shrinks, when its end would pass the budget:
    # a plan grown late raises the learning rate again, and one re-timed at every epoch's
    # jitter makes its rate and resolution jump back and forth. A plan that shrinks is aimed
    # at PLAN_SHARE again: one aimed at all of the budget was cut, an epoch before its end
    # at a rate 10x its last, by the next epoch a little slower than the pace.
    first = state.epoch == 0

    def fit_at(share: float) -> int:
        return epochs_that_fit(cfg, state.pace, state.epoch, state.epochs, h["elapsed_s"],
                               state.min_size, share)

    fit = fit_at(PLAN_SHARE if first else 1.0)
    if not first:
        fit = state.epochs if fit >= state.epochs else fit_at(PLAN_SHARE)
    # max of -fit: the fewest epochs any rank's clock allows.
    return D.agree(world, device, signal=stop.signal is not None, time=out_of_time,
                   patience=patience, fit=-fit,
                   nonfinite=not (math.isfinite(h["val_loss"]) and math.isfinite(h["loss"])))


def refit_schedule(cfg: TrainConfig, state: TrainState, fit: int, world: D.World) -> None:
    if fit == state.epochs:
        return
    if abs(fit - state.epochs) >= 2 or state.epochs == cfg.epochs:  # small drifts quietly
        log(world, f"Time limit: at this pace {count(fit, 'epoch')} fit in "
                   f"{count(cfg.time_limit, 'minute')}; the {cfg.schedule} learning-rate "
                   f"schedule now ends with epoch {fit} (was {state.epochs})")
    state.plan(fit)


def score_epoch(cfg: TrainConfig, state: TrainState, h: dict, result: FitResult) -> bool:
    """Add the epoch to the history; whether it is the best so far by cfg.monitor. Only an
    epoch validated on every photo at the full size may be the best, or count towards
    --patience, by a validation metric (a sample at a smaller size is not comparable)."""
    state.history.append(h)
    if cfg.monitor.startswith("val_") and not h.get("val_full", True):
        return False
    value = h[cfg.monitor]
    improved = state.best is None or (value > state.best if MAXIMIZE[cfg.monitor] else value < state.best)
    if improved:
        state.best, state.bad_epochs, result.best_epoch = value, 0, state.epoch + 1
    else:
        state.bad_epochs += 1
    return improved


def best_epoch(cfg: TrainConfig, history: list[dict]) -> int:
    """The best epoch by cfg.monitor among those that may be (_score_epoch's rule)."""
    ok = [h for h in history if h.get("val_full", True) or not cfg.monitor.startswith("val_")]
    if not ok:
        return 0
    pick = max if MAXIMIZE[cfg.monitor] else min
    return pick(ok, key=lambda h: h[cfg.monitor])["epoch"]
