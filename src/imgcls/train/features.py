"""A fixed trunk's outputs, computed once per photo: how a run from ImageNet weights trains fast.

Owns the fast path of `--tune-units N`: only the last N units of a network (every imgcls
network runs as a list of units: models.layers.Units) and its head learn; the units before
them keep the source's weights and BatchNorm statistics, so each photo's output there is the
same in every epoch. It is computed once (for each training photo and, with --flip on a set
of fewer than MIRROR_BELOW photos, its mirror image, the one augmentation that survives
this; for each validation photo), kept in memory, and the epochs train the top on it: on a
2-core CPU the trunk of EfficientNet-Lite0 is most of its cost (BENCHMARKS.md), so an epoch
costs a fraction of one through the whole network.
The checkpoints hold the whole network, so predict, evaluate, serve and ONNX run it as usual
and see what validation saw.

`TopNet` is the trainable part as a module (the loop's `net`); `FeatureLoader` gives the
loop batches of stored outputs in the order a BatchLoader would give the photos.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from imgcls.data.augment import to_float
from imgcls.data.loader import Batch, BatchLoader, epoch_order, shard
from imgcls.train.bnstats import BATCHNORMS


def first_tuned_unit(model: nn.Module, tune_units: int) -> int:
    """The index of the first unit that learns (every unit before it is fixed)."""
    return max(1, model.num_units - tune_units)


def freeze_trunk(model: nn.Module, start: int) -> None:
    """Units before `start` keep their weights: no gradients, no optimizer state."""
    for i in range(start):
        for mod in model.unit_modules(i):
            for p in mod.parameters():
                p.requires_grad_(False)


class TopNet(nn.Module):
    """Units start.. and the head of `model`, on the outputs of the units before. From a
    source (keep_bn), BatchNorm keeps the source's statistics in the top too: a few dozen
    photos would replace ImageNet's with noise. From scratch the top's BatchNorm learns."""

    def __init__(self, model: nn.Module, start: int, keep_bn: bool = True):
        super().__init__()
        self.model, self.start, self.keep_bn = model, start, keep_bn

    def train(self, mode: bool = True) -> "TopNet":
        super().train(mode)
        fixed = {id(m) for i in range(self.start) for u in self.model.unit_modules(i)
                 for m in u.modules()}
        for m in self.model.modules():
            if isinstance(m, BATCHNORMS) and (self.keep_bn or id(m) in fixed):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_units(x, self.start))


@dataclass
class FeatureBank:
    """The trunk's outputs for a list of cache rows."""
    values: torch.Tensor  # (N, V, C, h, w): V views (the photo; its mirror image)
    labels: torch.Tensor  # (N,) int64
    seconds: float  # spent computing them


@torch.no_grad()
def compute_bank(model: nn.Module, start: int, loader: BatchLoader, views: int, autocast,
                 store: torch.dtype, shape: tuple[int, ...], bar=None) -> FeatureBank:
    """Run units 0..start-1 (eval mode) over every batch of `loader` (unshuffled), for each
    photo and, with views == 2, its mirror image, into one tensor of (N, views, *shape)
    allocated once. Stored in `store` (bf16 where the run computes in bf16: what the
    convolutions there produce anyway)."""
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    n = len(loader.rows)
    values = torch.empty((n, views, *shape), dtype=store)
    labels = torch.empty(n, dtype=torch.long)
    dtype = next(model.parameters()).dtype
    at = 0
    try:
        for b in loader:
            x = to_float(b.images, dtype)
            k = len(b.labels)
            for v in range(views):
                with autocast():
                    out = model.forward_units(x.flip(-1) if v else x, 0, start)
                values[at:at + k, v] = out.to(store).cpu()
            labels[at:at + k] = b.labels.cpu()
            at += k
            if bar is not None:
                bar.update(k * views)
    finally:
        model.train(was)
    return FeatureBank(values[:at], labels[:at], time.perf_counter() - t0)


def output_shape(model: nn.Module, start: int, size: int, device) -> tuple[int, ...]:
    """The shape of one photo's output of units 0..start-1 at `size` px."""
    p = next(model.parameters())
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model.forward_units(torch.zeros(1, 3, size, size, device=device, dtype=p.dtype),
                                  0, start)
    model.train(was)
    return tuple(out.shape[1:])


class FeatureLoader:
    """BatchLoader's interface over a FeatureBank: each epoch's order from (seed, epoch)
    alone, rank shards, several passes an epoch, and a view (photo or mirror image) drawn
    per item and epoch."""

    def __init__(self, bank: FeatureBank, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 passes: int = 1, device: torch.device | str = "cpu"):
        self.bank, self.batch_size = bank, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.passes = rank, world_size, passes
        self.device = torch.device(device)
        self.rows = np.arange(len(bank.labels), dtype=np.int64)
        self.epoch, self.start_batch = 0, 0

    set_epoch = BatchLoader.set_epoch
    __len__ = BatchLoader.__len__

    @property
    def even_shards(self) -> bool:
        return self.shuffle

    def __iter__(self) -> Iterator[Batch]:
        order = shard(epoch_order(self.rows, self.seed, self.epoch, self.shuffle, self.passes),
                      self.rank, self.world_size, self.shuffle)
        views = self.bank.values.shape[1]
        pick = (np.random.default_rng([self.seed, self.epoch, 2]).integers(0, views, len(order))
                if self.shuffle and views > 1 else np.zeros(len(order), dtype=np.int64))
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for i in range(self.start_batch * self.batch_size, stop, self.batch_size):
            idx = torch.from_numpy(order[i:i + self.batch_size])
            x = self.bank.values[idx, torch.from_numpy(pick[i:i + self.batch_size])]
            yield Batch(x.to(self.device), self.bank.labels[idx].to(self.device), order[i:i + self.batch_size])


# The stored outputs may take at most this share of the memory free when the run starts.
MEMORY_SHARE = 0.5


def feature_loaders(model: nn.Module, cfg, data, per_rank: int, passes: int, world,
                    device: torch.device, autocast, precision: str
                    ) -> tuple[TopNet, FeatureLoader, FeatureLoader, str]:
    """Fix the trunk, compute its outputs for the run's photos, and return (the part that
    learns, the training loader, the validation loader, the line that says what was done).
    Every rank computes every output (each needs them all over the epochs' shuffles)."""
    start = first_tuned_unit(model, cfg.tune_units)
    freeze_trunk(model, start)
    store = torch.bfloat16 if precision == "bf16" else next(model.parameters()).dtype
    shape = output_shape(model, start, cfg.image_size, device)
    views = _views(cfg, len(data.train_rows), len(data.val_rows), shape, store)
    bar = _bar(world, len(data.train_rows) * views + len(data.val_rows))
    train = compute_bank(model, start, BatchLoader(data.cache, data.train_rows, 64,
                                                   shuffle=False, device=device),
                         views, autocast, store, shape, bar)
    val = compute_bank(model, start, BatchLoader(data.val_cache, data.val_rows, 64,
                                                 shuffle=False, device=device),
                       1, autocast, store, shape, bar)
    if bar is not None:
        bar.close()
    per_rank_images = -(-len(data.train_rows) * passes // world.size)
    train_loader = FeatureLoader(train, per_rank, seed=cfg.seed, rank=world.rank,
                                 world_size=world.size, passes=passes, device=device,
                                 drop_last=per_rank_images % per_rank == 1)
    val_loader = FeatureLoader(val, per_rank, shuffle=False, rank=world.rank,
                               world_size=world.size, device=device)
    n = len(train.labels) * views + len(val.labels)
    seconds = train.seconds + val.seconds
    mb = (train.values.nbytes + val.values.nbytes) / 2**20
    line = (f"Fixed: the first {start} of {model.num_units} units keep the source's weights "
            f"(--tune-units {cfg.tune_units}); their outputs for {len(train.labels)} training "
            f"photos{' and their mirror images' if views == 2 else ''} and {len(val.labels)} "
            f"validation photos took {seconds:.0f} s ({n / max(seconds, 1e-9):.0f} img/s, "
            f"{mb:.0f} MB in memory)")
    return TopNet(model, start, keep_bn=bool(cfg.init)), train_loader, val_loader, line


# A set of at least this many training photos is stored without mirror images: they double
# the fixed units' work for little a large set gains from them. On the full Cats vs Dogs job
# (20,004 photos, seed 1337) the run without them gave 0.9910 with TTA in 4.3 minutes, with
# them 0.9892 in 6.0 (BENCHMARKS.md); on a small folder each mirror image is real variety.
MIRROR_BELOW = 10_000


def _views(cfg, n_train: int, n_val: int, shape: tuple[int, ...], store: torch.dtype) -> int:
    """2 (each photo and its mirror image) with --flip on a set of fewer than MIRROR_BELOW
    photos, else 1; 1 where two would not fit in memory; a UserError where one would not
    either."""
    from imgcls.errors import UserError
    from imgcls.train.memory import available_memory

    per = int(torch.tensor([], dtype=store).element_size() * torch.Size(shape).numel())
    free = MEMORY_SHARE * available_memory(torch.device("cpu"))
    views = 2 if cfg.flip and n_train < MIRROR_BELOW else 1
    if (n_train * views + n_val) * per > free and views == 2 and (n_train + n_val) * per <= free:
        views = 1
    need = (n_train * views + n_val) * per
    if need > free:
        raise UserError(f"the fixed units' outputs for {n_train + n_val} photos need "
                        f"{need / 2**30:.1f} GB, more than half the free memory "
                        f"({free / MEMORY_SHARE / 2**30:.1f} GB): --tune-units 0 trains every "
                        "layer on the photos instead, --max-per-class N trains on a sample")
    return views


def _bar(world, total: int):
    from imgcls.runtime import interactive

    if not world.main or not interactive():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="Fixed units", leave=False, dynamic_ncols=True)
