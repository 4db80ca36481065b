"""Builders of small real images (and broken ones) for tests. Each returns the path."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A deterministic, non-uniform RGB image (smooth gradients plus noise), HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1),
                     (x + y) * 127 / max(w + h - 2, 1)], -1)
    noise = rng.integers(0, 60, (h, w, 3))
    return np.clip(base * 0.7 + noise + seed * 17 % 50, 0, 255).astype(np.uint8)


def save(path: Path, arr_or_img, fmt: str | None = None, **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, fmt, **kw)
    return path


def jpeg(path, w=48, h=40, seed=0, **kw) -> Path:
    return save(path, pattern(w, h, seed), "JPEG", quality=90, **kw)


def jpeg_bytes(w=48, h=40, seed=0, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(pattern(w, h, seed)).save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def strip_app0(data: bytes) -> bytes:
    """Remove the JFIF APP0 segment, leaving a valid JPEG (as cameras write Exif-only files)."""
    assert data[:2] == b"\xff\xd8"
    i = 2
    out = bytearray(data[:2])
    while data[i] == 0xFF and data[i + 1] not in (0xDA,):
        seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
        if data[i + 1] != 0xE0:
            out += data[i:i + 2 + seg_len]
        i += 2 + seg_len
    out += data[i:]
    return bytes(out)


def exif_jpeg(path, orientation: int | None = None, jfif: bool = True, w=48, h=32, seed=0) -> Path:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    if orientation:
        exif[0x0112] = orientation
    data = jpeg_bytes(w, h, seed, exif=exif.tobytes())
    if not jfif:
        data = strip_app0(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)


def png_header_only(path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels but holds almost no data (a decompression bomb)."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)


def animated_gif(path, frames=3, w=32, h=32) -> Path:
    imgs = [Image.fromarray(pattern(w, h, s)).convert("P") for s in range(frames)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    imgs[0].save(path, "GIF", save_all=True, append_images=imgs[1:], duration=100, loop=0)
    return Path(path)


def png16(path, w=40, h=30) -> Path:
    arr = (pattern(w, h)[..., 0].astype(np.uint16) * 257)
    return save(path, Image.fromarray(arr), "PNG")


def two_class_tree(root, n_per_class: int = 16, size: int = 40, classes=("cat", "dog")) -> Path:
    """A small learnable data set: each class has its own dominant colour, plus noise."""
    root = Path(root)
    tints = [(200, 60, 60), (60, 60, 200), (60, 200, 60), (200, 200, 60), (60, 200, 200),
             (200, 60, 200)]
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            arr = pattern(size, size, seed=1000 * c + i).astype(np.int16) // 3
            arr = np.clip(arr + np.array(tints[c], dtype=np.int16), 0, 255).astype(np.uint8)
            save(root / name / f"{name}.{i}.jpg", arr, "JPEG", quality=92)
    return root


def train_tiny(data, run, *extra: str) -> Path:
    """Train the tiny test network on `data` into `run` through the CLI; returns run."""
    from imgcls.cli import main

    assert main(["train", str(data), "--out", str(run), "--preset", "tutorial", "--model", "xception-tiny",
                 "--image-size", "32", "--batch-size", "8", *extra]) == 0
    return Path(run)


def error_lines(stderr: str) -> list[str]:
    """The `imgcls: error:` lines of a command's stderr, checked to carry no traceback.

    Tests count these, not all of stderr's lines: a library's warning (a deprecation, a
    oneDNN note on some CPU) may add lines that say nothing about our behaviour.
    """
    assert "Traceback" not in stderr, stderr[-2000:]
    return [line for line in stderr.splitlines() if line.startswith("imgcls: error:")]


# Two runs in float64 (--amp fp64) that sum the same gradients in another order differ by
# float64 rounding: a few ulps (1e-16) per operation, grown over a few steps to well under
# 1e-12 of each weight's move. 1e-8 of the move is 10,000 times that margin on any CPU's
# kernels, and a wrong update (half a step, one pass's gradient missing) is off by ~0.5.
FLOAT64_REL = 1e-8


def close_after_training(a: dict, b: dict, init: dict, rel: float = FLOAT64_REL) -> list[str]:
    """Names of float tensors where runs a and b differ by more than `rel` of how far
    training moved them from `init` (plus float64 rounding of the values themselves).

    For two float64 runs of the same update summed in a different order (micro-batches,
    DDP's sum of half-batch means, 1 vs 2 threads); a wrong update differs by its own size.
    """
    bad = []
    for k, va in a.items():
        if not va.is_floating_point():
            continue
        moved = (va.double() - init[k].double()).abs().max().item()
        tol = rel * moved + 1e-13 * max(1.0, va.abs().max().item())
        diff = (va.double() - b[k].double()).abs().max().item()
        if diff > tol:
            bad.append(f"{k}: |a-b| {diff:.2e} > {tol:.2e} (moved {moved:.2e})")
    return bad
