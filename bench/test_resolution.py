"""Evaluate a run's best checkpoint at input sizes other than its training size.

    python bench/test_resolution.py RUN [--sizes 128 144 160] [--tta]

A network trained on random crops that zoom in sees objects larger in training than in a
plain resize at the same size; evaluating slightly above the training size can match them
again (Touvron et al., "Fixing the train-test resolution discrepancy", 2019). Prints the
validation accuracy (the run's own validation photos) at each size, with the CPU's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu  # noqa: E402

from imgcls.infer.evaluate import evaluate, run_validation_items  # noqa: E402
from imgcls.infer.predictor import Predictor  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 144, 160])
    ap.add_argument("--tta", action="store_true")
    args = ap.parse_args()
    predictor = Predictor.from_checkpoint(args.run)
    items = run_validation_items(Path(args.run), predictor.class_names)
    items = items[0] if isinstance(items, tuple) else items
    base = predictor.spec
    for size in args.sizes:
        predictor.spec = dataclasses.replace(base, height=size, width=size)
        t0 = time.perf_counter()
        r = evaluate(predictor, items, tta=args.tta)
        print(f"{size} px: accuracy {r.accuracy:.4f}  loss {r.loss:.4f}  "
              f"({len(items)} photos, {time.perf_counter() - t0:.0f} s; trained at "
              f"{base.height} px; TTA {args.tta}) on {cpu()}", flush=True)


if __name__ == "__main__":
    main()
