"""Figures: image grids, training curves, confusion matrix, top losses.

Owns how things look. Each function returns its matplotlib Figure (a notebook shows it) and
writes it as a PNG when given a path (the CLI). Uses matplotlib's object API (Figure + Agg canvas), never pyplot, so
no global figure state and no display is needed; files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np

from imgcls.fsutil import atomic_write_bytes


def _save(fig, path: str | os.PathLike | None, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if path is None:
        return fig
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike | None = None,
               ncols: int = 3, title: str | None = None):
    """A grid of (H, W, 3) uint8 images, each with a title, like the Keras tutorial's figures."""
    from matplotlib.figure import Figure

    n = len(images)
    ncols = min(ncols, n) or 1
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.4 * nrows))
    for i, (img, t) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img)
        ax.set_title(t, fontsize=12)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """metrics.jsonl rows; a torn last line (a run being written) is skipped."""
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def curves_figure(metrics_file: str | os.PathLike, path: str | os.PathLike | None = None):
    """Loss and accuracy per epoch, training and validation, side by side."""
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_file)
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(11, 4.2))
    for i, (key, title) in enumerate((("loss", "Loss"), ("accuracy", "Accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(epochs, [r[key] for r in rows], "o-", label=f"training {key}")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "s-", label=f"validation {key}")
        if key == "accuracy" and rows:
            best = max(rows, key=lambda r: r["val_accuracy"])
            ax.annotate(f"best {best['val_accuracy']:.4f}", (best["epoch"], best["val_accuracy"]),
                        textcoords="offset points", xytext=(0, -18), ha="center")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(cm: list[list[int]], names: Sequence[str], path: str | os.PathLike | None = None):
    from matplotlib.figure import Figure

    m = np.asarray(cm)
    n = len(names)
    size = max(4.5, 0.7 * n + 2.5)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.add_subplot(1, 1, 1)
    rowsum = np.maximum(m.sum(1, keepdims=True), 1)
    im = ax.imshow(m / rowsum, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({int(m.sum())} images, accuracy {np.trace(m) / max(m.sum(), 1):.4f})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                frac = m[i, j] / rowsum[i, 0]
                ax.text(j, i, f"{m[i, j]}", ha="center", va="center",
                        color="white" if frac > 0.5 else "black", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def top_losses_figure(top: Sequence[dict], path: str | os.PathLike | None = None, root: str = ""):
    """The images the model got most wrong: predicted/true class, probability, loss."""
    from PIL import Image, ImageOps

    imgs, titles = [], []
    for t in top:
        try:
            with Image.open(os.path.join(root, t["path"])) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((256, 256))
                imgs.append(np.asarray(im))
        except Exception:
            imgs.append(np.full((64, 64, 3), 127, np.uint8))
        titles.append(f"{t['predicted']}/{t['true']} {t['p_predicted']:.2f}\nloss {t['loss']:.2f}")
    if not imgs:
        imgs, titles = [np.full((64, 64, 3), 255, np.uint8)], ["no images"]
    return image_grid(imgs, titles, path, title="Top losses: predicted/true, probability of prediction")
