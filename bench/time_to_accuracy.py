"""Wall-clock time to 75/80/85/90% validation accuracy on real cats vs dogs.

    python bench/time_to_accuracy.py --preset cpu --budget 20
    python bench/time_to_accuracy.py --preset tutorial --budget 20

Trains on catsdogs/train (2,000 photos), validates on catsdogs/val (2,000 other photos) after
every epoch, and stops after the last epoch that ends within --budget minutes. The clock
starts before the scan and the (cold, freshly built) image cache, so it is the time a user
waits. Prints the times to each threshold and the final accuracy (also with flip TTA), and
writes the curve as CSV and PNG into --out. Extra `imgcls train` flags go after `--`.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from imgcls.config import resolve
from imgcls.data.scan import ScanOptions, scan
from imgcls.infer.evaluate import evaluate, items_for
from imgcls.infer.predictor import Predictor
from imgcls.train import fit

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs"
THRESHOLDS = (0.75, 0.80, 0.85, 0.90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT), help="folder with train/ and val/")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=float, default=20, help="minutes of wall-clock time")
    ap.add_argument("--out", default=None, help="folder for the run, CSV and PNG")
    ap.add_argument("overrides", nargs="*", help="key=value TrainConfig settings")
    args = ap.parse_args()
    out = Path(args.out or f"bench/out/time_to_accuracy-{args.preset}")
    if out.exists():
        shutil.rmtree(out)
    overrides = {}
    for kv in args.overrides:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v[:1] in "0123456789-[{tf" else v
    cache = tempfile.mkdtemp(prefix="imgcls-tta-")
    cfg = resolve(dict(overrides, data_dir=f"{args.data}/train", val_dir=f"{args.data}/val",
                       time_limit=args.budget, cache_dir=cache), preset=args.preset)
    t0 = time.perf_counter()
    result = fit(cfg, out / "run")
    wall = time.perf_counter() - t0
    hist = result.history
    reached = {f"time_to_{int(t * 100)}_s": next((round(h["elapsed_s"], 1) for h in hist
                                                  if h["val_accuracy"] >= t), None)
               for t in THRESHOLDS}
    predictor = Predictor.from_checkpoint(out / "run")
    val = scan(f"{args.data}/val", ScanOptions(cache_dir=cache))
    items, names = items_for(val, predictor.class_names)
    t1 = time.perf_counter()
    final_tta = evaluate(predictor, items, names, tta=True).accuracy
    tta_s = time.perf_counter() - t1
    shutil.rmtree(cache, ignore_errors=True)

    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "elapsed_s", "loss", "accuracy", "val_loss", "val_accuracy"])
        for h in hist:
            w.writerow([h["epoch"], round(h["elapsed_s"], 1), round(h["loss"], 4),
                        round(h["accuracy"], 4), round(h["val_loss"], 4), round(h["val_accuracy"], 4)])
    from matplotlib.figure import Figure

    from imgcls.viz.plots import _save

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([h["elapsed_s"] / 60 for h in hist], [h["val_accuracy"] for h in hist], "o-",
            label=f"{args.preset}: {cfg.model} {cfg.image_size}px")
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("wall-clock minutes (scan + cache + training + validation)")
    ax.set_ylabel("validation accuracy (catsdogs/val)")
    ax.set_title(f"Time to accuracy, 2 000 training photos, {torch.get_num_threads()} CPU threads")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "curve.png")

    best = max(hist, key=lambda h: h["val_accuracy"]) if hist else {}
    res = {"preset": args.preset, "model": cfg.model, "image_size": cfg.image_size,
           "epochs_run": len(hist), "budget_min": args.budget, "wall_s": round(wall, 1),
           **reached, "final_val_accuracy": round(hist[-1]["val_accuracy"], 4) if hist else None,
           "best_val_accuracy": round(best.get("val_accuracy", 0), 4),
           "best_val_accuracy_tta": round(final_tta, 4), "tta_eval_s": round(tta_s, 1),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "machine": platform.machine()}
    for t in THRESHOLDS:
        v = reached[f"time_to_{int(t * 100)}_s"]
        print(f"time to {t:.0%}: " + (f"{v / 60:.1f} min" if v is not None else "not reached"))
    print(f"final val_accuracy {res['final_val_accuracy']}, best {res['best_val_accuracy']} "
          f"(with flip TTA {res['best_val_accuracy_tta']}), {len(hist)} epochs in {wall / 60:.1f} min")
    print(json.dumps(res))
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
