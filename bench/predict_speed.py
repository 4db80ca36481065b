"""Prediction speed where users deploy: PyTorch (float32 and bf16) against ONNX Runtime.

    .venv/bin/python bench/predict_speed.py RUN [--photos DIR] [--n 256] [--threads 2]

Exports RUN's best checkpoint to ONNX (into a temp folder), then for each path through
`imgcls.infer.predictor.Predictor` (what `imgcls predict` and `imgcls serve` call):
- model only: images/s on prepared uint8 batches of 1 and 32 (no decoding);
- end to end: images/s of `Predictor.predict(files, batch_size=32)` on real photos (decode,
  orient, resize, model), and the p50/p99 latency of one photo at a time (batch 1), which is
  what one `imgcls serve` request costs.
Prints a table and a JSON line. Photos default to catsdogs/val.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgcls.infer.export import export_onnx
from imgcls.infer.predictor import Predictor
from imgcls.runtime import cpu_native_bf16, keep_freed_memory

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs" / "val"


def rate(fn, images: int, min_s: float = 3.0) -> float:
    fn()  # warm-up: oneDNN/ORT pick their kernels on the first call
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn()
        n += images
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--photos", default=str(PHOTOS))
    ap.add_argument("--n", type=int, default=256, help="photos for the end-to-end numbers")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `imgcls predict` does
    files = sorted(str(p) for p in Path(args.photos).rglob("*.jpg"))[:args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(args.run, onnx)
        paths = [("PyTorch float32", lambda: Predictor.from_checkpoint(args.run, "cpu", "off")),
                 ("PyTorch bf16", lambda: Predictor.from_checkpoint(args.run, "cpu", "bf16")),
                 ("ONNX Runtime float32", lambda: Predictor.from_checkpoint(onnx))]
        for name, make in paths:
            if name == "PyTorch bf16" and not cpu_native_bf16():
                continue
            p = make()
            if hasattr(p.backend, "session"):  # the same thread count for both engines
                from imgcls.infer.onnx_backend import OnnxBackend

                p.backend = OnnxBackend(onnx, threads=args.threads)
            s = p.spec
            rng = np.random.default_rng(0)
            b32 = rng.integers(0, 256, (32, s.height, s.width, 3), dtype=np.uint8)
            one = b32[:1]
            row = {"path": name,
                   "model_b1": rate(lambda: p.probabilities(one), 1),
                   "model_b32": rate(lambda: p.probabilities(b32), 32)}
            t0 = time.perf_counter()
            preds = p.predict(files, batch_size=32)
            row["e2e_b32"] = len(files) / (time.perf_counter() - t0)
            assert not any(x.error for x in preds)
            lat = []
            for f in files[:100]:
                t1 = time.perf_counter()
                p.predict([f], batch_size=1)
                lat.append(time.perf_counter() - t1)
            row["p50_ms"] = float(np.percentile(lat, 50) * 1e3)
            row["p99_ms"] = float(np.percentile(lat, 99) * 1e3)
            rows.append(row)
            print(f"{name:<22} model b1 {row['model_b1']:7.1f}/s  b32 {row['model_b32']:7.1f}/s  "
                  f"files b32 {row['e2e_b32']:6.1f}/s  one photo p50 {row['p50_ms']:.1f} ms "
                  f"p99 {row['p99_ms']:.1f} ms", flush=True)
    import onnxruntime

    print(json.dumps({"rows": rows, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                      "threads": args.threads, "native_bf16": cpu_native_bf16(),
                      "python": platform.python_version(), "argv": sys.argv[1:]}))


if __name__ == "__main__":
    main()
