"""api: the whole job through the public Python API only (paths, PIL images and arrays in;
plain objects and matplotlib figures out; errors as exceptions with the CLI's message)."""

from __future__ import annotations

import json

import images
import numpy as np
import pytest
from PIL import Image

import imgcls


def test_the_job_through_the_api(tmp_path):
    data = images.two_class_tree(tmp_path / "data", 16, 40)
    index = imgcls.scan_folder(data)
    assert index.class_names == ["cat", "dog"] and len(index.samples) == 32
    run = imgcls.fit(data, out=tmp_path / "run", preset="tutorial", model="xception-tiny",
                       image_size=32, batch_size=8, lr=3e-3, epochs=3, seed=3)
    assert isinstance(run, imgcls.Run) and len(run.history) == 3 and run.best["val_accuracy"] >= 0.5
    run = imgcls.fit(resume=run.run_dir, epochs=4)
    assert len(run.history) == 4
    model = imgcls.load(run.run_dir)
    assert model.class_names == ["cat", "dog"]
    path = data / "cat" / "cat.0.jpg"
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    preds = model.predict([path, pil, arr, arr.astype(np.float32) / 255])
    assert len(preds) == 4 and all(p.error is None for p in preds)
    probs = model.probabilities([path, pil, arr])
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.allclose(probs[0], probs[1], atol=1e-6) and np.allclose(probs[1], probs[2], atol=1e-6)
    report = model.evaluate(data)
    trained_on = json.loads((run.run_dir / "data.json").read_text())["train_images"]
    assert report.in_training == trained_on and report.images == 32 - trained_on
    assert 0 <= report.accuracy <= 1 and report.training_accuracy is not None
    own = model.evaluate()  # the run's own validation files

    assert own.images == json.loads((run.run_dir / "data.json").read_text())["val_images"]
    fig = imgcls.confusion_figure(report)
    assert fig.axes and run.curves().axes
    out = model.export(tmp_path / "m.onnx")
    assert out.path.exists()
    onnx = imgcls.load(tmp_path / "m.onnx")
    assert np.allclose(onnx.probabilities([arr]), model.probabilities([arr]), atol=0.02)


def test_api_errors_are_exceptions_with_the_cli_message(tmp_path):
    with pytest.raises(imgcls.UserError, match="no such folder"):
        imgcls.scan_folder(tmp_path / "nowhere")
    with pytest.raises(imgcls.UserError, match="unknown setting"):
        imgcls.fit(tmp_path, out=tmp_path / "r", epoch=3)
    with pytest.raises(imgcls.UserError, match="no such checkpoint"):
        imgcls.load(tmp_path / "missing")
