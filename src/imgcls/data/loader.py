"""ImageCache -> batches of uint8 tensors: seeded per-epoch shuffling, rank sharding, prefetch.

Owns the order in which a run sees its images. An epoch's order depends only on (seed,
epoch), never on history, so a resumed run and every DDP rank agree on it without talking.
Batches are read from the cache file with preadv straight into (pinned, when training on
CUDA) tensors by a background thread: no decode, no per-image Python objects, and, unlike
reading through a memory map, no growth of resident memory with the size of the cache.
Our own code: torch's DataLoader would pickle every batch across processes for no gain here.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from imgcls.data.cache import ImageCache


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, H, W, 3) uint8, on the target device
    labels: torch.Tensor  # (B,) int64
    rows: np.ndarray  # cache rows, for looking up paths (evaluation, top losses)


def epoch_order(rows: np.ndarray, seed: int, epoch: int, shuffle: bool = True,
                passes: int = 1) -> np.ndarray:
    """The epoch's order of `rows`: a permutation drawn from (seed, epoch) alone; with
    passes > 1, that many whole permutations one after another (a small training set seen
    several times an epoch, each image once per pass)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not shuffle:
        return np.tile(rows, passes)
    if passes == 1:
        return np.random.default_rng([seed, epoch]).permutation(rows)
    rng = np.random.default_rng([seed, epoch, passes])
    return np.concatenate([rng.permutation(rows) for _ in range(passes)])


def shard(order: np.ndarray, rank: int, world_size: int, even: bool) -> np.ndarray:
    """Rank k of n takes every n-th sample starting at k.

    even=True pads the order by wrapping around (as torch's DistributedSampler does) so every
    rank gets the same number of samples and so the same number of steps: needed for
    training under DDP. even=False gives every sample exactly once across ranks (evaluation).
    """
    if world_size == 1:
        return order
    if even and len(order) % world_size:
        pad = world_size - len(order) % world_size
        order = np.concatenate([order, np.resize(order, pad)])
    return order[rank::world_size]


class BatchLoader:
    """Iterate over batches of a cache's rows; call set_epoch(e) before each epoch."""

    def __init__(self, cache: ImageCache, rows: np.ndarray, batch_size: int, *,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, even_shards: bool | None = None,
                 prefetch: int = 3, device: str | torch.device = "cpu", passes: int = 1):
        if batch_size < 1 or passes < 1:
            raise ValueError("batch_size and passes must be >= 1")
        self.passes = passes
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.even_shards = shuffle if even_shards is None else even_shards
        self.prefetch = max(1, prefetch)
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.epoch = 0
        self.start_batch = 0  # skip this many batches of the epoch (resuming mid-epoch)
        self._labels = torch.from_numpy(cache.labels)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> np.ndarray:
        """This rank's rows for the current epoch, in reading order."""
        order = epoch_order(self.rows, self.seed, self.epoch, self.shuffle, self.passes)
        return shard(order, self.rank, self.world_size, self.even_shards)

    def __len__(self) -> int:
        n, ws = len(self.rows) * self.passes, self.world_size
        if ws > 1:
            n = -(-n // ws) if self.even_shards else len(range(self.rank, n, ws))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> list[np.ndarray]:
        order = self.order()
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def _read(self, fd: int, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cache
        out = torch.empty((len(rows), c.spec.height, c.spec.width, 3), dtype=torch.uint8,
                          pin_memory=self.pin)
        buf = out.numpy()
        nbytes = c.image_nbytes
        for i, r in enumerate(rows):
            got = os.preadv(fd, [buf[i]], c.data_offset + int(r) * nbytes)
            if got != nbytes:
                raise OSError(f"{c.images_path}: short read at row {r} (cache damaged?)")
        labels = self._labels[torch.from_numpy(rows)]
        return out, labels.pin_memory() if self.pin else labels

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()[self.start_batch:]
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                fd = os.open(self.cache.images_path, os.O_RDONLY)
                try:
                    for rows in batches:
                        if not put((rows, *self._read(fd, rows))):
                            return
                finally:
                    os.close(fd)
                put(done)
            except BaseException as exc:  # handed to the consumer, re-raised there
                put(exc)

        thread = threading.Thread(target=produce, name="imgcls-loader", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                rows, images, labels = item
                if self.device.type != "cpu":
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                yield Batch(images, labels, rows)
        finally:
            stop.set()
            thread.join(timeout=5)
