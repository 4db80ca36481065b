"""What an epoch will cost, measured before the first one: the pace probe behind the budget.

Owns timing a few real training steps (forward, backward, the optimizer) at the first
epoch's size and at the full size, and a validation pass, on a copy of the model, so a run
with --time-limit can say its plan and its finish time before it starts, and size its
epochs to the budget on this machine (an AVX2 CPU in float32 is 6x slower than an AMX one in
bf16). The copy keeps the run itself untouched: its weights, optimizer state, BatchNorm
statistics and random streams are those of a run without the probe. The first real epochs
replace these estimates (resolution.Pace).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from imgcls.config import TrainConfig
from imgcls.data.augment import AugmentConfig, augment_batch, resize_batch, to_float
from imgcls.data.loader import BatchLoader
from imgcls.models import two_logits
from imgcls.train.optim import make_optimizer
from imgcls.train.plan import VAL_SAMPLE
from imgcls.train.resolution import epoch_size

STEPS = 3  # timed steps a size, after one warm-up step (oneDNN picks its kernels then)


def _step_seconds(model, opt, cfg: TrainConfig, batches: list, size: int, autocast,
                  dtype: torch.dtype, micro: int) -> float:
    """Seconds an optimizer step takes at `size` px, the median of the timed ones."""
    aug = AugmentConfig(cfg.flip, cfg.rotation, cfg.zoom, cfg.translate, cfg.brightness,
                        cfg.contrast)
    gen = torch.Generator(device=batches[0].images.device).manual_seed(0)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        x = resize_batch(to_float(b.images, dtype), size)
        x = augment_batch(x, aug, gen) if aug.active else x
        opt.zero_grad(set_to_none=True)
        for lo in range(0, len(x), micro):
            with autocast():
                loss = F.cross_entropy(two_logits(model(x[lo:lo + micro]).float()),
                                       b.labels[lo:lo + micro])
            loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[1:]) or times
    return timed[len(timed) // 2]


@torch.no_grad()
def _eval_seconds(model, batches: list, autocast, dtype: torch.dtype) -> float:
    """Seconds per image of a validation forward pass at the full size."""
    model.eval()
    times = []
    for b in batches:
        t0 = time.perf_counter()
        with autocast():
            model(to_float(b.images, dtype))
        times.append((time.perf_counter() - t0) / len(b.images))
    timed = sorted(times[1:]) or times
    return timed[len(timed) // 2]


def probe(cfg: TrainConfig, model: torch.nn.Module, train: BatchLoader, n_val: int,
          steps: int, epochs: int, min_size: int, autocast, dtype: torch.dtype,
          micro: int) -> list[tuple[int, float]]:
    """(px, predicted seconds of an epoch at that size) for the plan's first size and its
    full size, from steps timed on a copy of the model: `steps` optimizer steps an epoch,
    then its validation (a sample at smaller sizes, every photo at the full size)."""
    twin = copy.deepcopy(model)
    twin.train()
    opt = make_optimizer(cfg, twin)
    train.set_epoch(0)
    batches = []
    for b in train:
        batches.append(b)
        if len(batches) == STEPS + 1:
            break
    per_eval = _eval_seconds(twin, batches[:2], autocast, dtype)
    twin.train()
    full = cfg.image_size
    sizes = sorted({epoch_size(cfg, 0, epochs, min_size), full})
    out = []
    for size in sizes:
        step = _step_seconds(twin, opt, cfg, batches, size, autocast, dtype, micro)
        val = n_val * per_eval if size == full else \
            min(n_val, VAL_SAMPLE) * per_eval * (size / full) ** 2
        out.append((size, steps * step + val))
    return out


def plan_to_budget(cfg: TrainConfig, state, train: BatchLoader, n_val: int, world,
                   device: torch.device, started: float) -> str:
    """Probe the pace, fit the run's epochs (and so its resolution ramp and learning-rate
    schedule) to --time-limit, and return the line that says the plan and its finish."""
    from imgcls.train import distributed as D
    from imgcls.train.plan import PLAN_SHARE, fit_epochs
    from imgcls.words import count, duration

    state.pace.probed = probe(cfg, state.model, train, -(-n_val // world.size), state.steps,
                              state.epochs, state.min_size, state.autocast, state.dtype,
                              state.micro)
    now = time.perf_counter()
    left = cfg.time_limit * 60 * PLAN_SHARE - (now - started)
    fit = fit_epochs(cfg, state.pace, left, cfg.epochs, state.min_size)
    fit = int(-D.agree(world, device, fit=-fit)["fit"])  # the fewest any rank's clock allows
    if fit != state.epochs:
        state.plan(fit)
    rest = state.pace.plan_seconds(cfg, 0, fit, fit, state.min_size)
    finish = time.strftime("%H:%M", time.localtime(time.time() + rest))
    every = state.pace.plan_seconds(cfg, 0, cfg.epochs, cfg.epochs, state.min_size)
    whole = (f"the recipe's {cfg.epochs} epochs" if fit == cfg.epochs else
             f"{fit} of the recipe's {cfg.epochs} epochs (all {cfg.epochs}: {duration(every)})")
    return (f"Plan: {whole} in {duration(now - started + rest)} with the set-up, ending "
            f"near {finish} (--time-limit {count(cfg.time_limit, 'minute')}; 0 for the "
            "recipe's own length)")
