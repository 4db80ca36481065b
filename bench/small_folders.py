"""Small real folders: does a recipe learn, or collapse to one class, with few photos?

    .venv/bin/python bench/small_folders.py [--sizes 120 240] [--presets cpu] [--epochs N]

Builds class folders of N photos per class from catsdogs/train (a seeded sample, as links:
nothing is copied or changed), validates on all of catsdogs/val (2,000 photos), and trains
each preset with BatchNorm re-estimation on (the default) and off (`bn_recalibrate=0`, what
imgcls did before). Prints one row per run: final and best validation accuracy, whether the
one-class warning fired, and minutes; a JSON line at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np

from imgcls.config import resolve
from imgcls.train import fit

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs"


def small_folder(src: Path, dst: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted((src / cls).iterdir())
        (dst / cls).mkdir(parents=True)
        for f in rng.permutation(len(files))[:n]:
            os.symlink(files[f], dst / cls / files[f].name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--sizes", type=int, nargs="+", default=[120, 240])
    ap.add_argument("--presets", nargs="+", default=["cpu"])
    ap.add_argument("--epochs", type=int, default=0, help="0 = the preset's")
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = small_folder(data / "train", Path(tmp) / f"n{n}", n)
            for preset in args.presets:
                for recal in (4096, 0):
                    over = {"data_dir": str(folder), "val_dir": str(data / "val"),
                            "bn_recalibrate": recal}
                    if args.epochs:
                        over["epochs"] = args.epochs
                    cfg = resolve(over, preset)
                    t0 = time.perf_counter()
                    err = io.StringIO()
                    with redirect_stderr(err):
                        res = fit(cfg, Path(tmp) / f"run-{n}-{preset}-{recal}")
                    vals = [h["val_accuracy"] for h in res.history]
                    row = {"per_class": n, "preset": preset, "bn_recalibrate": recal,
                           "epochs": len(vals), "final": vals[-1], "best": max(vals),
                           "collapse_warning": "learnt nothing" in err.getvalue(),
                           "minutes": round((time.perf_counter() - t0) / 60, 2)}
                    rows.append(row)
                    print(f"{n:>4}/class  {preset:<9} recal {recal:>4}  final {row['final']:.4f}  "
                          f"best {row['best']:.4f}  warning {row['collapse_warning']}  "
                          f"{row['minutes']} min", file=sys.__stdout__, flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
