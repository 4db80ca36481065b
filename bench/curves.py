"""Several full-size runs on one figure: validation accuracy against wall-clock minutes.

    python bench/curves.py bench/out/full_size_defaults:"20 epochs" \
        bench/out/full_size_lr50_e30:"30 epochs, --low-res 0.5" -o docs/figures/x.png

Each argument is an output folder of bench/full_size.py (its curve.csv), optionally with
":label". The minutes are full_size.py's (scan and cold cache included).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="OUT[:label] folders of bench/full_size.py")
    ap.add_argument("-o", "--output", required=True, help="PNG file")
    ap.add_argument("--title", default="catsdogs25k, imgcls train")
    args = ap.parse_args()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for spec in args.runs:
        folder, _, label = spec.partition(":")
        with open(Path(folder) / "curve.csv") as f:
            rows = list(csv.DictReader(f))
        ax.plot([float(r["minutes"]) for r in rows], [float(r["val_accuracy"]) for r in rows],
                "o-", ms=3, label=label or Path(folder).name)
    for t in (0.95, 0.97, 0.975):
        ax.axhline(t, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="minutes (scan and cache included)", ylabel="validation accuracy",
           ylim=(0.85, 0.98), title=f"{args.title}\n{cpu()}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
