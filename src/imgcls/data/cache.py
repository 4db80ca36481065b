"""DatasetIndex + PreprocessSpec -> ImageCache: every photo decoded once into one uint8 array.

Owns the on-disk cache: a folder holding `images.npy` ((N, H, W, 3) uint8, standard .npy so
`np.load(..., mmap_mode="r")` opens it), `labels.npy` and `manifest.json` (source
fingerprint, spec, paths, files left out, build time). Decoding JPEGs is the expensive part
of feeding a network; doing it once makes every later epoch a read of this array
(the idea behind FFCV and airbench). Our own code, because it is the product.

Safety: a cache is built in a temporary folder and renamed into place only when complete,
so an interrupted build never leaves a cache that looks valid. Decoding threads write
pixels with pwrite (no mapping), so resident memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.index import DatasetIndex, FileNote
from imgcls.data.preprocess import DEFAULT_MAX_PIXELS, ImageError, PreprocessSpec, load_image
from imgcls.data.scan import default_cache_dir
from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_json, display, is_within
from imgcls.runtime import thread_map

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "manifest.json"
# Every process that opens a cache holds a shared flock on this file for as long as it
# lives; clean-up deletes a cache only when it can take the lock exclusively (nobody reads).
READER_LOCK = "reader.lock"


@dataclass
class ImageCache:
    folder: Path
    spec: PreprocessSpec
    fingerprint: str  # of the DatasetIndex it was built from
    root: str  # the data folder
    class_names: list[str]
    paths: list[str]  # per row, relative to root
    labels: np.ndarray  # (N,) int64; -1 for a row whose file could not be decoded
    dropped: list[FileNote] = field(default_factory=list)
    data_offset: int = 0  # bytes before the first pixel in images.npy
    built_seconds: float = 0.0
    reused: bool = False
    lock_fd: int | None = None  # the reader lock held while this process uses the cache

    @property
    def images_path(self) -> Path:
        return self.folder / IMAGES

    @property
    def image_nbytes(self) -> int:
        return self.spec.height * self.spec.width * 3

    @property
    def rows(self) -> np.ndarray:
        """Rows that hold a decoded image."""
        return np.flatnonzero(self.labels >= 0)

    def rows_for(self, paths: list[str]) -> np.ndarray:
        """Rows of the given relative paths (files dropped at build time are left out)."""
        where = {p: i for i, p in enumerate(self.paths)}
        return np.array([where[p] for p in paths if p in where and self.labels[where[p]] >= 0],
                        dtype=np.int64)


def cache_key(index: DatasetIndex, spec: PreprocessSpec) -> tuple[str, str]:
    """(family, key): family names the data folder + spec; key adds the file fingerprint
    (paths, sizes, mtimes and contents) and the Pillow version, whose decoders and
    resampling filters can change pixels between releases."""
    import PIL

    spec_json = json.dumps(spec.to_dict(), sort_keys=True)
    family = hashlib.sha256(f"{index.root}|{spec_json}|v{CACHE_VERSION}".encode(
        "utf-8", "surrogateescape")).hexdigest()[:12]
    key = hashlib.sha256(f"{family}|{index.fingerprint}|pillow {PIL.__version__}".encode())
    return family, key.hexdigest()[:16]


def _hold_reader_lock(folder: Path) -> int | None:
    """Take a shared lock on the cache's reader lock (released when the process ends)."""
    import fcntl

    try:
        fd = os.open(folder / READER_LOCK, os.O_RDONLY)
    except OSError:
        return None  # a cache from before reader locks: nothing to hold
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _remove_unless_in_use(folder: Path) -> bool:
    """Delete a cache folder unless a live process holds its reader lock."""
    import fcntl

    try:
        fd = os.open(folder / READER_LOCK, os.O_RDONLY)
    except OSError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another job is reading it right now
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def open_cache(folder: str | os.PathLike) -> ImageCache:
    """Open a complete cache folder; raises ValueError if it is not one."""
    folder = Path(folder)
    try:
        with open(folder / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
        labels = np.load(folder / LABELS)
        spec = PreprocessSpec.from_dict(m["spec"])
        n = int(m["count"])
        expected = int(m["data_offset"]) + n * spec.height * spec.width * 3
        if m.get("version") != CACHE_VERSION or labels.shape != (n,) or \
                os.path.getsize(folder / IMAGES) != expected:
            raise ValueError("incomplete")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder}: not a complete image cache ({exc})") from None
    cache = ImageCache(folder, spec, m["fingerprint"], m["root"], m["class_names"], m["paths"],
                       labels, [FileNote(**d) for d in m["dropped"]], int(m["data_offset"]),
                       m.get("built_seconds", 0.0))
    cache.lock_fd = _hold_reader_lock(folder)
    if cache.lock_fd is not None:
        import weakref

        weakref.finalize(cache, os.close, cache.lock_fd)
    return cache


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_family(base: Path, family: str, keep: str) -> None:
    """Remove this family's stale caches and dead builds (only our own files, never data)."""
    for p in base.glob(f"{family}-*"):
        name = p.name
        if name == keep:
            continue
        if ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1].split("-")[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue  # another process is building right now
            shutil.rmtree(p, ignore_errors=True)
        else:
            _remove_unless_in_use(p)


def _decode_into(fd: int, offset: int, spec: PreprocessSpec, max_pixels: int,
                 row: int, path: str) -> str | None:
    """Decode one file and pwrite its pixels at its row; the reason if it failed."""
    try:
        arr = load_image(path, spec, max_pixels)
    except ImageError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    os.pwrite(fd, arr, offset + row * arr.nbytes)  # arr is C-contiguous: no copy
    return None


def _write_into(tmp: Path, index: DatasetIndex, spec: PreprocessSpec, workers: int,
                max_pixels: int, progress: bool | None) -> int | None:
    """Decode every photo into tmp/images.npy, then the labels and the manifest (written
    last: a folder without it is no cache). Returns the reader lock held on it."""
    t0 = time.perf_counter()
    n = len(index.samples)
    # Writes the .npy header and sizes the file (sparse); pixels come from the workers.
    mm = np.lib.format.open_memmap(tmp / IMAGES, mode="w+", dtype=np.uint8,
                                   shape=(n, spec.height, spec.width, 3))
    offset = mm.offset
    del mm
    labels = np.array([s.label for s in index.samples], dtype=np.int64)
    fd = os.open(tmp / IMAGES, os.O_WRONLY)
    try:
        reasons = thread_map(
            lambda job: _decode_into(fd, offset, spec, max_pixels, *job),
            [(i, index.abspath(s)) for i, s in enumerate(index.samples)],
            workers, desc="cache", unit="img", progress=progress)
        os.fsync(fd)
    finally:
        os.close(fd)
    dropped = []
    for row, reason in sorted((row, r) for row, r in enumerate(reasons) if r is not None):
        labels[row] = -1
        dropped.append(FileNote(index.samples[row].path, reason))
        logger.warning(f"{display(index.samples[row].path)}: {reason}; left out")
    np.save(tmp / LABELS, labels)
    (tmp / READER_LOCK).touch()
    # Hold the reader lock from before the rename: another build's clean-up must never
    # remove this cache between the rename and our open_cache.
    held = _hold_reader_lock(tmp)
    atomic_write_json(tmp / MANIFEST, {
        "version": CACHE_VERSION, "fingerprint": index.fingerprint, "root": index.root,
        "spec": spec.to_dict(), "count": n, "data_offset": offset,
        "class_names": index.class_names, "paths": [s.path for s in index.samples],
        "dropped": [{"path": d.path, "reason": d.reason} for d in dropped],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "built_seconds": round(time.perf_counter() - t0, 3),
    }, indent=None)
    return held


def build_cache(index: DatasetIndex, spec: PreprocessSpec, cache_dir: str | os.PathLike | None = None,
                workers: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                progress: bool | None = None, build: bool = True) -> ImageCache:
    """Return the cache for (index, spec), reusing a complete one or building it.

    build=False only opens an existing cache (DDP ranks other than 0) and raises UserError
    if there is none, which on several machines means the cache folder is not shared.
    """
    base = (Path(cache_dir) if cache_dir else default_cache_dir()) / "images"
    if is_within(base, Path(index.root)):
        raise UserError(f"cache folder {display(base)} is inside the data folder "
                        f"{display(index.root)}; choose one outside it (--cache-dir)")
    family, key = cache_key(index, spec)
    final = base / f"{family}-{key}"
    if final.exists():
        try:
            cache = open_cache(final)
            if cache.fingerprint == index.fingerprint:
                cache.reused = True
                return cache
        except ValueError:
            pass
        if build:
            shutil.rmtree(final, ignore_errors=True)
    if not build:
        raise UserError(f"no image cache at {display(final)}: rank 0 built it in its cache folder, "
                        "which this machine does not see; on several machines give every rank "
                        "the same shared --cache-dir")

    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"{family}-{key}.tmp-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir()
    try:
        held = _write_into(tmp, index, spec, workers, max_pixels, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: use it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _clean_family(base, family, final.name)
        return open_cache(final)
    finally:
        if held is not None:
            os.close(held)
