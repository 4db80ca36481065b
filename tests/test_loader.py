"""loader: every sample once per epoch (across ranks too), seeded order, partial batches."""

from __future__ import annotations

from collections import Counter

import images
import numpy as np
import pytest
import torch

from imgcls.data.cache import build_cache
from imgcls.data.loader import BatchLoader
from imgcls.data.preprocess import PreprocessSpec
from imgcls.data.scan import scan


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader") / "data"
    for i in range(23):
        images.jpeg(root / ("a" if i < 9 else "b") / f"{i:02d}.jpg", w=20, h=20, seed=i)
    return build_cache(scan(root), PreprocessSpec(16, 16), root.parent / "cache")


def rows_of(loader):
    return [int(r) for b in loader for r in b.rows]


def test_batches_hold_the_cached_pixels_and_labels(cache):
    arr = np.load(cache.images_path, mmap_mode="r")
    seen = 0
    for b in BatchLoader(cache, cache.rows, 5, seed=3):
        assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (16, 16, 3)
        assert np.array_equal(b.images.numpy(), arr[b.rows])
        assert b.labels.tolist() == cache.labels[b.rows].tolist()
        seen += len(b.rows)
    assert seen == 23


def test_each_epoch_is_a_seeded_permutation(cache):
    loader = BatchLoader(cache, cache.rows, 4, seed=7)
    e0 = rows_of(loader)
    assert sorted(e0) == list(range(23))
    assert rows_of(loader) == e0  # same epoch, same order
    loader.set_epoch(1)
    e1 = rows_of(loader)
    assert sorted(e1) == list(range(23)) and e1 != e0
    assert rows_of(BatchLoader(cache, cache.rows, 4, seed=7)) == e0
    assert rows_of(BatchLoader(cache, cache.rows, 4, seed=8)) != e0
    assert rows_of(BatchLoader(cache, cache.rows, 4, shuffle=False)) == list(range(23))


def test_partial_last_batch_kept_or_dropped(cache):
    keep = BatchLoader(cache, cache.rows, 5)
    assert [len(b.rows) for b in keep] == [5, 5, 5, 5, 3] and len(keep) == 5
    drop = BatchLoader(cache, cache.rows, 5, drop_last=True)
    assert [len(b.rows) for b in drop] == [5, 5, 5, 5] and len(drop) == 4


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_together_see_every_sample_exactly_once(cache, world):
    for epoch in (0, 5):
        seen = []
        for rank in range(world):
            loader = BatchLoader(cache, cache.rows, 3, seed=1, rank=rank, world_size=world,
                                 even_shards=False)
            loader.set_epoch(epoch)
            seen += rows_of(loader)
            assert len(loader) == len(list(loader))
        assert Counter(seen) == Counter(range(23))


def test_even_shards_give_every_rank_the_same_number_of_steps(cache):
    lens = []
    for rank in range(4):
        loader = BatchLoader(cache, cache.rows, 2, seed=1, rank=rank, world_size=4)
        lens.append(len(list(loader)))
        assert len(loader) == lens[-1]
    assert len(set(lens)) == 1


def test_subset_rows_only(cache):
    rows = cache.rows[::3]
    assert sorted(rows_of(BatchLoader(cache, rows, 4))) == sorted(rows.tolist())


def test_stopping_early_does_not_hang(cache):
    loader = BatchLoader(cache, cache.rows, 1, prefetch=1)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert len(rows_of(loader)) == 23


def test_passes_show_every_image_that_many_times_an_epoch(cache):
    loader = BatchLoader(cache, cache.rows, 4, seed=7, passes=3)
    e0 = rows_of(loader)
    assert len(loader) == -(-23 * 3 // 4) and len(e0) == 69
    for k in range(3):  # whole passes: each image once in each third, in a fresh order
        assert sorted(e0[23 * k:23 * (k + 1)]) == list(range(23))
    assert e0[:23] != e0[23:46]
    assert rows_of(BatchLoader(cache, cache.rows, 4, seed=7, passes=3)) == e0
    loader.set_epoch(1)
    assert rows_of(loader) != e0
    # Two ranks: together they see each image three times (DDP pads the shards evenly).
    both = Counter(r for rank in (0, 1) for r in rows_of(
        BatchLoader(cache, cache.rows, 4, seed=7, passes=3, rank=rank, world_size=2)))
    assert sum(both.values()) == 70 and min(both.values()) == 3 and max(both.values()) == 4
