"""Model names -> builders, and the ModelConfig stored in every checkpoint.

Owns the set of networks `--model` accepts. A new network drops in with one
`register("name")` builder taking (num_classes, **options).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_DOCS: dict[str, str] = {}


@dataclass(frozen=True)
class ModelConfig:
    name: str = "xception"
    num_classes: int = 2
    options: dict = field(default_factory=dict)  # builder keyword arguments (widths, dropout)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(d["name"], int(d["num_classes"]), dict(d.get("options", {})))


def register(name: str, doc: str = ""):
    def deco(fn):
        _BUILDERS[name] = fn
        _DOCS[name] = doc or (fn.__doc__ or "").strip().splitlines()[0]
        return fn
    return deco


def list_models() -> dict[str, str]:
    return dict(_DOCS)


def create_model(cfg: ModelConfig) -> nn.Module:
    if cfg.name not in _BUILDERS:
        raise KeyError(f"unknown model {cfg.name!r}; choose one of {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[cfg.name](cfg.num_classes, **cfg.options)


@register("xception")
def _xception(num_classes: int, **kw):
    """The Keras tutorial's small Xception (2.7 M parameters, 4.9 GFLOP at 180x180)."""
    from imgcls.models.xception import Xception

    return Xception(num_classes, **kw)


@register("xception-tiny")
def _xception_tiny(num_classes: int, **kw):
    """A very narrow Xception for tests and smoke runs (a few thousand parameters)."""
    from imgcls.models.xception import Xception

    # PyTorch's BatchNorm momentum: Keras's 0.99 needs hundreds of steps before the running
    # statistics are usable, more than a smoke run has.
    opts = dict(entry=8, blocks=(16, 24), exit_width=32, bn_momentum=0.1)
    opts.update(kw)
    return Xception(num_classes, **opts)


@register("resnet-cpu")
def _resnet_cpu(num_classes: int, **kw):
    """A small plain ResNet sized for laptop CPUs (1.2 M parameters, 0.3 GFLOP at 96x96)."""
    from imgcls.models.resnet import SmallResNet

    return SmallResNet(num_classes, **kw)


def _tv_resnet(depth: int):
    def build(num_classes: int, **kw):
        from imgcls.models.tv_resnet import ResNet

        return ResNet(num_classes, depth, **kw)
    return build


for _depth, _doc in ((18, "11.7 M parameters, 1.8 GFLOP at 224x224"),
                     (34, "21.8 M parameters, 3.7 GFLOP at 224x224"),
                     (50, "25.6 M parameters, 4.1 GFLOP at 224x224"),
                     (101, "44.5 M parameters, 7.8 GFLOP at 224x224")):
    register(f"resnet{_depth}", f"torchvision's ResNet-{_depth} layout ({_doc}): its and timm's "
             "weights files load as they are (`train --init FILE`)")(_tv_resnet(_depth))


def _efficientnet_lite(variant: str):
    def build(num_classes: int, **kw):
        from imgcls.models.efficientnet import EfficientNetLite

        return EfficientNetLite(num_classes, variant, **kw)
    return build


for _v, _doc in (("0", "4.7 M parameters, 0.77 GFLOP at 224x224"),
                 ("1", "5.4 M parameters, 1.20 GFLOP at 240x240"),
                 ("2", "6.1 M parameters, 1.72 GFLOP at 260x260")):
    register(f"efficientnet-lite{_v}", f"EfficientNet-Lite{_v} ({_doc}): ImageNet weights "
             f"with `train --init efficientnet-lite{_v}`")(_efficientnet_lite(f"lite{_v}"))


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of a network's class-dependent head (replaced for new classes)."""
    return tuple(getattr(model, "head", ("fc",)))


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """A network's parameters in groups from the input to the head (discriminative learning
    rates): its own `groups()` where it has one, else its top-level children in order."""
    mods = model.groups() if hasattr(model, "groups") else list(model.children())
    groups = [[p for p in m.parameters()] for m in mods]
    groups = [g for g in groups if g]
    seen = {id(p) for g in groups for p in g}
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:  # anything a groups() left out trains with the first group's rate
        groups[0] = rest + groups[0]
    return groups


def two_logits(logits: torch.Tensor) -> torch.Tensor:
    """THE single-logit rule: a head z becomes the logits (0, z), so softmax gives
    (1 - sigmoid z, sigmoid z) and cross-entropy on them is exactly the binary cross-entropy
    of the tutorial's one-logit head. Training, prediction and the exported ONNX graph all
    turn one logit into two probabilities through here. More logits pass unchanged."""
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], 1)
    return logits
