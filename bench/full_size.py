"""The tutorial's whole job at full size: `imgcls train` with its defaults on the 25,000-photo
Cats vs Dogs set, validation accuracy against wall-clock minutes.

    bash ../shared/datasets/catsdogs25k/get.sh GITDIR        # once: $HOME/datasets/catsdogs25k
    python bench/full_size.py --time-limit 30                 # defaults + a 30-minute budget
    python bench/full_size.py --time-limit 0 -- --amp bf16    # no budget, more train flags

Runs `imgcls train DATA --split keras --seed 1337` (Keras's exact 80/20 split) under
/usr/bin/time (peak RSS of the whole run), then `imgcls evaluate RUN` (with the recipe's flip
TTA). The clock starts before the scan and the cold image cache, so the minutes are what a
user waits. Prints the curve, the minutes to 0.95, 0.97 and 0.975, and writes
OUT/curve.csv and OUT/curve.png; appends a JSON line with the CPU's name and flags and the
versions to bench/out/full_size.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402

THRESHOLDS = (0.95, 0.97, 0.975)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path.home() / "datasets" / "catsdogs25k"))
    ap.add_argument("--time-limit", type=float, default=30, help="minutes (0 = none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "full_size"))
    ap.add_argument("train_args", nargs="*", help="more `imgcls train` flags, after --")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cache = tempfile.mkdtemp(prefix="imgcls-full-")  # a cold cache: its build is timed
    cmd = [sys.executable, "-m", "imgcls", "train", args.data, "--split", "keras", "--seed",
           "1337", "--out", str(out / "run"), "--cache-dir", cache,
           "--time-limit", str(args.time_limit), *args.train_args]
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    sys.stderr.write(res.stderr[-4000:])
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    ev = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(out / "run"), "--json",
                         "--no-figures"], capture_output=True, text=True, check=True)
    report = json.loads(ev.stdout)
    hist = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    with open(out / "curve.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "minutes", "val_accuracy", "images_per_s"])
        for h in hist:
            w.writerow([h["epoch"], round(h["elapsed_s"] / 60, 2), h["val_accuracy"],
                        round(h["images_per_s"], 1)])
    reached = {t: next((round(h["elapsed_s"] / 60, 1) for h in hist if h["val_accuracy"] >= t),
                       None) for t in THRESHOLDS}
    _figure(hist, out / "curve.png", cpu())
    import torch

    row = {"cpu": cpu(), "torch": torch.__version__, "python": platform.python_version(),
           "args": args.train_args, "time_limit": args.time_limit, "epochs": len(hist),
           "minutes": round(wall / 60, 1), "final_val_accuracy": hist[-1]["val_accuracy"],
           "evaluate_accuracy_tta": report["accuracy"], "roc_auc": report["roc_auc"],
           "minutes_to": {str(k): v for k, v in reached.items()},
           "train_images_per_s": round(sum(h["images_per_s"] for h in hist) / len(hist), 1),
           "peak_rss_mb": round(int(peak.group(1)) / 1024) if peak else None,
           "exit": res.returncode}
    print(json.dumps(row))
    with open(ROOT / "bench" / "out" / "full_size.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    shutil.rmtree(cache, ignore_errors=True)


def _figure(hist: list[dict], path: Path, machine: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot([h["elapsed_s"] / 60 for h in hist], [h["val_accuracy"] for h in hist], "o-")
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="minutes (scan and cache included)", ylabel="validation accuracy",
           title=f"catsdogs25k, imgcls train defaults\n{machine}")
    ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
