"""train/source: `train --init` from an imgcls run or a torchvision-layout weights file: what
loads (by name and shape), the head replaced for new classes, refusals in one line, the
record kept through --resume, and the source's input normalisation in every entry point."""

from __future__ import annotations

import json
import pickle

import images
import numpy as np
import pytest
import torch
from clirun import run as cli

from imgcls.checkpoint import epoch_path, load_checkpoint
from imgcls.models import ModelConfig, create_model
from imgcls.train.source import load_into, read_source

TINY = ["--image-size", "32", "--batch-size", "8", "--threads", "2", "--seed", "3",
        "--epoch-images", "64"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """An imgcls run on two classes: the source for runs on other classes."""
    base = tmp_path_factory.mktemp("source")
    data = images.two_class_tree(base / "data", 16, 40)
    return images.train_tiny(data, base / "run", "--epochs", "2", "--seed", "1")


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    return images.two_class_tree(tmp_path_factory.mktemp("three") / "d", 12, 40,
                                 classes=("red", "blue", "green"))


def test_a_run_on_other_classes_keeps_the_backbone_and_replaces_the_head(source_run, three,
                                                                          tmp_path):
    src = load_checkpoint(source_run / "best.safetensors").weights
    run = tmp_path / "run"
    res = cli("train", three, "--init", source_run, "--out", run, "--epochs", "2",
              "--preset", "finetune", "--freeze-epochs", "1", *TINY)
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stdout.splitlines() if l.startswith("Starting from"))
    assert "the head (fc.weight, fc.bias) starts afresh: its classes differ" in line
    # After the frozen first epoch every backbone weight is the source's, exactly: the
    # backbone's rate was 0 (BatchNorm's running statistics do follow the new photos).
    first = load_checkpoint(epoch_path(run, 1)).weights
    learned = [k for k in first if not k.startswith("fc.") and "running" not in k
               and "num_batches" not in k]
    assert learned and all(torch.equal(first[k], src[k]) for k in learned)
    assert first["fc.weight"].shape[0] == 3 and src["fc.weight"].shape[0] != 3
    # Then everything learns.
    last = load_checkpoint(run / "last.safetensors")
    assert any(not torch.equal(last.weights[k], src[k]) for k in learned)
    assert last.meta["init"]["sha256"] == \
        __import__("hashlib").sha256((source_run / "best.safetensors").read_bytes()).hexdigest()
    assert last.meta["model"]["name"] == "xception-tiny"  # the source's network


def test_the_same_classes_keep_the_head_too(source_run):
    src = read_source(source_run)
    model = create_model(ModelConfig(src.model, 2, src.model_options))
    record, line = load_into(model, src, src.class_names)
    own = model.state_dict()
    assert record["loaded"] == len(own) and "starts afresh" not in line
    assert all(torch.equal(own[k], src.tensors[k]) for k in own)
    # The same number of classes under other names is another head.
    model = create_model(ModelConfig(src.model, 2, src.model_options))
    _, line = load_into(model, src, ["ant", "bee"])
    assert "the head (fc.weight, fc.bias) starts afresh" in line


def test_resnet_layouts_are_torchvisions():
    """Parameter counts and names as torchvision's resnet18/50 (1000 classes)."""
    r18 = create_model(ModelConfig("resnet18", 1000)).state_dict()
    r50 = create_model(ModelConfig("resnet50", 1000)).state_dict()
    assert sum(v.numel() for k, v in r18.items() if "running" not in k and "num_b" not in k) \
        == 11_689_512
    assert sum(v.numel() for k, v in r50.items() if "running" not in k and "num_b" not in k) \
        == 25_557_032
    assert len(r18) == 122 and len(r50) == 320
    assert r18["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert r50["fc.weight"].shape == (1000, 2048) and "bn1.num_batches_tracked" in r50


def torchvision_file(path, depth=18, change=None):
    """A torchvision-layout ResNet state dict (1000 classes, random weights), as torch.save
    writes one; `change` replaces one tensor by another shape."""
    sd = create_model(ModelConfig(f"resnet{depth}", 1000)).state_dict()
    if change:
        sd[change] = torch.zeros(sd[change].shape[0], 1, 1, 1)
    torch.save(sd, path)
    return sd


def test_a_torchvision_resnet18_file_loads_every_backbone_tensor(tmp_path, three):
    sd = torchvision_file(tmp_path / "resnet18.pth")
    src = read_source(tmp_path / "resnet18.pth")
    assert (src.model, src.image_size) == ("resnet18", 224)
    model = create_model(ModelConfig("resnet18", 3))
    record, line = load_into(model, src, ["red", "blue", "green"])
    own = model.state_dict()
    assert record["loaded"] == len(own) - 2  # all but the 1000-class head
    assert all(torch.equal(own[k], sd[k]) for k in own if not k.startswith("fc."))
    assert "not in the source" not in line and "other shapes" not in line
    # A wrong-shape tensor is named, the rest still loads.
    torchvision_file(tmp_path / "bad.pth", change="layer1.0.conv1.weight")
    _, line = load_into(create_model(ModelConfig("resnet18", 3)), read_source(tmp_path / "bad.pth"),
                        ["red", "blue", "green"])
    assert "other shapes: layer1.0.conv1.weight (64, 1, 1, 1) there, (64, 64, 3, 3) here" in line
    # timm-style wrapping ({"state_dict": {"module.conv1.weight": ...}}) reads the same.
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
               tmp_path / "timm.pth")
    assert set(read_source(tmp_path / "timm.pth").tensors) == set(sd)


def test_unrelated_or_unsafe_sources_are_refused_in_one_line(tmp_path, three):
    torch.save({"encoder.weight": torch.zeros(4, 4)}, tmp_path / "other.pth")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 64)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv1.weight": Evil()}))
    for name, words in (("other.pth", "shares almost nothing"), ("notes.txt", "not a model file"),
                        ("garbage.pth", "not a weights file PyTorch can read safely"),
                        ("evil.pth", "not a weights file PyTorch can read safely"),
                        ("missing.pth", "no such checkpoint")):
        res = cli("train", three, "--init", tmp_path / name, "--out", tmp_path / f"r-{name}",
                  *TINY)
        assert res.returncode == 2, (name, res.stderr)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in res.stderr, (name, err)
        assert "unpickled!" not in res.stdout + res.stderr
        assert not (tmp_path / f"r-{name}").exists()
    res = cli("train", three, "--preset", "finetune", "--out", tmp_path / "r", *TINY)
    assert res.returncode == 2 and "give --init SOURCE" in res.stderr


def test_a_damaged_source_is_refused_before_it_trains(tmp_path, three):
    """NaN in a weight trained to NaN and was blamed on the learning rate; an infinite
    BatchNorm variance trained without error into a model answering one class."""
    for name, key, value in (("nan.pth", "layer1.0.conv1.weight", float("nan")),
                             ("inf.pth", "bn1.running_var", float("inf")),
                             ("neg.pth", "layer2.0.bn1.running_var", -1.0)):
        sd = create_model(ModelConfig("resnet18", 1000)).state_dict()
        sd[key].view(-1)[0] = value
        torch.save(sd, tmp_path / name)
        res = cli("train", three, "--init", tmp_path / name, "--out", tmp_path / f"r-{name}",
                  *TINY)
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1, (name, res.stderr)
        assert f"({key})" in err[0] and "damaged or diverged model" in err[0]
        assert not (tmp_path / f"r-{name}").exists()


def test_bad_imagenet_starts_are_one_line_each_and_write_nothing(tmp_path, three):
    """Issue 34's bad input: another layout, a truncated file, NaN weights, a name that is not
    one of the three, an image size below the network's minimum."""
    lite = create_model(ModelConfig("efficientnet-lite0", 1000)).state_dict()
    se = dict(lite, **{"_blocks.1._se_reduce.weight": torch.zeros(4, 96, 1, 1)})
    torch.save(se, tmp_path / "b0.pth")  # EfficientNet-B0's squeeze-and-excitation
    short = {k: v for k, v in lite.items() if not k.startswith("_blocks.15.")}
    torch.save(short, tmp_path / "short.pth")
    torch.save(lite, tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
    nan = dict(lite)
    nan["_blocks.3._depthwise_conv.weight"] = torch.full_like(
        lite["_blocks.3._depthwise_conv.weight"], float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    cases = ((["--init", tmp_path / "b0.pth"], "not EfficientNet-Lite0, -Lite1 or -Lite2"),
             (["--init", tmp_path / "short.pth"], "not EfficientNet-Lite0, -Lite1 or -Lite2"),
             (["--init", tmp_path / "cut.pth"], "not a weights file PyTorch can read safely"),
             (["--init", tmp_path / "nan.pth"], "damaged or diverged model"),
             (["--init", "efficientnet-lite3"], "not a published set of weights "
                                                "(efficientnet-lite0, efficientnet-lite1"),
             (["--init", "efficientnet-lite0", "--image-size", "16"], "image size 16 px is "
                                                                      "too small"))
    for i, (argv, words) in enumerate(cases):
        out = tmp_path / f"r{i}"
        res = cli("train", three, *argv, "--out", out, "--epochs", "1", "--threads", "2")
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1, (argv, res.stderr)
        assert words in err[0] and "Traceback" not in res.stderr, (argv, err)
        assert not out.exists(), argv


def test_a_lite_file_in_the_packages_layout_starts_a_run_whole(tmp_path, three):
    """`--init FILE` recognises EfficientNet-PyTorch's Lite layout: every tensor but the
    1000-class head loads, and the run records the weights' input size and scaling."""
    rec = __import__("imgcls.models.pretrained", fromlist=["PRETRAINED"]).PRETRAINED
    lite = create_model(ModelConfig("efficientnet-lite0", 1000)).state_dict()
    torch.save(lite, tmp_path / "lite0.pth")
    src = read_source(tmp_path / "lite0.pth")
    assert src.model == "efficientnet-lite0" and src.image_size == 224 and src.classes == 1000
    assert src.weights == rec["efficientnet-lite0"]
    model = create_model(ModelConfig("efficientnet-lite0", 3))
    record, line = load_into(model, src, ["a", "b", "c"])
    assert record["loaded"] == len(lite) - 2 and "_fc.weight, _fc.bias" in line
    assert list(record["weights"]["mean"]) == list(rec["efficientnet-lite0"].mean)
    own = model.state_dict()
    assert all(torch.equal(own[k], lite[k]) for k in lite if not k.startswith("_fc."))


def test_resume_keeps_the_source(source_run, three, tmp_path):
    run = tmp_path / "run"
    res = cli("train", three, "--init", source_run, "--out", run, "--epochs", "2",
              "--freeze-epochs", "1", *TINY)
    assert res.returncode == 0, res.stderr
    # A two-class source's features are narrow: `--preset auto` trains with the recipe from
    # scratch (cpu or tutorial by the device), starting from its weights.
    recipe = next(l for l in res.stdout.splitlines() if l.startswith("Recipe:"))
    assert "finetune preset" not in recipe and "a model of 2 classes" in recipe
    assert "xception-tiny at 32 px as the source" in recipe
    first = load_checkpoint(run / "last.safetensors").meta["init"]
    res = cli("train", "--resume", run, "--epochs", "3")
    assert res.returncode == 0, res.stderr
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["init"] == first
    assert json.loads((run / "config.json").read_text())["init"] == str(source_run)


def test_predict_and_export_use_the_sources_normalisation(tmp_path, three):
    pytest.importorskip("onnxruntime")
    from imgcls.infer.predictor import Predictor
    from imgcls.models.layers import IMAGENET
    IMAGENET_MEAN, IMAGENET_STD = IMAGENET

    torchvision_file(tmp_path / "r18.pth")
    run = tmp_path / "run"
    res = cli("train", three, "--init", tmp_path / "r18.pth", "--out", run, "--epochs", "2",
              "--freeze-epochs", "1", "--amp", "off", *TINY)
    assert res.returncode == 0, res.stderr
    assert "Recipe: the finetune preset" in res.stdout  # ImageNet's 1,000 classes: broad
    ckpt = load_checkpoint(run / "best.safetensors")
    photos = sorted(three.glob("*/*"))[:6]
    torch_p = Predictor.from_checkpoint(run, amp="off").predict(photos, tta=False)
    # By hand: the network without its own first module, on (x / 255 - mean) / std.
    model = create_model(ModelConfig.from_dict(ckpt.meta["model"])).eval()
    model.load_state_dict(ckpt.weights)
    from imgcls.data.preprocess import PreprocessSpec, load_image

    spec = PreprocessSpec.from_dict(ckpt.meta["preprocess"])
    x = torch.stack([torch.from_numpy(np.array(load_image(p, spec))).permute(2, 0, 1) for p in photos])
    x = (x.double() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).double()) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).double()
    model.input_scale = torch.nn.Identity()
    with torch.no_grad():
        by_hand = torch.softmax(model.double()(x), 1).numpy()
    got = np.array([[p.probabilities[c] for c in ckpt.meta["class_names"]] for p in torch_p])
    assert np.abs(got - by_hand).max() < 1e-4
    # The exported graph carries the same normalisation.
    assert cli("export", run, "-o", tmp_path / "m.onnx").returncode == 0
    onnx_p = Predictor.from_checkpoint(tmp_path / "m.onnx").predict(photos, tta=False)
    got_onnx = np.array([[p.probabilities[c] for c in ckpt.meta["class_names"]] for p in onnx_p])
    assert np.abs(got_onnx - by_hand).max() < 1e-4


def test_a_one_logit_source_starts_a_three_class_run(tmp_path, three):
    """The tutorial's one-logit head is the source's classes' business, not the backbone's."""
    data = images.two_class_tree(tmp_path / "two", 8, 40)
    cfg = tmp_path / "one.json"
    cfg.write_text(json.dumps({"model_options": {"single_logit": True}}))
    source = images.train_tiny(data, tmp_path / "src", "--epochs", "1", "--config", str(cfg))
    assert load_checkpoint(source / "best.safetensors").weights["fc.weight"].shape[0] == 1
    res = cli("train", three, "--init", source, "--out", tmp_path / "run", "--epochs", "1",
              *TINY)
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").weights["fc.weight"].shape[0] == 3
