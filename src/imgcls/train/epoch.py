"""One epoch: the optimizer steps over a training epoch, and one validation pass.

Owns how a step is taken (micro-batches that add up to the batch, mixup, class weights,
gradient scaling, DDP's single all-reduce per step), how often the ranks agree on stopping,
and the validation sums that every rank ends up sharing. The run around it (data, state,
checkpoints, stop rules) is loop.py's; how many epochs and passes, plan.py's.
"""

from __future__ import annotations

import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls.config import TrainConfig
from imgcls.data.augment import AugmentConfig, augment_batch, resize_batch, to_float
from imgcls.data.loader import BatchLoader
from imgcls.models import two_logits
from imgcls.train import distributed as D
from imgcls.train.optim import group_rate, lr_factor
from imgcls.train.resolution import epoch_size

if TYPE_CHECKING:
    from imgcls.train.state import StopFlag, TrainState


def _passes(n: int, micro: int) -> list[tuple[int, int]]:
    """Split a batch of n into about n / micro passes of near-equal size: never a pass of
    one image unless micro is 1 (BatchNorm on a single image is noise, or an error)."""
    k = -(-n // max(1, micro))
    if micro > 1 and k > 1 and n // k < 2:
        k = max(1, n // 2)  # passes of 2 or 3: one image over the memory estimate at most
    bounds = [round(i * n / k) for i in range(k + 1)]
    return list(zip(bounds, bounds[1:]))


def mixup(x: torch.Tensor, labels: torch.Tensor, alpha: float):
    """(images, partner labels, weight): mixup (Zhang et al., 2018), one weight per batch
    drawn from Beta(alpha, alpha), each image blended with another of the same batch; the
    loss is weight * CE(labels) + (1 - weight) * CE(partner labels). alpha 0: unchanged.
    Draws from torch's global generator, which each epoch seeds and checkpoints restore."""
    if alpha <= 0 or len(labels) < 2:
        return x, labels, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)  # the batch's own labels stay the larger share
    perm = torch.randperm(len(labels)).to(labels.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), labels[perm], lam


def _inputs(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A batch as the network's input: uint8 photos (B, H, W, 3) as floats (B, 3, H, W);
    stored trunk outputs (train.features) as they are, in the model's dtype."""
    return to_float(images, dtype) if images.dtype == torch.uint8 else images.to(dtype)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the loss: float32 from a bf16/fp16 pass, float64 kept as it is."""
    return logits if logits.dtype == torch.float64 else logits.float()


@dataclass
class EpochOutcome:
    sums: torch.Tensor  # loss * images, correct, images (float64, this rank)
    seen: int
    seconds: float
    step: int  # steps done
    stop: dict  # the agreed flags at the last agreement


def train_epoch(state: TrainState, cfg: TrainConfig, loader: BatchLoader, world: D.World,
                device: torch.device, stop: StopFlag, start_step: int, bar=None,
                hint: Callable | None = None) -> EpochOutcome:
    """Optimizer steps over one epoch (from start_step). Every `check` steps and at the
    epoch's last step the ranks agree on whether to stop (signal or non-finite loss)."""
    state.net.train()
    aug_cfg = AugmentConfig(cfg.flip, cfg.rotation, cfg.zoom, cfg.translate, cfg.brightness,
                            cfg.contrast)
    size = epoch_size(cfg, state.epoch, state.epochs, state.min_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    seen, seconds = 0, 0.0
    if state.partial:  # the interrupted epoch's sums over all ranks: counted once, on rank 0
        if world.main:
            sums += torch.tensor(state.partial[:3], dtype=torch.float64, device=device)
        seen, seconds = int(state.partial[3]) // world.size, float(state.partial[4])
    # The first non-finite loss's global step + 1 (0 = none): kept on the device so a GPU
    # never waits for it between agreements.
    bad_at = torch.zeros((), dtype=torch.float64, device=device)
    # On one CPU process every step is checked (free); elsewhere every 8 (a sync each).
    check = 1 if not world.active and device.type == "cpu" else 8
    t0, step, flags = time.perf_counter(), start_step, {}
    for batch in loader:
        g = state.epoch * state.steps + step
        frozen = g < cfg.freeze_epochs * state.steps
        for group in state.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(g, state.total_steps, state.warmup, cfg.schedule) \
                * group_rate(group, frozen)
        x = _inputs(batch.images, state.dtype)
        if state.top is None:  # photos; stored trunk outputs come flipped or not already
            x = resize_batch(x, size)
            if aug_cfg.active:
                x = augment_batch(x, aug_cfg, state.aug_gen)
        n = len(batch.labels)
        state.opt.zero_grad(set_to_none=True)
        step_loss = _gradients(state, cfg, x, batch.labels, sums)
        bad_at = torch.where((bad_at == 0) & ~torch.isfinite(step_loss), g + 1.0, bad_at)
        sums[0] += step_loss * n
        if state.scaler is not None:
            state.scaler.step(state.opt)
            state.scaler.update()
        else:
            state.opt.step()
        sums[2] += n
        seen += n
        step += 1
        if hint is not None and step - start_step == 3:
            hint(time.perf_counter() - t0, 3)
        if bar is not None:
            bar.update()
            if step % 10 == 0 or step == state.steps:
                bar.set_postfix(loss=f"{sums[0].item() / max(1, sums[2].item()):.4f}")
        if step % check == 0 or step == state.steps:
            flags = D.agree(world, device, signal=stop.signal is not None,
                            nonfinite=bad_at.item())
            if flags["signal"] and stop.signal is None:
                stop.signal = signal.SIGTERM  # another rank was told to stop
            if flags["signal"] or flags["nonfinite"]:
                break
    return EpochOutcome(sums, seen, seconds + time.perf_counter() - t0, step, flags)


def _gradients(state: TrainState, cfg: TrainConfig, x: torch.Tensor, labels: torch.Tensor,
               sums: torch.Tensor) -> torch.Tensor:
    """One step's gradients, over passes of at most state.micro images (mixup, class
    weights); adds the correct answers to sums[1]; returns the step's loss (float64)."""
    n = len(labels)
    x, partner, lam = mixup(x, labels, state.mixup)
    denom = state.weights[labels].sum() if state.weights is not None else n
    parts = _passes(n, state.micro)
    step_loss = torch.zeros((), dtype=torch.float64, device=x.device)
    for j, (lo, hi) in enumerate(parts):
        xs, ys, ys2 = x[lo:hi], labels[lo:hi], partner[lo:hi]
        # DDP: all-reduce gradients once per step, on the last pass only.
        last = j == len(parts) - 1
        sync = nullcontext() if last or not hasattr(state.net, "no_sync") else state.net.no_sync()
        with sync:
            with state.autocast():
                logits = two_logits(_wide(state.net(xs)))
                # A sum over the pass over the whole batch's weight: passes add up to the
                # full batch's (weighted) mean, with class weights too.
                loss = F.cross_entropy(logits, ys, weight=state.weights, reduction="sum",
                                       label_smoothing=cfg.label_smoothing) / denom
                if lam < 1.0:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(
                        logits, ys2, weight=state.weights, reduction="sum",
                        label_smoothing=cfg.label_smoothing) / denom
            (state.scaler.scale(loss) if state.scaler is not None else loss).backward()
        step_loss += loss.detach().double()
        # Accuracy against the label that dominates each mixed image.
        sums[1] += (logits.detach().argmax(1) == (ys if lam >= 0.5 else ys2)).sum()
    return step_loss


@dataclass
class Validation:
    loss: float  # mean cross-entropy
    accuracy: float
    pred_counts: np.ndarray  # (C,) how often each class was answered
    true_counts: np.ndarray  # (C,) images of each class


@torch.no_grad()
def run_validation(model: nn.Module, loader: BatchLoader, world: D.World, autocast,
                   n_classes: int, size: int | None = None) -> Validation:
    """Loss, accuracy and answer counts over every image of `loader`, across all ranks, at
    `size` px (None: as the loader gives them, the full size)."""
    model.eval()
    dev = loader.device
    dtype = next(model.parameters()).dtype
    sums = torch.zeros(3 + 2 * n_classes, dtype=torch.float64, device=dev)  # loss, correct, n
    for b in loader:
        x = _inputs(b.images, dtype)
        if size is not None:
            x = resize_batch(x, size)
        with autocast():
            logits = two_logits(_wide(model(x)))
        pred = logits.argmax(1)
        sums[0] += F.cross_entropy(logits, b.labels, reduction="sum").double()
        sums[1] += (pred == b.labels).sum()
        sums[2] += len(b.labels)
        sums[3:3 + n_classes] += torch.bincount(pred, minlength=n_classes)[:n_classes]
        sums[3 + n_classes:] += torch.bincount(b.labels, minlength=n_classes)[:n_classes]
    D.all_sum(world, sums)
    s = sums.cpu().numpy()
    n = max(s[2], 1)
    return Validation(s[0] / n, s[1] / n, s[3:3 + n_classes], s[3 + n_classes:])
