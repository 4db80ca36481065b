"""Small real folders: does a recipe learn, or collapse to one class, with few photos?

    .venv/bin/python bench/small_folders.py [--sizes 120 240] [--presets cpu] [--epochs N]
        [--recal on off] [--out DIR] [--set KEY=VALUE ...]

Builds class folders of N photos per class from catsdogs/train (a seeded sample, as links:
nothing is copied or changed), validates on all of catsdogs/val (2,000 photos), and trains
each preset with BatchNorm re-estimation on (the default rule) and off (`bn_recalibrate=0`).
Prints one row per run: final and best validation accuracy, the best epoch's accuracy with
flip TTA (what `imgcls evaluate` reports for the cpu preset), whether the one-class warning
fired, and minutes (training only); a JSON line at the end.
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
from imgcls.data.scan import ScanOptions, scan
from imgcls.infer.evaluate import evaluate, items_for
from imgcls.infer.predictor import Predictor
from imgcls.train import fit

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs"


def small_folder(src: Path, dst: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    src = src.resolve()  # the links must point at absolute paths, whatever --data looked like
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
    ap.add_argument("--recal", nargs="+", default=["on", "off"], choices=["on", "off"],
                    help="BatchNorm re-estimation before each validation: on (the default "
                         "rule), off (bn_recalibrate=0), or both")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the preset's")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig setting for every run (repeat the flag for several)")
    args = ap.parse_args()
    data = Path(args.data)
    extra = {}
    for kv in args.overrides:
        k, v = kv.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" else v
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.out) if args.out else Path(tmp)
        val = scan(str(data / "val"), ScanOptions(cache_dir=str(Path(tmp) / "cache")))
        for n in args.sizes:
            folder = small_folder(data / "train", Path(tmp) / f"n{n}", n)
            for preset in args.presets:
                for recal in args.recal:
                    over = dict(extra, data_dir=str(folder), val_dir=str(data / "val"),
                                cache_dir=str(Path(tmp) / "cache"))
                    if recal == "off":
                        over["bn_recalibrate"] = 0
                    if args.epochs:
                        over["epochs"] = args.epochs
                    cfg = resolve(over, preset)
                    run = runs / f"run-{n}-{preset}-{recal}"
                    t0 = time.perf_counter()
                    err = io.StringIO()
                    with redirect_stderr(err):
                        res = fit(cfg, run)
                    minutes = round((time.perf_counter() - t0) / 60, 2)
                    predictor = Predictor.from_checkpoint(run)  # the best epoch's weights
                    items, names = items_for(val, predictor.class_names)
                    tta = evaluate(predictor, items, names, tta=True).accuracy
                    vals = [h["val_accuracy"] for h in res.history]
                    row = {"per_class": n, "preset": preset, "recal": recal,
                           "epochs": len(vals), "final": vals[-1], "best": max(vals),
                           "best_tta": round(tta, 4),
                           "collapse_warning": "learnt nothing" in err.getvalue(),
                           "minutes": minutes, "settings": extra}
                    rows.append(row)
                    print(f"{n:>4}/class  {preset:<9} recal {recal:>3}  final {row['final']:.4f}  "
                          f"best {row['best']:.4f}  best+TTA {tta:.4f}  warning "
                          f"{row['collapse_warning']}  {minutes} min", file=sys.__stdout__,
                          flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
