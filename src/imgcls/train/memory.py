"""How many images one forward/backward pass holds: the activation estimate and free memory.

Owns the micro-batch decision: a step's batch is split into passes that fit in free memory
(gradients add up to the batch's), with the note that says so.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from imgcls.config import TrainConfig
from imgcls.train import distributed as D
from imgcls.train.report import log


def micro_batch(cfg: TrainConfig, model: nn.Module, per_rank: int, device: torch.device,
                world: D.World) -> int:
    """Images per pass: --micro-batch, or the largest that fits (auto_micro_batch); said
    when a step is split."""
    micro = min(cfg.micro_batch or auto_micro_batch(model, cfg.image_size, per_rank, device),
                per_rank)
    if micro < per_rank:
        log(world, f"imgcls: note: {per_rank} images at once do not fit in free memory here; "
             f"each step accumulates gradients over passes of about {micro} (BatchNorm sees "
             f"{micro} images at a time; --micro-batch to choose)" if not cfg.micro_batch else
             f"imgcls: note: each step accumulates gradients over passes of about {micro} images",
             file=sys.stderr)
    if micro == 1 or per_rank == 1:
        log(world, "imgcls: warning: BatchNorm sees one image at a time per rank: its batch "
             "statistics are noise; use a larger --batch-size (or --micro-batch)", file=sys.stderr)
    return micro


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: assume it fits


def auto_micro_batch(model: nn.Module, size: int, batch: int, device: torch.device) -> int:
    """Largest divisor of batch whose activations fit in 60% of free memory.

    Activation bytes per image = the sum of every layer's output for one image (measured by
    a no-grad forward), doubled for gradients and allocator slack. The tutorial's network at
    180 px needs ~115 MB per image, so its batch of 128 (~30 GB) was killed by the kernel's
    OOM killer on a 24 GB machine before this existed.
    """
    total = [0]

    def hook(mod, inp, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per_image = 2 * total[0]
    budget = 0.6 * available_memory(device)
    if batch * per_image <= budget:
        return batch
    micro = max(1, int(budget // per_image))
    while batch % micro:
        micro -= 1
    return micro
