"""Run an exported .onnx model with ONNX Runtime: needs onnxruntime, NumPy and Pillow only.

Owns the ONNX side of prediction: the Predictor's backend for a .onnx file (the same small
interface as predictor.TorchBackend: uint8 batches -> probabilities). The model file carries
the class names and the preprocess spec in its metadata, so it is as self-describing as a
checkpoint; torch is never imported on this path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.words import first_line

INPUT, LOGITS, PROBS = "image", "logits", "probabilities"
META_KEY = "imgcls"


class OnnxBackend:
    def __init__(self, path: Path | bytes, threads: int = 0):
        """path: an .onnx file, or the serialized model itself (export's check)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("predicting with an .onnx file needs onnxruntime: "
                            "pip install 'imgcls[onnx]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            model = path if isinstance(path, bytes) else str(path)
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{display(str(path)[:80])}: not a loadable ONNX model "
                            f"({first_line(exc)})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise UserError(f"{display(str(path)[:80])}: not exported by imgcls (no class names or "
                            "preprocess spec in its metadata)")
        self.meta = json.loads(props[META_KEY])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C) probabilities."""
        return self.session.run([PROBS], {INPUT: np.ascontiguousarray(batch)})[0].astype(np.float64)
