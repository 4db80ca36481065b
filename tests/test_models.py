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


@pytest.mark.parametrize("name", sorted(list_models()))
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
