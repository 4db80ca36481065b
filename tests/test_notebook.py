"""examples/quickstart.ipynb runs top to bottom (executed with nbclient), so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_notebook_runs(tmp_path, catsdogs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    monkeypatch.setenv("IMGCLS_EXAMPLE_DATA", str(catsdogs))
    monkeypatch.setenv("IMGCLS_EXAMPLE_OUT", str(tmp_path / "runs"))
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
