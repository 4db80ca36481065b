"""Start from a model or from scratch: small folders of classes the model never saw.

    bash bench/get_flowers.sh GITDIR                       # once: $HOME/datasets/flowers5
    python bench/finetune.py --source bench/out/full_size/run [--minutes 3] [--seeds 1 2 3]

The source is a run trained on the 25,000 Cats vs Dogs photos (bench/full_size.py). Builds,
from the five flower classes (links to a seeded sample: nothing is copied or changed), the
folders: daisy/dandelion at 120 and 240 photos per class, and all five classes at 100 each;
a fixed validation set of 200 other photos per class for each. Each folder is trained per
seed twice with the same wall-clock budget (`--time-limit MINUTES`): from scratch (`imgcls
train` with its defaults: the cpu preset here) and from the source (`--init SOURCE`: the
finetune preset); then `imgcls evaluate` (each recipe's own flip-TTA choice). Prints one row
per run and the means, and appends JSON lines to bench/out/finetune.jsonl with the CPU's
name and flags and the versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402

FOLDERS = {"pair-120": (("daisy", "dandelion"), 120), "pair-240": (("daisy", "dandelion"), 240),
           "five-100": (("daisy", "dandelion", "rose", "sunflower", "tulip"), 100)}
VAL_PER_CLASS = 200


def build(photos: Path, work: Path, name: str) -> tuple[Path, Path]:
    """(train, val) folders of links for one of FOLDERS; the sample is fixed (seed 0)."""
    classes, n = FOLDERS[name]
    train, val = work / name / "train", work / name / "val"
    for c in classes:
        files = sorted((photos / c).glob("*.jpg"))
        random.Random(f"{c}").shuffle(files)  # one validation set per class, all folders
        for folder, chosen in ((val, files[:VAL_PER_CLASS]),
                               (train, files[VAL_PER_CLASS:VAL_PER_CLASS + n])):
            (folder / c).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (folder / c / f.name).symlink_to(f)
    return train, val


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) / 60


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default=str(ROOT / "bench" / "out" / "full_size" / "run"))
    ap.add_argument("--photos", default=str(Path.home() / "datasets" / "flowers5"))
    ap.add_argument("--folders", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--minutes", type=float, default=3.0, help="each run's --time-limit")
    ap.add_argument("--recipes", nargs="+", default=["scratch", "init"],
                    choices=["scratch", "init"], help="which of the two to run")
    ap.add_argument("--init-args", default="", help="more `imgcls train` flags for the runs "
                    "from the source, in one string (e.g. '--preset cpu')")
    ap.add_argument("--name", default="", help="a label for these rows in finetune.jsonl")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="imgcls-finetune-"))
    rows = []
    for name in args.folders:
        train, val = build(Path(args.photos), work, name)
        for seed in args.seeds:
            for recipe, extra in (("scratch", []),
                                  ("init", ["--init", args.source, *shlex.split(args.init_args)])):
                if recipe not in args.recipes:
                    continue
                out = work / "runs" / f"{name}-{recipe}-{seed}"
                minutes = run([sys.executable, "-m", "imgcls", "train", str(train), "--val-dir",
                               str(val), "--out", str(out), "--seed", str(seed),
                               "--time-limit", str(args.minutes), *extra])
                res = subprocess.run([sys.executable, "-m", "imgcls", "evaluate", str(out),
                                      "--json", "--no-figures"], check=True, capture_output=True,
                                     text=True)
                cfg = json.loads((out / "config.json").read_text())
                rows.append({"folder": name, "recipe": recipe, "seed": seed, "name": args.name,
                             "args": extra[2:],
                             "accuracy": json.loads(res.stdout)["accuracy"],
                             "minutes": round(minutes, 2), "preset": cfg["preset"],
                             "epochs_run": len((out / "metrics.jsonl").read_text().splitlines()),
                             "source": args.source if recipe == "init" else None,
                             "cpu": cpu(), "torch": torch.__version__,
                             "python": platform.python_version()})
                print(json.dumps(rows[-1]), flush=True)
                with open(ROOT / "bench" / "out" / "finetune.jsonl", "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print("\n| folder | from scratch | from the source | gain |\n| --- | --- | --- | --- |")
    for name in args.folders:
        acc = {r: [x["accuracy"] for x in rows if x["folder"] == name and x["recipe"] == r]
               for r in ("scratch", "init")}
        if not all(acc.values()):  # one recipe only: its mean
            print(f"| {name} | " + " | ".join(
                f"{statistics.mean(v):.4f}" if v else "-" for v in acc.values()) + " | |")
            continue
        m = {r: statistics.mean(v) for r, v in acc.items()}
        sd = {r: statistics.stdev(v) if len(v) > 1 else 0.0 for r, v in acc.items()}
        print(f"| {name} | {m['scratch']:.4f} (sd {sd['scratch']:.4f}) | {m['init']:.4f} "
              f"(sd {sd['init']:.4f}) | {100 * (m['init'] - m['scratch']):+.1f} points |")
    print(f"seeds {args.seeds}, {args.minutes:g} minutes each, on {cpu()}")


if __name__ == "__main__":
    main()
