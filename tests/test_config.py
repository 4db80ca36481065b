"""config: every setting checked by type and range, wherever it comes from (flags, a config
file, imgcls.fit), before any photo is read or any folder is made."""

from __future__ import annotations

import json

import images
import pytest

import imgcls
from imgcls.config import BROAD_SOURCE_CLASSES, TrainConfig, check_types, resolve, start_preset
from imgcls.errors import UserError


@pytest.mark.parametrize("settings, words", [
    ({"tta": "false"}, "tta must be true or false, not 'false'"),
    ({"flip": "no"}, "flip must be true or false, not 'no'"),
    ({"epochs": 1.7}, "epochs must be a whole number, not 1.7"),
    ({"lr": "fast"}, "lr must be a number, not 'fast'"),
    ({"batch_size": "8"}, "batch-size must be a whole number, not '8'"),
    ({"batch_size": True}, "batch-size must be a whole number, not True"),
    ({"image_size": [40, 32]}, "image-size must be a whole number, not [40, 32]"),
    ({"seed": 3.5}, "seed must be a whole number, not 3.5"),
    ({"model_options": [1]}, "model-options must be a table of options"),
    ({"val_dir": 3}, "val-dir must be a string, not 3"),
])
def test_a_value_of_the_wrong_type_is_named(settings, words, tmp_path):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_types(settings, "x")
    f = tmp_path / "c.json"
    f.write_text(json.dumps(settings))
    with pytest.raises(UserError, match=str(f)):
        resolve({"data_dir": str(tmp_path)}, "tutorial", str(f))


def test_numbers_of_the_right_kind_pass_and_ints_are_fine_floats():
    check_types({"lr": 1, "epochs": 3, "flip": False, "val_dir": None, "mixup": "auto"}, "x")
    cfg = resolve({"data_dir": "/d", "lr": 1}, "tutorial")
    assert cfg.lr == 1 and isinstance(cfg, TrainConfig)


@pytest.mark.parametrize("settings, words", [
    ({"weight_decay": -1.0}, "weight decay must be >= 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"batch_size": 1}, "batch size must be at least 2"),
    ({"micro_batch": 1}, "micro batch must be 0 (automatic) or at least 2"),
    ({"image_size": 100000}, "image size must be 1 to 2048 pixels"),
    ({"max_pixels": -1}, "max-pixels must be >= 0 (0 = no limit)"),
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"momentum": 1.5}, "momentum must be in"),
    ({"low_res": 1.5}, "low-res must be in [0, 1)"),
])
def test_values_out_of_range_are_refused_before_anything_is_read(settings, words, tmp_path):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        resolve({"data_dir": str(tmp_path), **settings}, "tutorial")


def test_auto_starts_a_narrow_source_with_the_recipe_from_scratch():
    """`--preset auto --init`: a source of a few classes gets the recipe from scratch (its
    narrow features need changing), one of many classes or unknown ones the finetune recipe;
    the network and size are the source's either way."""
    source = {"model": "resnet-cpu", "image_size": 96}
    narrow = resolve({"data_dir": "/d", "init": "m", "device": "cpu"}, "auto", source=source,
                     source_classes=2)
    assert narrow.preset == "cpu" and narrow.freeze_epochs == 0 and narrow.image_size == 96
    assert start_preset(2, "cuda")[0] == "tutorial"
    for classes in (BROAD_SOURCE_CLASSES, 1000, None):
        cfg = resolve({"data_dir": "/d", "init": "m", "device": "cpu"}, "auto", source=source,
                      source_classes=classes)
        assert cfg.preset == "finetune" and cfg.tune_units == 2 and cfg.image_size == 96
    told = resolve({"data_dir": "/d", "init": "m"}, "finetune", source=source, source_classes=2)
    assert told.preset == "finetune"


def test_a_config_file_holds_a_table(tmp_path):
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    with pytest.raises(UserError, match="not a list"):
        resolve({"data_dir": "/d"}, "tutorial", str(f))


def test_fit_checks_its_arguments_before_making_anything(tmp_path):
    data = images.two_class_tree(tmp_path / "d", 4, 40)
    for bad, words in (({"epochs": "2"}, "fit\\(\\): epochs must be a whole number"),
                       ({"flip": "no"}, "flip must be true or false"),
                       ({"batch_size": 1}, "batch size must be at least 2")):
        with pytest.raises(imgcls.UserError, match=words):
            imgcls.fit(data, out=tmp_path / "run", **bad)
        assert not (tmp_path / "run").exists()


def test_onecycle_is_an_old_name_of_cosine_floor(tmp_path):
    """The schedule once called onecycle (a warm-up and a cosine to 1/1000 of the peak, with
    no momentum cycle) is cosine-floor; configs and run folders that say onecycle load."""
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"schedule": "onecycle"}))
    assert resolve({"data_dir": "/d"}, "tutorial", str(f)).schedule == "cosine-floor"
    assert resolve({"data_dir": "/d"}, "cpu").schedule == "cosine-floor"
    from imgcls.train.optim import lr_factor

    assert lr_factor(100, 100, 0, "cosine-floor") == pytest.approx(1e-3)
    assert lr_factor(100, 100, 0, "cosine") == pytest.approx(0.0)


def test_a_config_file_adds_model_options_to_the_sources_instead_of_replacing_them(tmp_path):
    """Old main replaced model_options wholesale: a file that set the dropout silently
    dropped the source's widths, and the run built another network than the source's."""
    f = tmp_path / "c.json"
    f.write_text('{"model_options": {"dropout": 0.5}}')
    source = {"model": "resnet-cpu", "model_options": {"widths": [8, 16, 32, 64]}}
    cfg = resolve({"data_dir": "/d", "init": "m", "device": "cpu"}, "auto", str(f),
                  source=source, source_classes=2)
    assert cfg.model_options == {"widths": [8, 16, 32, 64], "dropout": 0.5}
