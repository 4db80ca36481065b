"""Checkpoint -> ONNX, checked against PyTorch on real images before it is written.

Owns the exported model's contract:
    input  "image":         (batch, H, W, 3) uint8 RGB, prepared by the preprocess spec
                            (decode, Exif orientation, RGB, resize) - i.e. what
                            imgcls.data.preprocess.load_image returns; batch is dynamic
    output "logits":        (batch, C) float32
    output "probabilities": (batch, C) float32, softmax of the logits
    metadata "imgcls":      JSON with class_names, preprocess, model, source checkpoint
A single-logit (Keras-style binary) model is exported with two logits (0, z), so that
softmax gives (1 - sigmoid z, sigmoid z) and every consumer sees one logit per class.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from imgcls.checkpoint import CheckpointError, check_finite, load_checkpoint, resolve_model_path
from imgcls.data.preprocess import ImageError, PreprocessSpec
from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_bytes, display
from imgcls.infer.onnx_backend import INPUT, LOGITS, META_KEY, PROBS, OnnxBackend
from imgcls.infer.predictor import Predictor
from imgcls.models import ModelConfig, create_model, two_logits
from imgcls.version import __version__

PARITY_TOLERANCE = 1e-4


class Exportable(nn.Module):
    """uint8 NHWC in, (logits, probabilities) out: the whole model a deployment needs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        x = image.permute(0, 3, 1, 2).float()  # (B, 3, H, W), 0..255
        logits = two_logits(self.model(x))
        return logits, logits.softmax(dim=1)


@dataclass
class ExportReport:
    path: Path
    max_abs_diff_probabilities: float
    max_abs_diff_logits: float
    images_checked: int
    real_images: bool
    opset: int


def _check_images(meta: dict, predictor: Predictor, folder: str | None,
                  n: int) -> tuple[np.ndarray, bool]:
    """Up to n real images (the given folder, else the training data), prepared by the
    Predictor as every prediction is; else random pixels."""
    from imgcls.data.files import expand_inputs

    spec = predictor.spec
    candidates = [folder] if folder else [meta.get("config", {}).get("val_dir"),
                                          meta.get("config", {}).get("data_dir")]
    for c in candidates:
        if not c or not os.path.isdir(c):
            continue
        files, _ = expand_inputs([c])
        step = max(1, len(files) // n)
        arrays = []
        for f in files[::step]:
            try:
                arrays.append(predictor.prepare(f))
            except (ImageError, OSError):
                continue
            if len(arrays) == n:
                break
        if arrays:
            return np.stack(arrays), True
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, spec.height, spec.width, 3), dtype=np.uint8), False


def onnx_path(out: str | os.PathLike, model_path: str | os.PathLike) -> Path:
    """Where the ONNX file goes: `out`, or inside it when it is a folder (or ends with a
    slash): RUN.onnx for a run folder, CHECKPOINT.onnx for a file."""
    if os.fspath(out).endswith(os.sep) or Path(out).is_dir():
        Path(out).mkdir(parents=True, exist_ok=True)
        model = Path(model_path)
        return Path(out) / f"{(model if model.is_dir() else model.with_suffix('')).name}.onnx"
    return Path(out)


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, opset: int = 17,
                check_dir: str | None = None, check_count: int = 8) -> ExportReport:
    src = resolve_model_path(model_path)
    out = onnx_path(out, Path(model_path).resolve())
    try:
        ckpt = load_checkpoint(src, train_state=False)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    check_finite(src, ckpt.weights)
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the parity check runs it)
    except ImportError:
        raise UserError("export needs onnx and onnxruntime: pip install 'imgcls[onnx]'") from None
    meta = ckpt.meta
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    model = create_model(ModelConfig.from_dict(meta["model"]))
    model.load_state_dict(ckpt.weights)
    wrapper = Exportable(model).eval()
    dummy = torch.zeros(2, spec.height, spec.width, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        # The legacy TorchScript exporter: it needs only `onnx` (the dynamo one needs onnxscript),
        # and the image size is fixed per model, so traced shape arithmetic is constant.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), buf, input_names=[INPUT], output_names=[LOGITS, PROBS],
                          dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"},
                                        PROBS: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())  # (tracer warnings about constant shapes are expected)
    info = {"class_names": meta["class_names"], "preprocess": meta["preprocess"],
            "model": meta["model"], "epoch": meta.get("epoch"), "metrics": meta.get("metrics"),
            "source": str(src), "imgcls_version": __version__,
            "config": {"tta": bool(meta.get("config", {}).get("tta", False))},
            "input": "image: (batch, H, W, 3) uint8 RGB after the preprocess spec"}
    for key, value in ((META_KEY, json.dumps(info)),
                       ("class_names", json.dumps(meta["class_names"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "imgcls", __version__
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    # Parity: the ONNX model against PyTorch in float32, both through the Predictor (the
    # same prepared images, the same probabilities code), before anything is written.
    torch_side = Predictor.from_checkpoint(src, device="cpu", amp="off")
    onnx_side = Predictor(OnnxBackend(data), src)
    images, real = _check_images(meta, torch_side, check_dir, check_count)
    # Both ways: without TTA and with it (the Predictor's one flip TTA, on either backend).
    t_probs = np.concatenate([torch_side.probabilities(images, tta=t) for t in (False, True)])
    o_probs = np.concatenate([onnx_side.probabilities(images, tta=t) for t in (False, True)])
    with torch.no_grad():
        t_logits = wrapper(torch.from_numpy(images))[0].numpy()
    o_logits = onnx_side.backend.session.run([LOGITS], {INPUT: images})[0]
    d_probs = float(np.abs(o_probs - t_probs).max())
    d_logits = float(np.abs(o_logits - t_logits).max())
    if not (np.isfinite(o_probs).all() and np.isfinite(t_probs).all()):
        raise UserError(f"{display(src)} answers NaN or infinity on {len(images)} images; "
                        f"not writing {display(out)}")
    if not d_probs <= PARITY_TOLERANCE:  # `not <=`: a NaN difference fails too
        raise UserError(f"ONNX Runtime and PyTorch disagree by {d_probs:.2e} (> {PARITY_TOLERANCE}) "
                        f"on {len(images)} images; not writing {display(out)}")
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise UserError(f"cannot write {display(out)}: {exc.strerror}") from None
    return ExportReport(Path(out), d_probs, d_logits, len(images), real, opset)
