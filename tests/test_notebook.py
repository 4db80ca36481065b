"""examples/quickstart.ipynb runs top to bottom (executed with nbclient), so it cannot rot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_notebook_runs(tmp_path, catsdogs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    # The real photos, a sample of them: decoding all 4,000 and a minute of training would
    # test nothing more than 60 and 15 seconds do.
    sample = tmp_path / "catsdogs"
    for split, n in (("train", 40), ("val", 20)):
        for folder in sorted((catsdogs / split).iterdir()):
            (sample / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:n]:
                shutil.copy(photo, sample / split / folder.name / photo.name)
    monkeypatch.setenv("IMGCLS_EXAMPLE_DATA", str(sample))
    monkeypatch.setenv("IMGCLS_EXAMPLE_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("IMGCLS_EXAMPLE_MINUTES", "0.25")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "This image is" in text and "accuracy" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the photos, the curves, the confusion matrix
    assert (tmp_path / "runs" / "notebook" / "best.safetensors").exists()
