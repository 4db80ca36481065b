"""A Keras-style layer table: name, type, output shape and parameters of each layer."""

from __future__ import annotations

import torch
import torch.nn as nn

from imgcls.models.layers import InputScale
from imgcls.models.xception import SameMaxPool, SeparableConv

# Modules shown as one row; their children are not listed separately.
_ATOMIC = (SeparableConv, SameMaxPool, InputScale)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, non-trainable): BatchNorm running statistics count as non-trainable,
    as in Keras; num_batches_tracked does not."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(b.numel() for n, b in model.named_buffers()
                if n.endswith(("running_mean", "running_var")))
    return trainable, frozen + stats


def summary(model: nn.Module, image_size: tuple[int, int]) -> str:
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    skip: set[str] = set()
    for name, mod in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(mod, _ATOMIC) or not list(mod.children()):
            if isinstance(mod, _ATOMIC):
                skip.add(name)

            def hook(m, inp, out, name=name):
                n_params = sum(p.numel() for p in m.parameters())
                rows.append((name, type(m).__name__, str(tuple(out.shape[1:])), n_params))
            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *image_size)
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
        gflop = fc.get_total_flops() / 1e9
    except ImportError:  # pragma: no cover - torch < 2.1
        with torch.no_grad():
            model(x)
        gflop = float("nan")
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    w = max(len(f"{n} ({t})") for n, t, _, _ in rows) + 2
    lines = [f"{'Layer (type)':<{w}}{'Output shape':<22}{'Param #':>10}", "-" * (w + 32)]
    lines += [f"{f'{n} ({t})':<{w}}{s:<22}{p:>10,}" for n, t, s, p in rows]
    trainable, frozen = count_params(model)
    lines += ["-" * (w + 32),
              f"Input: (3, {image_size[0]}, {image_size[1]}) uint8 or 0-255 float; "
              f"forward cost {gflop:.2f} GFLOP per image",
              f"Total params: {trainable + frozen:,} (trainable {trainable:,}, non-trainable {frozen:,})"]
    return "\n".join(lines)
