"""cache: bit-exact pixels, invalidated by any change, never half-built, outside the data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import images
import numpy as np
import pytest

from imgcls.data.cache import build_cache, open_cache
from imgcls.data.preprocess import PreprocessSpec, load_image
from imgcls.data.scan import scan
from imgcls.errors import UserError

SPEC = PreprocessSpec(24, 32)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    for i in range(14):
        images.jpeg(root / ("cat" if i % 2 else "dog") / f"{i}.jpg", w=40 + i, h=30 + 2 * i, seed=i)
    images.save(root / "cat" / "gray.png", images.pattern(20, 50, 99)[..., 0])
    images.exif_jpeg(root / "dog" / "turned.jpg", orientation=8, seed=5)
    return root


def test_cache_pixels_equal_preprocess_output_bit_for_bit(tree, tmp_path):
    index = scan(tree)
    for workers in (1, 2):
        cache = build_cache(index, SPEC, tmp_path / f"c{workers}", workers=workers)
        arr = np.load(cache.images_path, mmap_mode="r")
        assert arr.shape == (len(index.samples), 24, 32, 3) and arr.dtype == np.uint8
        for row, s in enumerate(index.samples):
            assert np.array_equal(arr[row], load_image(index.abspath(s), SPEC)), s.path
        assert cache.labels.tolist() == index.labels
        assert cache.paths == [s.path for s in index.samples]
        assert not cache.reused


def test_reused_when_unchanged_rebuilt_when_anything_changes(tree, tmp_path):
    c = tmp_path / "c"
    first = build_cache(scan(tree), SPEC, c)
    again = build_cache(scan(tree), SPEC, c)
    assert again.reused and again.folder == first.folder

    other_spec = build_cache(scan(tree), PreprocessSpec(16, 16), c)
    assert not other_spec.reused and other_spec.folder != first.folder

    images.jpeg(tree / "cat" / "1.jpg", w=41, h=32, seed=1234)  # content changed
    os.utime(tree / "cat" / "1.jpg", ns=(1, 1))
    changed = build_cache(scan(tree), SPEC, c)
    assert not changed.reused
    row = changed.paths.index("cat/1.jpg")
    assert np.array_equal(np.load(changed.images_path, mmap_mode="r")[row], load_image(tree / "cat" / "1.jpg", SPEC))

    images.jpeg(tree / "dog" / "new.jpg", seed=77)  # added
    added = build_cache(scan(tree), SPEC, c)
    assert not added.reused and "dog/new.jpg" in added.paths

    (tree / "dog" / "0.jpg").unlink()  # removed
    import gc

    keep_spec = other_spec.folder
    del first, again, changed, added, other_spec  # this process stops reading the old ones
    gc.collect()
    removed = build_cache(scan(tree), SPEC, c)
    assert not removed.reused and "dog/0.jpg" not in removed.paths
    # Stale caches of the same folder and spec are cleaned up; the other spec's stays.
    assert sorted(p.name for p in (c / "images").iterdir()) == sorted(
        [removed.folder.name, keep_spec.name])


def test_file_broken_after_the_scan_is_left_out_not_fatal(tree, tmp_path, caplog):
    index = scan(tree)
    (tree / "cat" / "3.jpg").write_bytes(b"\xff\xd8\xff garbage now")
    cache = build_cache(index, SPEC, tmp_path / "c")
    assert [d.path for d in cache.dropped] == ["cat/3.jpg"]
    # the library logs it (the CLI prints it as "imgcls: warning: ...")
    assert any("cat/3.jpg" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    row = cache.paths.index("cat/3.jpg")
    assert cache.labels[row] == -1 and row not in cache.rows
    assert len(cache.rows) == len(index.samples) - 1


def test_killed_build_leaves_no_usable_cache(tree, tmp_path):
    """kill -9 in the middle of a build: nothing that looks like a cache is left."""
    for i in range(300):  # PNGs (no reduced decode): enough work to be killed mid-build
        images.save(tree / "dog" / f"more{i}.png", images.pattern(256, 256, 1000 + i))
    scan(tree)  # so the child's scan is answered from the scan cache
    c = tmp_path / "c"
    code = ("import sys; from imgcls.data.scan import scan; from imgcls.data.cache import build_cache; "
            "from imgcls.data.preprocess import PreprocessSpec; "
            "build_cache(scan(sys.argv[1]), PreprocessSpec(24, 32), sys.argv[2], workers=1)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tree), str(c)])
    deadline = time.time() + 60
    while time.time() < deadline and not any((c / "images").glob("*.tmp-*/images.npy")):
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list((c / "images").iterdir())
    assert leftovers and all(".tmp-" in p.name for p in leftovers)  # killed mid-build
    for p in leftovers:
        with pytest.raises(ValueError):
            open_cache(p)
    cache = build_cache(scan(tree), SPEC, c)  # the next build is clean and cleans up
    assert not cache.reused and [p.name for p in (c / "images").iterdir()] == [cache.folder.name]


def test_cache_inside_data_folder_is_refused(tree):
    with pytest.raises(UserError, match="inside the data folder"):
        build_cache(scan(tree), SPEC, tree / "cat")


def test_open_only_mode_finds_the_built_cache_or_says_it_is_not_shared(tree, tmp_path):
    index = scan(tree)
    with pytest.raises(UserError, match="shared --cache-dir"):
        build_cache(index, SPEC, tmp_path / "elsewhere", build=False)
    built = build_cache(index, SPEC, tmp_path / "c")
    assert build_cache(index, SPEC, tmp_path / "c", build=False).folder == built.folder


def test_a_file_rewritten_with_the_same_size_and_mtime_gets_its_new_pixels(tree, tmp_path):
    c = tmp_path / "c"
    path = tree / "cat" / "same.bmp"  # BMP: the same dimensions give the same file size
    images.save(path, images.pattern(30, 20, 1), "BMP")
    first = build_cache(scan(tree), SPEC, c)
    st = path.stat()
    images.save(path, images.pattern(30, 20, 2), "BMP")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    changed = build_cache(scan(tree), SPEC, c)
    assert changed.folder != first.folder
    row = changed.paths.index("cat/same.bmp")
    assert np.array_equal(np.load(changed.images_path, mmap_mode="r")[row], load_image(path, SPEC))


def test_the_pillow_version_is_part_of_the_cache_key(tree, monkeypatch):
    import PIL

    from imgcls.data.cache import cache_key

    index = scan(tree)
    family, key = cache_key(index, SPEC)
    monkeypatch.setattr(PIL, "__version__", "0.0.1")
    assert cache_key(index, SPEC) == (family, cache_key(index, SPEC)[1]) != (family, key)


def test_clean_up_keeps_a_cache_another_job_is_reading(tree, tmp_path):
    c = tmp_path / "c"
    old = build_cache(scan(tree), SPEC, c).folder
    reader = subprocess.Popen(  # another job: opens the cache and keeps reading it
        [sys.executable, "-c", "import sys, time; from imgcls.data.cache import open_cache; "
         "c = open_cache(sys.argv[1]); print('open', flush=True); time.sleep(60)", str(old)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        images.jpeg(tree / "cat" / "new.jpg", seed=4321)
        newer = build_cache(scan(tree), SPEC, c)
        assert newer.folder != old and old.exists()  # in use: kept
        assert np.load(open_cache(old).images_path, mmap_mode="r").shape[0] == 16
    finally:
        reader.kill()
        reader.wait()
    images.jpeg(tree / "cat" / "newer.jpg", seed=4322)
    build_cache(scan(tree), SPEC, c)
    assert not old.exists()  # nobody reads it any more: cleaned up
