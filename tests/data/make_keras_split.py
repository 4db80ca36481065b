"""Regenerate keras_split.json with real Keras (run in a throw-away venv with tensorflow-cpu).

    python tests/data/make_keras_split.py tests/data/keras_split.json
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from keras_fixture import CASES, write_tree  # noqa: E402

import keras  # noqa: E402
from PIL import Image  # noqa: E402


def make_image(path, i):
    fmt = {".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}.get(path.suffix.lower(), "JPEG")
    Image.new("RGB", (8, 8), (i * 7 % 256, i * 13 % 256, i * 29 % 256)).save(path, fmt)


with tempfile.TemporaryDirectory() as tmp:
    root = write_tree(Path(tmp) / "data", make_image)
    out = {"keras_version": keras.__version__, "cases": []}
    for frac, seed in CASES:
        tr, va = keras.utils.image_dataset_from_directory(
            root, validation_split=frac, subset="both", seed=seed, image_size=(8, 8))
        rel = lambda ps: [os.path.relpath(p, root).replace(os.sep, "/") for p in ps]
        out["cases"].append({"val_split": frac, "seed": seed,
                             "train": rel(tr.file_paths), "val": rel(va.file_paths)})
Path(sys.argv[1]).write_text(json.dumps(out, indent=1) + "\n")
