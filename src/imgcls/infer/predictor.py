"""THE inference contract: any input -> the checkpoint's preprocessing -> probabilities.

Predictor owns everything between "an input" and "probabilities", for every entry point
(`imgcls predict`, `imgcls evaluate`, `imgcls.load().predict`, `serve`, export's parity
check): the input kinds and their checks (preprocess.open_image: path, bytes, file object,
PIL image, array, tensor; the one list of decode errors, ImageError), the checkpoint's own
PreprocessSpec (so a prediction sees exactly the pixels training saw), the recipe's TTA
default (`resolve_tta`), one logit as two probabilities (models.two_logits), the non-finite
guard, the decompression-bomb limit (a constructor argument) and batching. A backend only
turns prepared uint8 batches into probabilities: PyTorch here, ONNX Runtime in
onnx_backend.py. Loads nothing but the checkpoint: never training code, never a pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from imgcls.data.preprocess import (
    DEFAULT_MAX_PIXELS,
    SOURCE_KINDS,
    ImageError,
    PreprocessSpec,
    Source,
    is_source,
    load_image,
)
from imgcls.errors import UserError, require_whole
from imgcls.fsutil import display
from imgcls.runtime import thread_map


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


class Backend(Protocol):
    """What runs the network: prepared (B, H, W, 3) uint8 -> (B, C) probabilities. TTA is
    the Predictor's, the same for every backend."""
    meta: dict  # class_names, preprocess, model, config (as a checkpoint's metadata)

    def probabilities(self, batch: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """A .safetensors checkpoint run by PyTorch, in the precision `amp` asks for."""

    def __init__(self, path: Path, device: str, amp: str = "auto"):
        import torch

        from imgcls.checkpoint import CheckpointError, check_finite, load_checkpoint, unvalidated
        from imgcls.models import ModelConfig, create_model
        from imgcls.runtime import autocast_for, precision_for

        try:
            ckpt = load_checkpoint(path, train_state=False)
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        check_finite(path, ckpt.weights)
        why = unvalidated(path, ckpt.meta)
        if why:
            import warnings

            warnings.warn(f"{display(path)}: {why}: nothing says how well it answers",
                          UserWarning, stacklevel=3)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch, self.device = torch, torch.device(device)
        self.meta = ckpt.meta
        try:
            model = create_model(ModelConfig.from_dict(ckpt.meta["model"]))
        except KeyError as exc:
            raise UserError(f"{display(path)}: {exc.args[0]} (made by a newer imgcls?)") from None
        model.load_state_dict(ckpt.weights)
        # bf16 where the hardware does it natively (2x on an AVX-512 BF16 CPU, BENCHMARKS.md)
        self.precision = precision_for(self.device.type, amp)
        self.dtype = torch.float64 if self.precision == "fp64" else torch.float32
        self.model = model.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()
        self.autocast, _ = autocast_for(self.device, amp)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        from imgcls.models import two_logits

        torch = self.torch
        wide = torch.float64 if self.dtype == torch.float64 else torch.float32
        with torch.inference_mode(), self.autocast():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.dtype)
            return two_logits(self.model(x).to(wide)).softmax(1).double().cpu().numpy()


class Predictor:
    """Class probabilities for any input kind, from a checkpoint, a run or an ONNX file."""

    def __init__(self, backend: Backend, source: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        require_whole("max_pixels", max_pixels, 0, "0 = no limit")
        self.backend = backend
        self.source = source
        self.meta = backend.meta
        self.class_names: list[str] = list(self.meta["class_names"])
        try:
            self.spec = PreprocessSpec.from_dict(self.meta["preprocess"])
        except (ValueError, TypeError) as exc:  # a newer recipe version, or a damaged one
            raise UserError(f"{display(source)}: {exc}") from None
        self.max_pixels = max_pixels  # the decompression-bomb guard (--max-pixels; 0 = none)

    @property
    def recommends_tta(self) -> bool:
        """Whether the training recipe asks for flip test-time augmentation."""
        return bool(self.meta.get("config", {}).get("tta", False))

    def resolve_tta(self, tta: bool | None) -> bool:
        """The one TTA default: what the recipe recommends, unless the caller says."""
        return self.recommends_tta if tta is None else bool(tta)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto",
                        amp: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS) -> "Predictor":
        """A .safetensors checkpoint, a run folder (its best checkpoint) or an .onnx file.

        amp: "auto" (bf16 on a GPU or a CPU that has it natively, else float32), "bf16",
        "fp16", "off" (float32) or "fp64". ONNX files always run as exported (float32)."""
        p = Path(path)
        if p.suffix.lower() == ".onnx":
            from imgcls.infer.onnx_backend import OnnxBackend

            if not p.is_file():
                raise UserError(f"{display(p)}: no such ONNX file")
            return cls(OnnxBackend(p), p, max_pixels)
        from imgcls.checkpoint import resolve_model_path  # imports torch: not on the ONNX path
        from imgcls.runtime import resolve_device

        p = resolve_model_path(p)
        resolve_device(device)  # a bad --device is one line, before the model loads
        return cls(TorchBackend(p, device, amp), p, max_pixels)

    def probabilities(self, batch: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """(B, H, W, 3) uint8 prepared images -> (B, C) probabilities; with TTA (THE flip
        TTA, for every backend) the mean of the photo's and its mirror image's."""
        probs = self.backend.probabilities(batch)
        if self.resolve_tta(tta):
            probs = (probs + self.backend.probabilities(batch[:, :, ::-1])) / 2
        if not np.isfinite(probs).all():
            # Never print "nan% cats": a model that answers NaN is broken, not uncertain.
            raise UserError(f"{display(self.source)}: the model answered NaN or infinity "
                            "(its weights or its arithmetic overflow); no prediction is given")
        return probs

    def prepare(self, source: Source) -> np.ndarray:
        """Any input kind -> the (H, W, 3) uint8 pixels the network sees."""
        return load_image(source, self.spec, self.max_pixels)

    def predict(self, sources: Sequence[Source], batch_size: int = 32, tta: bool | None = None,
                names: Sequence[str] | None = None, progress: bool | None = False
                ) -> list[Prediction]:
        """One Prediction per source, in order; unreadable ones carry `error` instead."""
        require_whole("batch_size", batch_size, 1)
        for i, s in enumerate(sources):
            if not is_source(s):
                raise UserError(f"input {i}: a {type(s).__name__} is not an image; give "
                                f"{SOURCE_KINDS}")
        tta = self.resolve_tta(tta)
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
