"""BatchNorm statistics re-estimated before each validation, and the one-class detector.

Owns two guards against a model that is fine in training mode and useless in evaluation
mode. BatchNorm's running statistics are an exponential average over past steps (Keras's
momentum 0.99 in the tutorial's network): on a small folder (2 steps an epoch) they trail
the weights by tens of epochs, and the network in eval mode answers one class for every
photo. `recalibrate` recomputes them as an equal-weight average over training batches with
the current weights (no weight changes, no gradients), "precise BatchNorm" as in Wu and
Johnson, "Rethinking 'Batch' in BatchNorm" (2021). `collapse_warning` names the symptom
when it still happens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from imgcls.data.augment import to_float
from imgcls.train import distributed as D

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def needs_recalibration(model: nn.Module, steps_per_epoch: int) -> bool:
    """Whether some BatchNorm's running statistics reach back further than one epoch: an
    exponential average with momentum m (PyTorch's convention) weighs about the last 1/m
    steps, a cumulative one (momentum None) every step since the start. Keras's 0.99 is
    m = 0.01: 100 steps, 50 epochs of a 245-photo folder at batch 128. PyTorch's default
    0.1 settles within 10 steps, and re-estimating it then changed nothing measurable
    (BENCHMARKS.md, small folders) while costing a forward pass over the training set."""
    for m in model.modules():
        if isinstance(m, BATCHNORMS) and m.track_running_stats:
            if m.momentum is None or 1.0 / max(m.momentum, 1e-9) > steps_per_epoch:
                return True
    return False


@torch.no_grad()
def recalibrate(model: nn.Module, loader, max_images: int, micro: int, autocast,
                world: D.World) -> int:
    """Reset every BatchNorm's running mean and variance and re-estimate them over up to
    max_images training images (this rank's share), un-augmented, as validation sees them.
    Ranks average their estimates. Returns the number of images used on this rank."""
    bns = [m for m in model.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not bns or max_images <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()  # dropout off; only the BatchNorm layers compute batch statistics
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch counts the same
        m.train()
    used = 0
    try:
        for batch in loader:
            x = to_float(batch.images, next(model.parameters()).dtype)
            for lo in range(0, len(x), micro):
                part = x[lo:lo + micro]
                if len(part) < 2 and used:
                    continue  # one image's statistics would only add noise
                with autocast():
                    model(part)
                used += len(part)
            if used >= max_images:
                break
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    if world.active:
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                D.all_sum(world, buf)
                buf /= world.size
    return used


def collapse_warning(pred_counts: np.ndarray, true_counts: np.ndarray, val_accuracy: float,
                     train_accuracy: float, class_names: list[str], epoch: int,
                     preset: str = "") -> str | None:
    """A warning when validation predictions collapse to one class, or validation accuracy
    sits at the largest class's share while training accuracy climbs; else None."""
    n = int(true_counts.sum())
    present = int((true_counts > 0).sum())
    if n < 4 or present < 2:
        return None
    majority = float(true_counts.max()) / n
    top = int(pred_counts.argmax())
    # One answer for everything, once training has learnt something (at the very start an
    # untrained network may well answer one class: that is no news).
    one_class = int(pred_counts.max()) == int(pred_counts.sum()) and train_accuracy >= majority + 0.1
    stuck = epoch >= 3 and val_accuracy <= majority + 0.02 and train_accuracy >= majority + 0.2
    if not (one_class or stuck):
        return None
    what = (f"the model answers {class_names[top]!r} for every validation photo" if one_class
            else f"validation accuracy {val_accuracy:.4f} is no better than always answering the "
                 f"largest class ({majority:.4f})")
    tries = ("a smaller --batch-size or more photos" if preset == "cpu" else
             "--preset cpu, a smaller --batch-size or more photos")  # never the recipe in use
    return (f"epoch {epoch}: {what} while training accuracy is {train_accuracy:.4f}: the model "
            "has learnt nothing that carries to new photos. Likely causes: too few photos or "
            f"steps per epoch for this network (try {tries}), or a learning rate too high; "
            "`imgcls evaluate RUN` shows what it answers")
