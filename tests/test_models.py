"""models: the tutorial's parameter count exactly, shapes, every registered model trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imgcls.cli import main
from imgcls.models import ModelConfig, create_model, list_models
from imgcls.models.summary import count_params


def test_xception_matches_the_keras_parameter_count():
    single = create_model(ModelConfig("xception", 2, {"single_logit": True}))
    assert count_params(single) == (2_722_777, 8_288)
    two_way = create_model(ModelConfig("xception", 2))
    assert count_params(two_way) == (2_722_777 + 1_025, 8_288)
    five = create_model(ModelConfig("xception", 5))
    assert count_params(five)[0] == 2_722_777 - 1_025 + 5 * 1_025


@pytest.mark.parametrize("name", sorted(list_models()))
@pytest.mark.parametrize("classes", [2, 3])
def test_forward_shapes_for_uint8_and_float_input(name, classes):
    model = create_model(ModelConfig(name, classes)).eval()
    size = max(32, getattr(model, "min_size", 1))
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), model(x.float())
        feats = model.forward_features(x.float())
    assert a.shape == (2, classes) and torch.allclose(a, b)
    assert torch.allclose(model.forward_head(feats), a)


def test_single_logit_head_shape():
    m = create_model(ModelConfig("xception-tiny", 2, {"single_logit": True})).eval()
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 1)


def test_non_square_and_odd_sizes_follow_keras_same_padding():
    m = create_model(ModelConfig("xception", 2)).eval()
    with torch.no_grad():
        f = m.forward_features(torch.zeros(1, 3, 181, 150))
    # Keras "same": every stride-2 stage gives ceil(n / 2): 181 -> 91 -> 46 -> 23 -> 12.
    assert f.shape[-2:] == (12, 10)


# Lite1 and Lite2 are Lite0's code at other widths and depths; the 34/101 ResNets, 18/50's.
@pytest.mark.parametrize("name", sorted(set(list_models()) - {
    "efficientnet-lite1", "efficientnet-lite2", "resnet34", "resnet101"}))
def test_a_few_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = create_model(ModelConfig(name, 2)).train()
    x = torch.rand(8, 3, 32, 32) * 255
    y = torch.tensor([0, 1] * 4)
    x[y == 1, 0] = 255  # class 1 is red
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9


def test_summary_command_prints_the_table_and_total(capsys):
    assert main(["summary", "--model", "xception", "--image-size", "180", "--single-logit"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "Total params: 2,731,065 (trainable 2,722,777, non-trainable 8,288)"
    assert any("(1024, 12, 12)" in line for line in out)
    assert "4.89 GFLOP" in out[-2]
    assert main(["summary", "--image-size", "8"]) == 2
    assert main(["summary", "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_strided_pointwise_is_a_stride_2_one_by_one_convolution():
    """The oneDNN work-around computes exactly what nn.Conv2d(k=1, stride=2) computes."""
    from imgcls.models.xception import StridedPointwise

    torch.manual_seed(0)
    # float64: the two are different kernels (another summation order), equal in exact
    # arithmetic; a wrong stride or offset differs by O(1)
    ours = StridedPointwise(8, 16, 2).double()
    ref = torch.nn.Conv2d(8, 16, 1, stride=2).double()
    ref.load_state_dict(ours.state_dict())
    for size in (16, 17):  # even and odd: ceil(H / 2) output rows either way
        x = torch.randn(3, 8, size, size, dtype=torch.float64)
        a, b = ours(x), ref(x)
        assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=1e-12)
        ga = torch.autograd.grad(a.square().sum(), ours.weight)[0]
        gb = torch.autograd.grad(b.square().sum(), ref.weight)[0]
        assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-12)


# oneDNN 3.12 (PyTorch 2.13) on AVX-512: the weight gradient of a 1x1 stride-2 convolution
# in channels_last, with 2 threads and an odd batch, kills the process. The smallest trigger:
ONEDNN_TRIGGER = """
import torch
torch.set_num_threads(2)
conv = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(5, 8, 16, 16).contiguous(memory_format=torch.channels_last)
conv(x).sum().backward()
"""


def test_odd_batch_channels_last_training_does_not_crash(tmp_path):
    """The trigger's shapes, through `imgcls train` (channels_last, 2 threads, batch 5): it
    must finish. Where plain PyTorch crashes on the trigger, this is the work-around's test;
    elsewhere it still checks odd batches train."""
    import subprocess
    import sys

    import images

    raw = subprocess.run([sys.executable, "-c", ONEDNN_TRIGGER], capture_output=True, timeout=120)
    data = images.two_class_tree(tmp_path / "data", 8, 40)
    res = subprocess.run([sys.executable, "-m", "imgcls", "train", str(data), "--preset", "tutorial", "--out",
                          str(tmp_path / "run"), "--model", "xception-tiny", "--image-size", "32",
                          "--batch-size", "5", "--epochs", "1", "--threads", "2",
                          "--channels-last"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (f"plain PyTorch trigger exit {raw.returncode}; imgcls exit "
                                 f"{res.returncode}: {res.stderr[-1500:]}")
