"""The small class-per-folder tree whose Keras split is committed in tests/data/keras_split.json.

Names are chosen to exercise Keras's listing order: numbers that sort as text, upper case
before lower case, nested folders whose names share a prefix ('sub', 'sub-x', 'sub/deep').
Regenerate the expected file with tests/data/make_keras_split.py (needs TensorFlow/Keras,
in a throw-away environment; Keras is not a dependency of imgcls).
"""

from __future__ import annotations

from pathlib import Path

LAYOUT = {
    "cats": [f"cat.{i}.jpg" for i in (1, 2, 10, 11, 100, 3, 20)]
    + ["Zed.png", "a b.jpg", "sub/x1.jpg", "sub/x0.jpg", "sub-x/y.jpeg", "sub/deep/z.bmp",
       "sub/deep/a.jpg", "sub0/q.gif"],
    "dogs": [f"dog.{i}.jpg" for i in range(1, 18)] + ["Upper.JPG", "nested/n1.png"],
    "horses": [f"h{i:02d}.png" for i in range(9)] + ["deeper/more/h.jpg"],
}
CASES = [(0.2, 1337), (0.3, 42), (0.25, 7)]


def write_tree(root: Path, make_image) -> Path:
    """Create LAYOUT under root; make_image(path, i) writes a distinct valid image."""
    i = 0
    for cls, names in LAYOUT.items():
        for name in names:
            p = root / cls / name
            p.parent.mkdir(parents=True, exist_ok=True)
            make_image(p, i)
            i += 1
    return root
