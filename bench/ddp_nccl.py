"""The `imgcls train` path under torchrun with NCCL at world size 1 on one CUDA GPU.

    python bench/ddp_nccl.py [--images 18728] [--epochs 2] [--size 180] [--batch 128]

Makes a class-per-folder tree of random JPEGs in a temporary folder (no data needed), then
runs `torchrun --nproc_per_node 1 -m imgcls train` on it with the tutorial's network and
prints each epoch's images/s and seconds, as imgcls reports them, plus a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=18728)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=180)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        rng = np.random.default_rng(0)
        for i in range(args.images):
            d = data / ("a" if i % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize(
                (256, 200)).save(d / f"{i}.jpg", quality=80)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "imgcls", "train", str(data), "--out", f"{tmp}/run", "--epochs", str(args.epochs),
               "--image-size", str(args.size), "--batch-size", str(args.batch), "--val-split", "0.01",
               "--device", "cuda", "--cache-dir", f"{tmp}/cache"] + (["--compile"] if args.compile else [])
        # world size 1 under torchrun does not create a process group; force one to exercise NCCL.
        env = dict(os.environ, IMGCLS_FORCE_PROCESS_GROUP="1")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        print(res.stdout)
        if res.returncode:
            print(res.stderr[-4000:], file=sys.stderr)
            sys.exit(res.returncode)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        print(json.dumps({"epochs": [{"epoch": r["epoch"], "images_per_s": round(r["images_per_s"], 1),
                                      "seconds": round(r["seconds"], 2)} for r in rows],
                          "images": args.images, "batch": args.batch, "size": args.size}))


if __name__ == "__main__":
    main()
