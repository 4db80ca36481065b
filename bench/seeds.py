"""One recipe on catsdogs over several seeds: the mean and spread of validation accuracy.

    python bench/seeds.py --name float32 --seeds 1 2 3
    python bench/seeds.py --name decay-1d --seeds 1 2 3 -- --config decay1d.json

Runs `imgcls train` (the CPU recipe by default: --preset auto on a machine without a GPU)
on catsdogs/train with catsdogs/val for validation, one seed after another, then `imgcls
evaluate` with the recipe's flip TTA. Prints one row per seed and the mean, and appends
them as JSON lines to bench/out/seeds.jsonl with the CPU's name and flags and the versions.
One seed's accuracy on catsdogs moves by 2.5 points or more between seeds (BENCHMARKS.md),
so a comparison of two recipes needs the mean of several.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "catsdogs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True, help="a label for the table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--data", default=str(DATA), help="folder with train/ and val/")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "seeds"))
    ap.add_argument("train_args", nargs="*", help="more `imgcls train` flags, after --")
    args = ap.parse_args()
    import torch

    rows = []
    for seed in args.seeds:
        run = Path(args.out) / f"{args.name}-seed{seed}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imgcls", "train", f"{args.data}/train",
                        "--val-dir", f"{args.data}/val", "--out", str(run), "--seed", str(seed),
                        *args.train_args], check=True)
        minutes = (time.perf_counter() - t0) / 60
        res = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(run), "--json",
                              "--no-figures"], check=True, capture_output=True, text=True)
        tta = json.loads(res.stdout)["accuracy"]
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        rows.append({"name": args.name, "seed": seed, "val_accuracy": last["val_accuracy"],
                     "tta_accuracy": tta, "minutes": round(minutes, 2),
                     "images_per_s": round(last["images_per_s"], 1), "cpu": cpu(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "args": args.train_args})
        print(json.dumps(rows[-1]), flush=True)
        with open(Path(args.out).parent / "seeds.jsonl", "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    acc = [r["val_accuracy"] for r in rows]
    tta = [r["tta_accuracy"] for r in rows]
    spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    print(f"{args.name}: val_accuracy mean {statistics.mean(acc):.4f} (sd {spread(acc):.4f}), "
          f"with TTA {statistics.mean(tta):.4f} (sd {spread(tta):.4f}) over seeds "
          f"{args.seeds} on {cpu()}")


if __name__ == "__main__":
    main()
