"""predict/evaluate/plot: real predictions from a model trained here, exact sentence, JSON and
CSV, broken files reported while the rest are predicted, evaluate agrees with predict by hand,
and the figures are real pictures."""

from __future__ import annotations

import csv
import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import images
from imgcls.cli import main
from imgcls.predict import Predictor

SENTENCE = re.compile(r"^This image is (\d+\.\d\d)% cat and (\d+\.\d\d)% dog\.$")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("pred")
    data = images.two_class_tree(base / "data", 20, 40)
    run = images.train_tiny(data, base / "run", "--lr", "3e-3", "--epochs", "4", "--seed", "1")
    return data, run


def test_single_image_gives_the_tutorial_sentence(trained, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "cat" / "cat.0.jpg")]) == 0
    out = capsys.readouterr().out.strip()
    m = SENTENCE.match(out)
    assert m, out
    assert abs(float(m[1]) + float(m[2]) - 100) < 0.011


def test_json_and_csv_and_probabilities_sum_to_one(trained, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "cat"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc) == 20
    for d in doc:
        assert set(d) == {"path", "class", "probabilities"}
        assert set(d["probabilities"]) == {"cat", "dog"}
        assert abs(sum(d["probabilities"].values()) - 1) < 1e-6
        assert d["class"] == max(d["probabilities"], key=d["probabilities"].get)
    assert main(["predict", str(run), str(data / "dog" / "*.jpg"), "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "class", "cat", "dog"] and len(rows) == 21


def test_a_broken_file_is_reported_and_the_rest_predicted(trained, tmp_path, capsys):
    data, run = trained
    folder = tmp_path / "mixed"
    for i in range(3):
        images.jpeg(folder / f"{i}a.jpg", seed=i)
    (folder / "1b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (folder / "notes.txt").write_text("not an image, not even looked at")
    capsys.readouterr()
    assert main(["predict", str(run), str(folder)]) == 1
    captured = capsys.readouterr()
    errors = images.error_lines(captured.err)
    assert len(errors) == 1 and "1b_broken.jpg" in errors[0]
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3 and all(SENTENCE.match(l.split(": ", 1)[1]) for l in lines)
    assert main(["predict", str(run), str(tmp_path / "missing.jpg")]) == 2


def test_evaluate_agrees_with_predict_by_hand(trained, tmp_path, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["evaluate", str(run), str(data), "--json", "--out-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run), str(data), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    classes = ["cat", "dog"]
    cm = np.zeros((2, 2), int)
    for p in preds:
        true = 0 if "/cat/" in p["path"] else 1
        cm[true, classes.index(p["class"])] += 1
    assert report["confusion_matrix"] == cm.tolist()
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["images"] == 40 and report["class_names"] == classes
    loss = np.mean([-np.log(p["probabilities"]["cat" if "/cat/" in p["path"] else "dog"])
                    for p in preds])
    assert report["loss"] == pytest.approx(loss, rel=1e-6)
    assert 0 <= report["roc_auc"] <= 1 and set(report["per_class"]) == set(classes)
    for name in ("confusion_matrix.png", "top_losses.png", "curves.png"):
        img = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert img.shape[0] > 200 and img.shape[1] > 200
        assert img.reshape(-1, 3).std(0).max() > 10


def test_evaluate_defaults_to_the_runs_validation_split(trained, capsys):
    data, run = trained
    capsys.readouterr()
    # float32, as training validated (bf16 inference may flip a near tie: test_runtime)
    assert main(["evaluate", str(run), "--json", "--no-figures", "--amp", "off"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 8  # 20% of 40
    vals = [json.loads(l)["val_accuracy"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert report["accuracy"] == pytest.approx(max(vals))  # best.safetensors = best epoch


def test_prediction_equals_the_models_output_during_training(trained):
    """Same preprocessing: the checkpoint through predict = the model on the training cache."""
    from imgcls.cache import build_cache
    from imgcls.checkpoint import load_checkpoint
    from imgcls.models import ModelConfig, create_model
    from imgcls.preprocess import PreprocessSpec
    from imgcls.scan import scan

    data, run = trained
    ckpt = load_checkpoint(run / "best.safetensors")
    model = create_model(ModelConfig.from_dict(ckpt.meta["model"]))
    model.load_state_dict(ckpt.weights)
    model.eval()
    index = scan(data)
    cache = build_cache(index, PreprocessSpec.from_dict(ckpt.meta["preprocess"]))
    x = torch.from_numpy(np.array(cache.images()[:10])).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        want = model(x).softmax(1).numpy()
    predictor = Predictor.from_checkpoint(run, amp="off")  # float32, as `want` (bf16: test_runtime)
    got = predictor.predict([index.abspath(s) for s in index.samples[:10]])
    # Same model, same pixels; predict runs it channels_last, whose kernels round differently
    # on each CPU: agreement to 1e-5 in probability, far below what a preprocessing change gives.
    assert np.allclose([[p.probabilities[c] for c in ("cat", "dog")] for p in got], want,
                       rtol=0, atol=1e-5)


def test_tta_and_many_classes_top_k(tmp_path, capsys):
    data = images.two_class_tree(tmp_path / "d", 8, 40, classes=("a", "b", "c", "d"))
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--preset", "tutorial", "--model", "xception-tiny",
                 "--image-size", "32", "--batch-size", "8", "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "a" / "a.0.jpg"), "--top-k", "2", "--tta"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[abcd] \d+\.\d\d%, [abcd] \d+\.\d\d%", out), out


def test_plot_draws_curves_and_refuses_non_runs(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "c.png"
    assert main(["plot", str(run), "-o", str(out)]) == 0
    assert Image.open(out).size[0] > 300
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_predict_never_imports_training_code(trained):
    import subprocess

    data, run = trained
    code = ("import sys; from imgcls.predict import Predictor; "
            f"p = Predictor.from_checkpoint({str(run)!r}); "
            f"p.predict([{str(data / 'cat' / 'cat.1.jpg')!r}]); "
            "bad = [m for m in ('imgcls.train', 'imgcls.cache', 'imgcls.loader', 'imgcls.augment') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_roc_auc_by_counting_pairs():
    from imgcls.evaluate import roc_auc

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60) / 5  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.zeros(4, int), scores[:4]) is None
