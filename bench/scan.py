"""Scan rate on a real folder, cold (every file decoded) and cached (nothing changed).

    python bench/scan.py [--data ../shared/datasets/catsdogs/train] [--workers N]

Prints a table and a final JSON line. The cache goes to a fresh temporary folder, so
"cold" really decodes every file (the OS page cache may still hold the bytes: run
`sync; echo 3 > /proc/sys/vm/drop_caches` first for a disk-cold number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import PIL

import imgcls
from imgcls.data.scan import ScanOptions, scan

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs" / "train"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="cached scans to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        opts = ScanOptions(workers=args.workers, cache_dir=cache, progress=False)
        t = time.perf_counter()
        index = scan(args.data, opts)
        cold = time.perf_counter() - t
        warm = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            again = scan(args.data, opts)
            warm.append(time.perf_counter() - t)
        assert again.stats["decoded"] == 0
    n = len(index.samples) + len(index.rejected)
    best = min(warm)
    res = {"files": n, "cold_s": round(cold, 3), "cold_files_s": round(n / cold, 1),
           "cached_s": round(best, 3), "cached_files_s": round(n / best, 1),
           "workers": args.workers or os.cpu_count(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "pillow": PIL.__version__,
           "imgcls": imgcls.__version__, "machine": platform.machine()}
    print(f"{'':8}{'seconds':>10}{'files/s':>12}")
    print(f"{'cold':8}{cold:>10.2f}{n / cold:>12.0f}")
    print(f"{'cached':8}{best:>10.3f}{n / best:>12.0f}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
