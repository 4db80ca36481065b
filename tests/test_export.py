"""export: ONNX agrees with PyTorch, carries its metadata, and predict works through it
without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import images  # noqa: E402

from imgcls.cli import main  # noqa: E402
from imgcls.infer.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    data = images.two_class_tree(base / "data", 12, 40)
    run = images.train_tiny(data, base / "run", "--epochs", "2", "--lr", "3e-3")
    out = base / "model.onnx"
    assert main(["export", str(run), "-o", str(out)]) == 0
    return data, run, out


def test_export_reports_parity_on_real_images(trained, capsys, tmp_path):
    data, run, _ = trained
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "-o", str(out), "--check-images", str(data / "dog")]) == 0
    text = capsys.readouterr().out
    assert "real images" in text
    diff = float(text.split("max |diff| ")[1].split()[0])
    assert diff <= 1e-4


def test_export_into_a_folder_writes_the_runs_name_inside_it(trained, tmp_path, capsys):
    """`-o DIR/` (old main: an error) writes DIR/RUN.onnx; the TTA answers of both
    engines were checked before it was written."""
    _, run, _ = trained
    folder = tmp_path / "models"
    folder.mkdir()
    assert main(["export", str(run), "-o", str(folder) + "/"]) == 0
    assert (folder / f"{run.name}.onnx").is_file()
    assert main(["export", str(run / "best.safetensors"), "-o", str(folder)]) == 0
    assert (folder / "best.onnx").is_file()
    a = Predictor.from_checkpoint(run, amp="off").predict([str(run.parent / "data" / "cat" / "cat.0.jpg")], tta=True)
    b = Predictor.from_checkpoint(folder / "best.onnx").predict([str(run.parent / "data" / "cat" / "cat.0.jpg")], tta=True)
    assert abs(a[0].probabilities["cat"] - b[0].probabilities["cat"]) < 1e-4


def test_onnx_metadata_and_dynamic_batch(trained):
    _, run, out = trained
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["imgcls"])
    assert meta["class_names"] == ["cat", "dog"] and meta["preprocess"]["height"] == 32
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    for b in (1, 5):
        logits, probs = sess.run(None, {"image": np.zeros((b, 32, 32, 3), np.uint8)})
        assert logits.shape == (b, 2) and np.allclose(probs.sum(1), 1, atol=1e-6)


def test_predict_through_onnx_equals_predict_through_checkpoint(trained, capsys):
    data, run, out = trained
    files = [str(p) for p in sorted((data / "cat").iterdir())] + [str(data / "dog" / "dog.0.jpg")]
    # The ONNX file runs in float32: compare with PyTorch in float32 (bf16: test_runtime).
    a = Predictor.from_checkpoint(run, amp="off").predict(files)
    b = Predictor.from_checkpoint(out).predict(files)
    for x, y in zip(a, b):
        assert x.class_name == y.class_name
        for c in x.probabilities:
            assert abs(x.probabilities[c] - y.probabilities[c]) <= 1e-4
    ta = Predictor.from_checkpoint(run, amp="off").predict(files[:3], tta=True)
    tb = Predictor.from_checkpoint(out).predict(files[:3], tta=True)
    assert all(abs(x.probabilities["cat"] - y.probabilities["cat"]) <= 1e-4 for x, y in zip(ta, tb))
    assert main(["predict", str(out), files[0]]) == 0
    assert capsys.readouterr().out.startswith("This image is ")


def test_onnx_prediction_never_imports_torch(trained):
    data, _, out = trained
    code = ("import sys; from imgcls.cli import main; "
            f"rc = main(['predict', {str(out)!r}, {str(data / 'cat' / 'cat.1.jpg')!r}]); "
            "sys.exit(3 if 'torch' in sys.modules else rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("This image is ")


def test_export_refuses_a_damaged_checkpoint(trained, tmp_path, capsys):
    _, run, _ = trained
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((run / "best.safetensors").read_bytes()[:-50])
    assert main(["export", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
