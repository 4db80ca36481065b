"""Figures as PNG files: image grids now; training curves, confusion matrix, top losses later.

Owns how things look. Uses matplotlib's object API (Figure + Agg canvas), never pyplot, so
no global figure state and no display is needed; files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
from typing import Sequence

import numpy as np

from imgcls.fsutil import atomic_write_bytes


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], path: str | os.PathLike,
               ncols: int = 3, title: str | None = None) -> None:
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
    _save(fig, path)
