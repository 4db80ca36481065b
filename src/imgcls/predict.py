"""Checkpoint -> answers about new photos: Predictor.from_checkpoint(path).predict(images).

Owns inference on files. Loads nothing but the checkpoint (weights via safetensors, the
preprocess spec and class names from its JSON metadata): never the training, cache or loader
modules, never a pickle. Images are prepared by the checkpoint's own PreprocessSpec, so a
prediction sees exactly the pixels training saw for the same file.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.preprocess import (DEFAULT_MAX_PIXELS, SOURCE_KINDS, ImageError, PreprocessSpec, Source,
                               is_source, load_image)
from imgcls.runtime import thread_map
from imgcls.scan import IMAGE_EXTENSIONS, _might_be_image, _skipped_name


@dataclass
class Prediction:
    path: str
    class_name: str | None  # None when the file could not be read
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "class": self.class_name, "probabilities": self.probabilities}

    def sentence(self, top_k: int = 3) -> str:
        """Two classes: the tutorial's sentence. More: the top-k with percentages."""
        items = list(self.probabilities.items())
        if len(items) == 2:
            (a, pa), (b, pb) = items
            return f"This image is {100 * pa:.2f}% {a} and {100 * pb:.2f}% {b}."
        top = sorted(items, key=lambda kv: -kv[1])[:top_k]
        return ", ".join(f"{name} {100 * p:.2f}%" for name, p in top)


def softmax_probs(logits: np.ndarray) -> np.ndarray:
    """(B, C) logits -> probabilities; a single logit means sigmoid for the second class."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:
        p = 1 / (1 + np.exp(-logits[:, 0]))
        return np.stack([1 - p, p], axis=1)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class _TorchBackend:
    def __init__(self, path: Path, device: str, amp: str = "auto"):
        import torch

        from imgcls.checkpoint import CheckpointError, check_finite, load_checkpoint
        from imgcls.models import ModelConfig, create_model

        try:
            ckpt = load_checkpoint(path, train_state=False)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        check_finite(path, ckpt.weights)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.device = torch, torch.device(device)
        self.meta = ckpt.meta
        try:
            model = create_model(ModelConfig.from_dict(ckpt.meta["model"]))
        except KeyError as exc:
            raise UserError(f"{display(path)}: {exc.args[0]} (made by a newer imgcls?)") from None
        model.load_state_dict(ckpt.weights)
        from imgcls.runtime import autocast_for, precision_for

        # bf16 where the hardware does it natively (2x on an AVX-512 BF16 CPU, BENCHMARKS.md).
        self.precision = precision_for(self.device.type, amp)
        self.dtype = torch.float64 if self.precision == "fp64" else torch.float32
        self.model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()
        self.autocast, _ = autocast_for(self.device, amp)

    def logits(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C) logits (log of the mean probability with TTA)."""
        torch = self.torch
        with torch.inference_mode(), self.autocast():
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).to(self.dtype)
            wide = torch.float64 if self.dtype == torch.float64 else torch.float32
            out = self.model(x).to(wide)
            if tta:
                p = (_probs_t(out) + _probs_t(self.model(x.flip(-1)).to(wide))) / 2
                return torch.log(p).cpu().numpy()
            return out.cpu().numpy()


def _probs_t(logits):
    import torch

    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], 1)
    return logits.softmax(1)


class Predictor:
    """Predict class probabilities for image files (or bytes, or PIL images)."""

    def __init__(self, backend, source: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
            raise UserError(f"max-pixels must be a whole number >= 0 (0 = no limit), not "
                            f"{max_pixels!r}")
        self.backend = backend
        self.source = source
        meta = backend.meta
        self.class_names: list[str] = list(meta["class_names"])
        self.spec = PreprocessSpec.from_dict(meta["preprocess"])
        self.meta = meta
        self.max_pixels = max_pixels  # the decompression-bomb guard (--max-pixels; 0 = none)

    @property
    def recommends_tta(self) -> bool:
        """Whether the training recipe asks for flip test-time augmentation."""
        return bool(self.meta.get("config", {}).get("tta", False))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto",
                        amp: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> "Predictor":
        """A .safetensors checkpoint, a run folder (its best checkpoint) or an .onnx file.

        amp: "auto" (bf16 on a GPU or a CPU that has it natively, else float32), "bf16",
        "fp16" or "off" (float32). ONNX files always run as exported (float32)."""
        p = Path(path)
        if p.suffix.lower() == ".onnx":
            from imgcls.onnx_backend import OnnxBackend

            if not p.is_file():
                raise UserError(f"{display(p)}: no such ONNX file")
            return cls(OnnxBackend(p), p, max_pixels)
        from imgcls.checkpoint import resolve_model_path  # imports torch: not on the ONNX path

        p = resolve_model_path(p)
        from imgcls.runtime import resolve_device

        resolve_device(device)  # a bad --device is one line, before the model loads
        return cls(_TorchBackend(p, device, amp), p, max_pixels)

    def probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """(B, H, W, 3) uint8 prepared images -> (B, C) probabilities."""
        probs = softmax_probs(self.backend.logits(batch, tta))
        if not np.isfinite(probs).all():
            # Never print "nan% cats": a model that answers NaN is broken, not uncertain.
            raise UserError(f"{display(self.source)}: the model answered NaN or infinity "
                            "(its weights or its arithmetic overflow); no prediction is given")
        return probs

    def prepare(self, source: Source) -> np.ndarray:
        return load_image(source, self.spec, self.max_pixels)

    def predict(self, sources: Sequence[Source], batch_size: int = 32, tta: bool = False,
                names: Sequence[str] | None = None, progress: bool | None = False) -> list[Prediction]:
        """One Prediction per source, in order; unreadable ones carry `error` instead."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch size must be a whole number >= 1, not {batch_size!r}")
        for i, s in enumerate(sources):
            if not is_source(s):
                raise UserError(f"input {i}: a {type(s).__name__} is not an image; give "
                                f"{SOURCE_KINDS}")
        names = list(names) if names is not None else [
            display(s) if isinstance(s, (str, os.PathLike)) else f"<image {i}>"
            for i, s in enumerate(sources)]
        out: list[Prediction] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm  # widgets in Jupyter, text elsewhere

            bar = tqdm(total=len(sources), unit="img", desc="predict", leave=False)
        for start in range(0, len(sources), batch_size):
            chunk = list(sources[start:start + batch_size])
            prepared = thread_map(self._safe_prepare, chunk, progress=False)
            ok = [i for i, p in enumerate(prepared) if isinstance(p, np.ndarray)]
            probs = self.probabilities(np.stack([prepared[i] for i in ok]), tta) if ok else []
            by_index = dict(zip(ok, probs))
            for i, item in enumerate(prepared):
                name = names[start + i]
                if i in by_index:
                    p = by_index[i]
                    out.append(Prediction(name, self.class_names[int(np.argmax(p))],
                                          {c: float(v) for c, v in zip(self.class_names, p)}))
                else:
                    out.append(Prediction(name, None, {}, item))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def _safe_prepare(self, source: Source):
        try:
            return self.prepare(source)
        except ImageError as exc:
            return str(exc)
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"
        except MemoryError:
            return "too large to hold in memory"


def _takes(path: str, name: str) -> bool:
    """What `scan` takes from a folder: regular files only (a FIFO would block the read),
    image-named ones, and others whose content opens as an image (photos without an
    extension); notes.txt and the like are passed over quietly, as scan ignores them."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            return True
        with open(path, "rb") as f:
            return _might_be_image(f)
    except OSError:
        return True  # named in the results as unreadable, not passed over


def expand_inputs(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Files, folders (recursively: files with image extensions) and globs -> (files, errors)."""
    files: list[str] = []
    errors: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = []
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames[:] = sorted(d for d in dirnames if not _skipped_name(d))
                for f in sorted(filenames):
                    path = os.path.join(dirpath, f)
                    if not _skipped_name(f) and _takes(path, f):
                        found.append(path)
            if not found:
                errors.append(f"{display(item)}: no image files in this folder")
            files += found
        elif os.path.lexists(item):
            files.append(item)
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                errors.append(f"{display(item)}: no file matches this pattern")
            for m in matched:
                (files.append(m) if os.path.isfile(m) else files.extend(expand_inputs([m])[0]))
        else:
            errors.append(f"{display(item)}: no such file or folder")
    return files, errors
