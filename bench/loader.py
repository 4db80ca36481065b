"""Input pipeline speed: cache build, steady-state epochs, epochs with augmentation.

    python bench/loader.py [--data ../shared/datasets/catsdogs/train] [--limit N]

Prints a table and a final JSON line with build_img_s, epoch_img_s, epoch_aug_img_s,
peak_rss_mb and rss_after_build_mb (this process; the decode threads live in it). Epochs read
shuffled uint8 batches of 128 at 180x180 from the cache and convert them to float on the
CPU; the augmented epoch adds a random flip and rotation (factor 0.1). If TensorFlow/Keras is
importable, the tutorial's pipeline (image_dataset_from_directory + prefetch, and with the
same flip/rotation mapped with AUTOTUNE) is timed in the same run and the ratios printed.
Run with --limit 500 and without to see that memory does not grow with the image count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgcls.data.augment import AugmentConfig, augment_batch, to_float
from imgcls.data.cache import build_cache
from imgcls.data.loader import BatchLoader
from imgcls.data.preprocess import PreprocessSpec
from imgcls.data.scan import ScanOptions, scan
from imgcls.runtime import cpu_threads, keep_freed_memory

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs" / "train"


def rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def time_epochs(loader, fn, epochs: int) -> float:
    """Images/s of the fastest of `epochs` full epochs (after one warm-up epoch)."""
    best = 0.0
    for e in range(epochs + 1):
        loader.set_epoch(e)
        t, n = time.perf_counter(), 0
        for b in loader:
            fn(b)
            n += len(b.rows)
        if e:
            best = max(best, n / (time.perf_counter() - t))
    return best


def keras_rates(data: str, size: int, batch: int) -> dict:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf
    except ImportError:
        return {}
    ds = keras.utils.image_dataset_from_directory(data, image_size=(size, size),
                                                  batch_size=batch, seed=1337, verbose=False)
    aug = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])

    def rate(d):
        d = d.prefetch(tf.data.AUTOTUNE)
        for _ in d:  # warm-up epoch
            pass
        t, n = time.perf_counter(), 0
        for x, _ in d:
            n += int(x.shape[0])
        return n / (time.perf_counter() - t)

    plain = rate(ds)
    augmented = rate(ds.map(lambda x, y: (aug(x, training=True), y),
                            num_parallel_calls=tf.data.AUTOTUNE))
    return {"keras_img_s": round(plain, 1), "keras_aug_img_s": round(augmented, 1),
            "keras": keras.__version__, "tensorflow": tf.__version__}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images")
    ap.add_argument("--size", type=int, default=180)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-keras", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(cpu_threads())

    tmp = Path(tempfile.mkdtemp(prefix="imgcls-bench-"))
    try:
        index = scan(args.data, ScanOptions(cache_dir=str(tmp), progress=False))
        if args.limit:
            index = index.subset(list(range(min(args.limit, len(index.samples)))))
        spec = PreprocessSpec(args.size, args.size)
        t = time.perf_counter()
        cache = build_cache(index, spec, tmp, progress=False)
        build = len(index.samples) / (time.perf_counter() - t)
        rss_after_build = rss_mb()

        loader = BatchLoader(cache, cache.rows, args.batch, seed=0)
        epoch = time_epochs(loader, lambda b: to_float(b.images), args.epochs)
        g = torch.Generator().manual_seed(0)
        cfg = AugmentConfig(flip=True, rotation=0.1)
        epoch_aug = time_epochs(loader, lambda b: augment_batch(to_float(b.images), cfg, g),
                                args.epochs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res = {"images": len(index.samples), "size": args.size, "batch": args.batch,
           "build_img_s": round(build, 1), "epoch_img_s": round(epoch, 1),
           "epoch_aug_img_s": round(epoch_aug, 1), "peak_rss_mb": round(rss_mb(), 1),
           "rss_after_build_mb": round(rss_after_build, 1),
           "cache_mb": round(len(index.samples) * spec.height * spec.width * 3 / 2**20, 1),
           "cpus": cpu_threads(), "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "machine": platform.machine()}
    if not args.no_keras:
        res.update(keras_rates(args.data, args.size, args.batch))
    print(f"{'stage':34}{'images/s':>10}")
    print(f"{'cache build (decode+resize once)':34}{build:>10.0f}")
    print(f"{'epoch: uint8 batch -> float':34}{epoch:>10.0f}")
    print(f"{'epoch + flip + rotation (CPU)':34}{epoch_aug:>10.0f}")
    if "keras_img_s" in res:
        k, ka = res["keras_img_s"], res["keras_aug_img_s"]
        print(f"{'keras image_dataset_from_directory':34}{k:>10.0f}")
        print(f"{'keras + flip + rotation (map)':34}{ka:>10.0f}")
        res.update(build_vs_keras=round(build / k, 2), epoch_vs_keras=round(epoch / k, 1),
                   aug_vs_keras=round(epoch_aug / ka, 2))
        print(f"ratios: build {build / k:.2f}x, epoch {epoch / k:.1f}x, augmented {epoch_aug / ka:.2f}x")
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB, after the cache build "
          f"{res['rss_after_build_mb']:.0f} MB (cache file {res['cache_mb']:.0f} MB)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
