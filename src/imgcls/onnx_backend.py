"""Run an exported .onnx model with ONNX Runtime: needs onnxruntime, NumPy and Pillow only.

Owns the ONNX side of prediction (predict.Predictor picks it for a .onnx file). The model
file carries the class names and the preprocess spec in its metadata, so it is as
self-describing as a checkpoint; torch is never imported on this path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imgcls.errors import UserError
from imgcls.fsutil import display

INPUT, LOGITS, PROBS = "image", "logits", "probabilities"
META_KEY = "imgcls"


class OnnxBackend:
    def __init__(self, path: Path, threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("predicting with an .onnx file needs onnxruntime: "
                            "pip install 'imgcls[onnx]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{display(path)}: not a loadable ONNX model "
                            f"({str(exc).splitlines()[0][:200]})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise UserError(f"{display(path)}: not exported by imgcls (no class names or "
                            "preprocess spec in its metadata)")
        self.meta = json.loads(props[META_KEY])

    def logits(self, batch: np.ndarray, tta: bool) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, C) logits (log of the mean probability with TTA)."""
        out = self.session.run([LOGITS, PROBS], {INPUT: np.ascontiguousarray(batch)})
        if not tta:
            return out[0]
        mirrored = self.session.run([PROBS], {INPUT: np.ascontiguousarray(batch[:, :, ::-1])})[0]
        return np.log((out[1] + mirrored) / 2)
