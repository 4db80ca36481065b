"""The optimizer, its learning-rate schedule and its pickle-free state.

Owns how a TrainConfig becomes an optimizer (Adam, AdamW or SGD), the learning-rate
multiplier at each step (constant, cosine, one-cycle, with linear warm-up), and the split of
the optimizer's state into tensors (safetensors) and JSON for checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from imgcls.config import TrainConfig
from imgcls.models.registry import layer_groups


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    # cosine-floor (once "onecycle", which it never was: no momentum cycle): after the
    # warm-up, cosine down to 1/1000 of the peak rather than to zero
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))


def class_weights(cfg: TrainConfig, labels: np.ndarray, n: int) -> torch.Tensor | None:
    """Per-class loss weights: inverse class frequency for "balanced", else None."""
    if cfg.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    return torch.tensor(counts.sum() / (n * np.maximum(counts, 1)), dtype=torch.float32)


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only: biases and normalisation scales
    and shifts (every parameter of one dimension or none) are left out, as timm's function
    of this name and most recipes do. Decaying a BatchNorm scale shrinks a layer's output
    towards zero for nothing: the next BatchNorm undoes the scale anyway."""
    return _decay_split(model.parameters(), weight_decay)


def _decay_split(params, weight_decay: float, **extra) -> list[dict]:
    """THE weight-decay rule: kernels and matrices decay; biases and normalisation weights
    (one dimension or none) do not."""
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, **extra}]


def layered_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Discriminative learning rates (fastai's): the network's layer groups from the input to
    the head, each at `layer_lr_decay` times the rate of the one after it, the head at the
    full rate; weight decay as param_groups_weight_decay. "head" marks the groups that learn
    while the rest is frozen (--freeze-epochs)."""
    layers = layer_groups(model)
    out = []
    for i, params in enumerate(layers):
        extra = {"lr_scale": cfg.layer_lr_decay ** (len(layers) - 1 - i),
                 "head": i == len(layers) - 1}
        out += _decay_split(params, cfg.weight_decay, **extra)
    return [g for g in out if g["params"]]


def group_rate(group: dict, frozen: bool) -> float:
    """A parameter group's multiple of the schedule's rate: 0 for the backbone while it is
    frozen (it keeps its source's weights while the new head learns), else its layer's."""
    if frozen and not group.get("head", True):
        return 0.0
    return group.get("lr_scale", 1.0)


def make_optimizer(cfg: TrainConfig, model: nn.Module, decay_all: bool = False
                   ) -> torch.optim.Optimizer:
    """decay_all: one group, decay on every parameter (runs started before the split into
    two groups resume with the rule they started with)."""
    if decay_all:
        params = model.parameters()
    elif cfg.layer_lr_decay != 1 or cfg.freeze_epochs:
        params = layered_param_groups(model, cfg)
    else:
        params = param_groups_weight_decay(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as (tensors, JSON-able) for a pickle-free checkpoint."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
