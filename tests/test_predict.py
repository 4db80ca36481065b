"""predict/evaluate/plot: real predictions from a model trained here, exact sentence, JSON and
CSV, broken files reported while the rest are predicted, evaluate agrees with predict by hand,
and the figures are real pictures."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys

import images
import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.cli import main
from imgcls.infer.predictor import Predictor

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
    # The same photos as PNG files: new bytes, so none counts as one the run trained on
    fresh = tmp_path / "fresh"
    for p in sorted(data.rglob("*.jpg")):
        images.save(fresh / p.parent.name / (p.stem + ".png"), Image.open(p), "PNG")
    data = fresh
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
    from imgcls.checkpoint import load_checkpoint
    from imgcls.data.cache import build_cache
    from imgcls.data.preprocess import PreprocessSpec
    from imgcls.data.scan import scan
    from imgcls.models import ModelConfig, create_model

    data, run = trained
    ckpt = load_checkpoint(run / "best.safetensors")
    model = create_model(ModelConfig.from_dict(ckpt.meta["model"]))
    model.load_state_dict(ckpt.weights)
    model.eval()
    index = scan(data)
    cache = build_cache(index, PreprocessSpec.from_dict(ckpt.meta["preprocess"]))
    x = torch.from_numpy(np.array(np.load(cache.images_path, mmap_mode="r")[:10])).permute(0, 3, 1, 2).double()
    with torch.no_grad():
        want = model.double()(x).softmax(1).numpy()
    # float64 both: predict runs the model channels_last, whose kernels sum in another order
    predictor = Predictor.from_checkpoint(run, amp="fp64")
    got = predictor.predict([index.abspath(s) for s in index.samples[:10]])
    # Same model, same pixels: agreement to rounding; one grey level off moves it by far more.
    assert np.allclose([[p.probabilities[c] for c in ("cat", "dog")] for p in got], want,
                       rtol=0, atol=1e-10)


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
    code = ("import sys; from imgcls.infer.predictor import Predictor; "
            f"p = Predictor.from_checkpoint({str(run)!r}); "
            f"p.predict([{str(data / 'cat' / 'cat.1.jpg')!r}]); "
            "bad = [m for m in ('imgcls.train', 'imgcls.data.cache', 'imgcls.data.loader', 'imgcls.data.augment') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_roc_auc_by_counting_pairs():
    from imgcls.infer.evaluate import roc_auc

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 6, 60) / 5  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.zeros(4, int), scores[:4]) is None


# ----------------------------------------------------------------------------- one answer

def _photos(folder):
    """A JPEG larger than the model's input, a 16-bit grey PNG, an RGBA PNG with real
    transparency, a palette PNG and an Exif-rotated JPEG: each one file on disk."""
    rng = np.random.default_rng(5)
    out = {"jpeg": images.jpeg(folder / "big.jpg", 150, 120, seed=3),
           "png16": images.png16(folder / "deep.png", 60, 44),
           "exif": images.exif_jpeg(folder / "turned.jpg", orientation=6, w=70, h=50)}
    rgba = images.pattern(50, 40, 4)
    alpha = (rng.random((40, 50)) * 255).astype(np.uint8)
    out["rgba"] = images.save(folder / "clear.png", np.dstack([rgba, alpha]), "PNG")
    out["palette"] = images.save(folder / "pal.png",
                                 Image.fromarray(images.pattern(40, 40, 6)).convert("P"), "PNG")
    return out


def _kinds(path):
    """The same photo as every input kind the API takes."""
    data = path.read_bytes()
    lazy = Image.open(path)
    loaded = Image.open(path)
    loaded.load()
    kinds = {"path": path, "str": str(path), "bytes": data, "file": io.BytesIO(data),
             "lazy PIL": lazy, "loaded PIL": loaded}
    # An array carries no Exif orientation, and a palette image's array holds palette
    # indices, not colours: those two reach the API as PIL images or files only.
    if "turned" not in path.name and loaded.mode != "P":
        arr = np.asarray(loaded)
        kinds["array"] = arr
        kinds["tensor"] = torch.from_numpy(arr.copy()).permute(2, 0, 1) if arr.ndim == 3 \
            else torch.from_numpy(arr.astype(np.int32))
        if arr.dtype == np.uint8 and arr.ndim == 3:
            kinds["float array 0..1"] = arr / 255.0
    return kinds


def test_every_input_kind_reaches_the_network_as_the_same_pixels(trained, tmp_path):
    """A photo as a path, bytes, a file object, a lazy or loaded PIL image, a uint8 / 16-bit
    / float array or a tensor: the same pixels (old main: a 16-bit array clipped, an RGBA
    array's alpha dropped, a loaded JPEG decoded at another scale than the file)."""
    from imgcls.data.preprocess import load_image

    _, run = trained
    predictor = Predictor.from_checkpoint(run)
    for name, path in _photos(tmp_path).items():
        want = load_image(path, predictor.spec)
        for kind, source in _kinds(path).items():
            got = predictor.prepare(source)
            diff = np.abs(got.astype(int) - want).max()
            assert diff <= 1, (name, kind, diff)


def test_one_photo_gets_one_answer_from_every_entry_point(trained, tmp_path, capsys):
    """predict (CLI), the API with each input kind, POST /predict and the ONNX model agree
    to 1e-4 (float32: the ONNX model runs in float32; the bf16 default is compared apart)."""
    from fastapi.testclient import TestClient

    import imgcls
    from imgcls.infer.serve import create_app

    _, run = trained
    photos = _photos(tmp_path)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run), "-o", str(onnx_file)]) == 0
    capsys.readouterr()
    model = imgcls.load(run, amp="off")
    onnx_model = imgcls.load(onnx_file)
    default = imgcls.load(run)  # bf16 where the CPU has it: every kind still agrees
    for name, path in photos.items():
        assert main(["predict", str(run), str(path), "--json", "--amp", "off"]) == 0
        want = np.array(list(json.loads(capsys.readouterr().out)[0]["probabilities"].values()))
        kinds = _kinds(path)
        for kind, source in kinds.items():
            got = model.probabilities(source)[0]
            assert np.abs(got - want).max() <= 1e-4, (name, kind, got, want)
        assert np.abs(onnx_model.probabilities(path)[0] - want).max() <= 1e-4, name
        ref = default.probabilities(path)[0]
        for kind, source in _kinds(path).items():
            assert np.abs(default.probabilities(source)[0] - ref).max() <= 1e-4, (name, kind)
    client = TestClient(create_app(run, device="cpu"))
    for name, path in photos.items():
        r = client.post("/predict", files=[("file", (path.name, path.read_bytes()))])
        served = np.array(list(r.json()["predictions"][0]["probabilities"].values()))
        assert np.abs(served - default.probabilities(path)[0]).max() <= 1e-4, name


def test_the_callers_image_and_array_are_never_changed(trained, tmp_path):
    import imgcls

    _, run = trained
    model = imgcls.load(run)
    path = images.jpeg(tmp_path / "big.jpg", 300, 240, seed=2)
    im = Image.open(path)
    gif = Image.open(images.animated_gif(tmp_path / "a.gif"))
    gif.seek(2)
    arr = np.asarray(Image.open(path)).copy()
    before = arr.copy()
    model.predict([im, gif, arr])
    assert im.size == (300, 240) and im.mode == "RGB"  # old main: left 38x35 by the draft
    assert gif.tell() == 2  # still on the frame the caller chose
    assert np.array_equal(arr, before)


def test_inputs_that_are_not_images_are_refused_by_name(trained):
    import imgcls

    _, run = trained
    model = imgcls.load(run)
    bad = {"NaN": np.full((20, 20, 3), np.nan), "inf": np.full((20, 20, 3), np.inf, np.float32),
           "empty array": np.zeros((0, 0, 3), np.uint8), "empty bytes": b"",
           "5 channels": np.zeros((8, 8, 5), np.uint8)}
    preds = model.predict(list(bad.values()))
    for (what, _), p in zip(bad.items(), preds):
        assert p.error and p.class_name is None, what
    assert "NaN or infinite" in preds[0].error and "empty" in preds[2].error
    with pytest.raises(imgcls.UserError, match="NoneType is not an image"):
        model.predict(None)
    with pytest.raises(imgcls.UserError, match="int is not an image"):
        model.predict([3])
    for size in (0, -1, 2.5, True):
        with pytest.raises(imgcls.UserError, match="batch-size must be a whole number >= 1"):
            model.predict([np.zeros((8, 8, 3), np.uint8)], batch_size=size)


def test_float_arrays_are_read_by_one_rule_or_refused(trained, tmp_path):
    """Old main answered 90% for an ImageNet-normalised array and read a 0..1 photo with one
    value at 1.01 as a nearly black 0..255 image; a (3, H, W) tensor the same."""
    import imgcls

    _, run = trained
    model = imgcls.load(run, amp="off")
    photo = images.pattern(40, 36, 3)
    unit = photo / 255.0
    want = model.probabilities(photo)[0]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalised = (unit - mean) / std
    stray = unit.copy()
    stray[0, 0, 0] = 1.01
    refused = {"ImageNet-normalised": normalised, "stray value above 1": stray,
               "above 255": unit * 300, "tensor normalised": torch.from_numpy(
                   normalised.transpose(2, 0, 1).copy())}
    preds = model.predict(list(refused.values()))
    for (what, _), p in zip(refused.items(), preds):
        assert p.error and p.class_name is None, what
        assert "0..1 (or 0..255)" in p.error, (what, p.error)
    assert "negative" in preds[0].error
    # Rounding noise past either end of 0..1 reads as 0..1; a 0..255 float photo as 0..255.
    noisy = unit.astype(np.float32) * (1 + 1e-6) - 1e-7
    for ok in (noisy, photo.astype(np.float64), torch.from_numpy(unit.transpose(2, 0, 1).copy())):
        assert np.abs(model.probabilities(ok)[0] - want).max() <= 1e-4


def test_an_empty_file_is_called_what_scan_calls_it(trained, tmp_path, capsys):
    from imgcls.data.scan import ScanOptions, scan

    _, run = trained
    empty = tmp_path / "d" / "cat" / "zero.jpg"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    images.jpeg(tmp_path / "d" / "cat" / "ok.jpg")
    images.jpeg(tmp_path / "d" / "dog" / "ok.jpg", seed=1)
    said = scan(tmp_path / "d", ScanOptions(min_classes=1)).rejected[0].reason
    capsys.readouterr()
    assert main(["predict", str(run), str(empty)]) == 1
    assert f"zero.jpg: {said}" in capsys.readouterr().err and said == "empty file (0 bytes)"


def test_predict_batch_size_below_one_is_one_line(trained, capsys):
    data, run = trained
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "cat" / "cat.0.jpg"), "--batch-size", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("imgcls: error:") == 1 and "--batch-size" in err


def test_predict_folder_takes_what_scan_takes_and_never_waits_on_a_fifo(trained, tmp_path):
    import subprocess

    _, run = trained
    folder = tmp_path / "f"
    images.jpeg(folder / "a.jpg", seed=1)
    images.jpeg(folder / "no_extension", seed=2)  # a photo without an extension: scan takes it
    (folder / "notes.txt").write_text("not a photo")
    os.mkfifo(folder / "pipe.jpg")
    res = subprocess.run([sys.executable, "-m", "imgcls", "predict", str(run), str(folder),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    paths = sorted(os.path.basename(p["path"]) for p in json.loads(res.stdout))
    assert paths == ["a.jpg", "no_extension"]
    res = subprocess.run([sys.executable, "-m", "imgcls", "predict", str(run),
                          str(folder / "pipe.jpg")], capture_output=True, text=True, timeout=120)
    errs = images.error_lines(res.stderr)
    assert res.returncode == 1 and len(errs) == 1 and "not a regular file" in errs[0]


def test_a_checkpoint_from_a_newer_preprocessing_is_refused_in_one_line(trained, tmp_path):
    from imgcls.checkpoint import load_checkpoint, save_checkpoint
    from imgcls.data.preprocess import PREPROCESS_VERSION
    from imgcls.errors import UserError

    _, run = trained
    ckpt = load_checkpoint(run / "best.safetensors", train_state=False)
    ckpt.meta["preprocess"]["version"] = PREPROCESS_VERSION + 1
    save_checkpoint(tmp_path / "new.safetensors", ckpt)
    with pytest.raises(UserError, match="newer than this imgcls knows"):
        Predictor.from_checkpoint(tmp_path / "new.safetensors")


def test_evaluate_finds_the_run_of_an_epoch_file_a_copy_or_an_export(trained, tmp_path, capsys):
    """Old main looked for the run only in the model file's own folder: an epoch file, a
    copy of best elsewhere and an exported .onnx scored the training photos as new ones."""
    import shutil

    data, run = trained
    copy = tmp_path / "elsewhere" / "model.safetensors"
    copy.parent.mkdir()
    shutil.copy(run / "best.safetensors", copy)
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(run), "-o", str(onnx_file)]) == 0
    capsys.readouterr()
    for model in (run / "checkpoints" / "epoch_001.safetensors", copy, onnx_file):
        assert main(["evaluate", str(model), str(data), "--json", "--no-figures"]) == 0
        report = json.loads(capsys.readouterr().out)
        # 40 photos: the run's 32 training photos scored apart, its 8 validation photos scored
        assert report["images"] == 8 and report["in_training"] == 32, (model, report)
    # The epoch file alone: the run's own validation split, and the figures in the run folder.
    out = tmp_path / "figs"
    assert main(["evaluate", str(run / "checkpoints" / "epoch_001.safetensors")]) == 0
    said = capsys.readouterr().out
    assert "Evaluated 8 images" in said and f"Wrote {run}/confusion_matrix.png" in said
    assert not (run / "checkpoints" / "confusion_matrix.png").exists() and not out.exists()


def test_a_model_whose_run_is_gone_says_its_scores_may_count_training_photos(trained, tmp_path,
                                                                             capsys):
    """A checkpoint outside its run folder whose recorded run no longer exists: the folder's
    photos are all scored, with one line saying some may be training photos."""
    from imgcls.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    data, run = trained
    ckpt = load_checkpoint(run / "best.safetensors", train_state=False)
    ckpt.meta["run"] = str(tmp_path / "deleted-run")
    copy = tmp_path / "model.safetensors"
    save_checkpoint(copy, Checkpoint(ckpt.weights, ckpt.meta))
    capsys.readouterr()
    assert main(["evaluate", str(copy), str(data), "--json", "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 40
    assert "the run that trained this model was not found" in captured.err
    assert "may count them" in captured.err
    assert main(["evaluate", str(copy)]) == 2
    assert "give a DATA_DIR" in capsys.readouterr().err
