"""From scratch or from ImageNet weights: accuracy and wall time on real folders.

    bash ../shared/datasets/catsdogs25k/get.sh GITDIR      # the full set (optional)
    bash bench/get_flowers.sh GITDIR                       # flowers5 (optional)
    bash bench/get_caltech101.sh GITDIR                    # caltech101 (optional)
    python bench/imagenet_start.py --sets catsdogs pair-250 --starts lite0 scratch --seeds 1 2 3
    python bench/imagenet_start.py --sets catsdogs --starts lite0 -- --tune-units 4

Each run is `imgcls train DIR [--init efficientnet-liteN]` with the defaults otherwise
(--preset auto: the finetune recipe from ImageNet weights, the cpu recipe from scratch),
timed start to finish (scan, cache and the fixed units' outputs included, a cold cache),
then `imgcls evaluate RUN` (the recipe's TTA). Sets (folders of links built in a temporary
folder; nothing is copied or changed):
    catsdogs      ../shared/datasets/catsdogs: train/ (2,000), val/ (2,000)
    pair-250      125 photos per class of catsdogs/train, val/ 250 others of catsdogs/val
    catsdogs-100  100 photos per class of catsdogs/train, val: catsdogs/val
    full          the 25,000 photos, --split keras (20,004 / 4,996)
    flowers5      4,317 photos of 5 classes, the default 80/20 split
    flowers5-100  100 photos per class of flowers5, val: 200 other photos per class
    caltech101    8,677 photos of 101 classes, the default 80/20 split
Prints one row per run and a table of means; appends JSON lines to
bench/out/imagenet_start.jsonl with the CPU's name and flags and the versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402

HOME = Path.home() / "datasets"
CATSDOGS = ROOT.parent / "shared" / "datasets" / "catsdogs"
STARTS = {"scratch": [], "lite0": ["--init", "efficientnet-lite0"],
          "lite1": ["--init", "efficientnet-lite1"], "lite2": ["--init", "efficientnet-lite2"]}


def links(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())


def sample(folder: Path, n: int, skip: int = 0) -> dict[str, list[Path]]:
    """n photos of each class folder (a fixed shuffle), after the first `skip`."""
    out = {}
    for c in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(c.glob("*.jpg"))
        random.Random(c.name).shuffle(files)
        out[c.name] = files[skip:skip + n]
    return out


def build(name: str, work: Path) -> list[str]:
    """The `imgcls train` arguments that point at the set: DIR and its validation."""
    if name == "catsdogs":
        return [str(CATSDOGS / "train"), "--val-dir", str(CATSDOGS / "val")]
    if name == "full":
        return [str(HOME / "catsdogs25k"), "--split", "keras"]
    if name in ("flowers5", "caltech101"):
        return [str(HOME / name)]
    src, n, val_src, val_n, val_skip = {
        "pair-250": (CATSDOGS / "train", 125, CATSDOGS / "val", 125, 0),
        "catsdogs-100": (CATSDOGS / "train", 100, None, 0, 0),
        "flowers5-100": (HOME / "flowers5", 100, HOME / "flowers5", 200, 100)}[name]
    train, val = work / name / "train", work / name / "val"
    if not train.exists():
        for c, files in sample(src, n).items():
            links(files, train / c)
        if val_src is not None:
            for c, files in sample(val_src, val_n, val_skip).items():
                links(files, val / c)
    return [str(train), "--val-dir", str(val if val_src is not None else CATSDOGS / "val")]


def measure(work: Path, name: str, data: list[str], start: str, seed: int, args) -> dict | None:
    """One timed `imgcls train` and its `evaluate`; the run folder and cache deleted after."""
    import torch

    out, cache = work / "runs" / f"{name}-{start}-{seed}", work / f"cache-{name}-{start}-{seed}"
    try:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "imgcls", "train", *data, "--out",
                              str(out), "--seed", str(seed), "--cache-dir", str(cache),
                              *STARTS[start], *args.train_args],
                             capture_output=True, text=True)
        minutes = (time.perf_counter() - t0) / 60
        if res.returncode:
            print(res.stderr[-3000:], file=sys.stderr)
            return None
        ev = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(out),
                             "--json", "--no-figures"], capture_output=True, text=True,
                            check=True)
        hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        fixed = next((x for x in res.stdout.splitlines() if x.startswith("Fixed:")), "")
        return {"set": name, "start": start, "seed": seed, "name": args.name,
                "args": args.train_args, "epochs": len(hist),
                "best_val_accuracy": max(h["val_accuracy"] for h in hist),
                "accuracy_tta": json.loads(ev.stdout)["accuracy"],
                "minutes": round(minutes, 2),
                "train_images_per_s": round(statistics.mean(h["images_per_s"] for h in hist), 1),
                "fixed": fixed, "cpu": cpu(), "torch": torch.__version__,
                "python": platform.python_version()}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["catsdogs"])
    ap.add_argument("--starts", nargs="+", default=["lite0"], choices=list(STARTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--name", default="", help="a label for these rows")
    ap.add_argument("train_args", nargs="*", help="more `imgcls train` flags, after --")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="imgcls-imagenet-"))
    rows = []
    try:
        for name in args.sets:
            data = build(name, work)
            for start in args.starts:
                for seed in args.seeds:
                    row = measure(work, name, data, start, seed, args)
                    if row is None:
                        continue
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
                    with open(ROOT / "bench" / "out" / "imagenet_start.jsonl", "a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # each run's cache is gigabytes
    print("\n| set | start | accuracy (evaluate, TTA) | minutes | seeds |\n| --- | --- | --- | --- | --- |")
    for name in args.sets:
        for start in args.starts:
            got = [r for r in rows if r["set"] == name and r["start"] == start]
            if got:
                acc = [r["accuracy_tta"] for r in got]
                sd = f" (sd {statistics.stdev(acc):.4f})" if len(acc) > 1 else ""
                print(f"| {name} | {start} | {statistics.mean(acc):.4f}{sd} | "
                      f"{statistics.mean(r['minutes'] for r in got):.1f} | {len(got)} |")
    print(f"on {cpu()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
