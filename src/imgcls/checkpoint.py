"""Checkpoint files: safetensors tensors + JSON metadata, written atomically, checksummed.

Owns the one file format a trained model lives in. A checkpoint is a single .safetensors
file: tensors named `model.*` (the weights and BatchNorm statistics) and, for a resumable
checkpoint, `train.*` (optimizer moments, RNG states); its safetensors metadata holds JSON:
class names, preprocess spec, model config, epoch, metrics, format version, and for resume
the optimizer's hyper-parameters and counters. Loading never unpickles anything.

One file means one atomic rename: a kill at any instant leaves the previous file whole.
A SHA-256 over every tensor's bytes and the JSON metadata (class names, preprocess spec,
model config), stored in the metadata, catches truncated, damaged or edited files that
would otherwise load as garbage or, worse, answer with the wrong class names.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_bytes, display
from imgcls.version import __version__
from imgcls.words import first_line

FORMAT_VERSION = 2  # 2: the checksum covers the JSON metadata too


class CheckpointError(ValueError):
    """A file that is not a complete, intact imgcls checkpoint."""


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    meta: dict  # class_names, preprocess, model, epoch, step, metrics, config, ...
    train_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    train_meta: dict = field(default_factory=dict)

    @property
    def resumable(self) -> bool:
        return bool(self.train_meta)


def _digest(tensors: dict[str, torch.Tensor], meta_json: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for text in meta_json:  # format 2: the metadata strings, exactly as stored
        h.update(text.encode("utf-8") + b"\0")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def to_bytes(ckpt: Checkpoint) -> bytes:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in ckpt.weights.items()}
    tensors.update({f"train.{k}": v.detach().contiguous().cpu()
                    for k, v in ckpt.train_tensors.items()})
    meta = dict(ckpt.meta, format_version=FORMAT_VERSION, imgcls_version=__version__,
                torch_version=torch.__version__)
    texts = (json.dumps(meta), json.dumps(ckpt.train_meta))
    metadata = {"imgcls": texts[0], "imgcls_train": texts[1], "sha256": _digest(tensors, texts)}
    return st_save(tensors, metadata=metadata)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write atomically. A full disk raises UserError; the previous file stays intact."""
    data = to_bytes(ckpt)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise UserError(f"disk full while saving {display(path)} ({exc.strerror}); the "
                            "previous checkpoint is intact: free some space and resume") from None
        raise


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata only (cheap: reads the header)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["imgcls"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{display(path)}: not an imgcls checkpoint ({exc})") from None


def header_metadata(data: bytes) -> dict:
    """A safetensors file's metadata, parsed from its bytes (an 8-byte little-endian header
    length, then the JSON header): the same bytes as its tensors, never a second read."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header longer than the file (truncated)")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    if not isinstance(meta, dict):
        raise ValueError("malformed metadata")
    return meta


def load_checkpoint(path: str | os.PathLike, train_state: bool = True,
                    data: bytes | None = None) -> Checkpoint:
    """Load and verify a checkpoint file; raises CheckpointError if damaged or foreign.

    The file is read once: tensors, metadata and checksum all come from the same bytes, so
    a file replaced while it is read (a run saving `last`) is whole or reported damaged,
    never half one and half the other. data: those bytes, where the caller read them."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{display(path)}: cannot read ({exc.strerror})") from None
    try:
        metadata = header_metadata(data)
        tensors = st_load(data)
        meta = json.loads(metadata["imgcls"])
        train_meta = json.loads(metadata.get("imgcls_train") or "{}")
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{display(path)}: truncated or not an imgcls checkpoint "
                              f"({first_line(exc)})"
                              ) from None
    version = meta.get("format_version", 0)
    covered = (metadata["imgcls"], metadata.get("imgcls_train") or "{}") if version >= 2 else ()
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{display(path)}: written by a newer imgcls "
                              f"({meta.get('imgcls_version')}); upgrade imgcls to read it")
    if metadata.get("sha256") != _digest(tensors, covered):
        raise CheckpointError(f"{display(path)}: damaged (checksum mismatch)")
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    train = {k[6:]: v for k, v in tensors.items() if k.startswith("train.")} if train_state else {}
    return Checkpoint(weights, meta, train, train_meta if train_state else {})


def nonfinite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity (a diverged training)."""
    return [k for k, v in weights.items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(path: str | os.PathLike, weights: dict[str, torch.Tensor]) -> None:
    """Refuse a model whose weights are not all finite: it can only answer NaN."""
    bad = nonfinite_tensors(weights)
    if bad:
        raise UserError(f"{display(path)}: the model's weights hold NaN or infinite values "
                        f"({len(bad)} tensors, e.g. {bad[0]}): its training diverged; "
                        "retrain with a lower learning rate or weight decay")


# ----------------------------------------------------------------------------- run folders

LAST, BEST, EPOCHS = "last.safetensors", "best.safetensors", "checkpoints"


def epoch_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / EPOCHS / f"epoch_{epoch:03d}.safetensors"


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's validated model (its best checkpoint). A run
    folder with only a mid-epoch save (stopped before its first validation) is refused:
    that model was never validated, and best is what every entry point promises."""
    p = Path(path)
    if p.is_dir():
        if (p / BEST).is_file():
            return p / BEST
        if (p / LAST).is_file():
            raise UserError(f"{display(p)}: no validated model yet ({unvalidated(p / LAST)}); "
                            f"resume it with `imgcls train --resume {display(p)}`")
        raise UserError(f"{display(p)}: no {BEST} or {LAST} in this folder (not a run folder?)")
    if not p.exists():
        raise UserError(f"{display(p)}: no such checkpoint or run folder")
    return p


def unvalidated(path: Path, meta: dict | None = None) -> str:
    """What a mid-epoch save is, in words ("" for a checkpoint made at an epoch's end)."""
    try:
        meta = meta if meta is not None else read_metadata(path)
    except CheckpointError:
        return "its last save is unreadable"
    step = meta.get("step", 0)
    if not step:
        return ""
    steps = (meta.get("steps") or "?")
    return (f"{display(path.name)} is a mid-epoch save, epoch {meta.get('epoch', 0) + 1} "
            f"step {step}{'' if steps == '?' else f' of {steps}'}, never validated")


def find_resumable(run_dir: str | os.PathLike) -> tuple[Checkpoint, Path, list[str]]:
    """The most advanced intact resumable checkpoint of a run: last or an epoch file.

    Ordered by (epoch, step) from their metadata, not by name: a kill between writing
    epoch_N and re-linking `last` leaves `last` one epoch behind. Returns (checkpoint, its
    path, warnings about damaged files that were skipped).
    """
    run = Path(run_dir)
    skipped = []
    ranked = []
    for p in [run / LAST, *sorted((run / EPOCHS).glob("epoch_*.safetensors"))]:
        if not p.exists():
            continue
        try:
            m = read_metadata(p)
            ranked.append(((m.get("epoch", 0), m.get("step", 0), p.name == LAST), p))
        except CheckpointError as exc:
            skipped.append(str(exc))
    for _, p in sorted(ranked, key=lambda kv: kv[0], reverse=True):
        try:
            ckpt = load_checkpoint(p)
        except CheckpointError as exc:
            skipped.append(str(exc))
            continue
        if ckpt.resumable:
            return ckpt, p, skipped
    raise UserError(f"{display(run)}: no intact checkpoint to resume from"
                    + (f" ({'; '.join(skipped)})" if skipped else ""))
