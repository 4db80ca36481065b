"""TrainConfig: everything a training run needs, with units; from defaults, a file, flags.

Owns the run's settings and their precedence: built-in defaults (the Keras tutorial's
recipe) < a preset (`--preset cpu`) < a config file (`--config run.toml` or .json) < flags.
The resolved config is written into the run folder and is what `--resume` reads back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import asdict, dataclass, field, fields

from imgcls.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    # data
    data_dir: str = ""
    val_dir: str | None = None  # a separate class-per-folder tree for validation
    labels: str = "folders"  # "folders", "name:REGEX" or "csv:FILE[:PATHCOL,LABELCOL]"
    val_split: float = 0.2  # fraction of data_dir for validation (ignored with val_dir)
    split: str = "stratified"  # "stratified" or "keras"
    image_size: int = 180  # px, square
    resize: str = "stretch"  # "stretch" (Keras), "crop" or "pad"
    low_res: float = 0.0  # progressive resizing (train.resolution): the first epoch trains at
    #                       this fraction of image_size, rising to the full size by
    #                       low_res_until of the epochs; 0 = off (always image_size)
    low_res_until: float = 0.5  # fraction of the epochs by which the full size is reached
    cache_dir: str | None = None  # None = the user cache folder
    max_pixels: int = 89_478_485  # decompression-bomb guard, pixels
    max_per_class: int = 0  # photos per class, a seeded sample of the folder; 0 = all
    # model
    model: str = "xception"
    model_options: dict = field(default_factory=dict)  # builder kwargs (widths, dropout)
    # optimisation
    epochs: int = 25
    epoch_images: int = 0  # images an epoch shows at least: a smaller training set is passed
    #                        over round(epoch_images / photos) whole times an epoch; 0 = once
    epochs_shrink: float = 0.0  # a plan sized to the data: an epoch of N > epoch_images photos
    #                             trains round(epochs * (epoch_images / N) ** epochs_shrink)
    #                             epochs (train.plan.planned_epochs); 0 = always `epochs`
    batch_size: int = 128  # global: split evenly across DDP ranks
    micro_batch: int = 0  # images per forward/backward pass (gradients accumulate to
    #                       batch_size); 0 = auto: the largest that fits in free memory
    optimizer: str = "adam"  # "adam", "adamw" or "sgd"
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.0
    decay_1d: bool = False  # weight decay on biases and normalisation weights too (the rule
    #                         before 0.2; off: timm's param_groups_weight_decay)
    momentum: float = 0.9  # sgd only
    schedule: str = "constant"  # "constant", "cosine" (to 0) or "cosine-floor" (to 1/1000 of
    #                             the peak; called "onecycle" before 0.2, still accepted)
    warmup_epochs: float = 0.0  # linear warm-up, epochs (fractions allowed)
    init: str = ""  # a model to start from (train.source): an imgcls run or checkpoint, or a
    #                 torchvision/timm weights file; "" = random weights
    freeze_epochs: float = 0.0  # epochs (fractions allowed) in which only the head learns
    layer_lr_decay: float = 1.0  # each layer group's rate is this times the next one's,
    #                              from the head (full rate) back to the stem; 1 = one rate
    tune_units: int = 0  # only the last N units of a network that runs in units
    #                      (EfficientNet-Lite's blocks, ResNet's) and its head learn; the rest
    #                      keeps its weights and BatchNorm statistics and runs once per photo
    #                      (train.features); 0 = every layer learns
    label_smoothing: float = 0.0
    mixup: float = 0.0  # alpha of mixup's Beta(alpha, alpha) blend of image pairs; 0 = off;
    #                     -1 = auto: train.plan.AUTO_MIXUP where a small training set is passed
    #                     over several times an epoch (--epoch-images), else off
    class_weights: str = "none"  # "none" or "balanced" (inverse class frequency)
    bn_recalibrate: int = 4096  # images (per rank) that re-estimate BatchNorm statistics
    #                            before each validation, where they trail the weights
    #                            (bnstats.needs_recalibration); 0 = never
    # augmentation (training only)
    flip: bool = True
    rotation: float = 0.1  # fraction of a full turn (0.1 = +-36 degrees)
    zoom: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    # run control
    seed: int = 1337
    monitor: str = "val_accuracy"  # metric that picks the best checkpoint
    patience: int = 0  # early stopping after this many epochs without improvement; 0 = off
    keep: int = 0  # epoch checkpoints to keep (newest); 0 = all
    time_limit: float = 0.0  # minutes of wall-clock time; stop after the last epoch that fits; 0 = none
    # hardware
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    amp: str = "auto"  # "auto" (bf16 where computed natively: runtime.precision_for), "bf16",
    #                    "fp16", "off" (float32) or "fp64" (float64 throughout: slow; for
    #                    checking that two summation orders give the same step)
    compile: bool = False  # torch.compile the model
    channels_last: bool = True
    threads: int = 0  # CPU threads for torch; 0 = all available cores
    sync_bn: bool = False  # synchronise BatchNorm statistics across DDP ranks
    tta: bool = False  # recommend flip test-time augmentation to evaluate/predict (not per epoch)
    preset: str = ""  # the recipe the run started from ("tutorial", "cpu"); informational

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


CHOICES = {
    "split": ("stratified", "keras"),
    "resize": ("stretch", "crop", "pad"),
    "optimizer": ("adam", "adamw", "sgd"),
    "schedule": ("constant", "cosine", "cosine-floor"),
    "class_weights": ("none", "balanced"),
    "monitor": ("val_accuracy", "val_loss", "accuracy", "loss"),
    "amp": ("auto", "bf16", "fp16", "off", "fp64"),
}

# Named recipes; the default is the Keras tutorial's. Filled in by measurement (BENCHMARKS.md).
PRESETS: dict[str, dict] = {
    "tutorial": {},
    # Measured in bench/time_to_accuracy.py on 2 CPU cores (BENCHMARKS.md): a dense small
    # ResNet at 128 px sees ~80 images/s where the tutorial's network at 180 px sees ~5.
    # Progressive resizing (64 px rising to the full size by 3/4 of the epochs) with 45 epochs
    # instead of 36 at 128 px: catsdogs 0.867 -> 0.90 in less time (bench/seeds.py, 3 seeds).
    # 160 px at the end with fewer epochs on a large set: 20,000 photos train 18
    # (45 * (2048 / N) ** 0.40) and reach 0.967 in 19 minutes where 26 epochs ending at
    # 128 px reached 0.966 in 24 (bench/full_size.py).
    "cpu": {
        "model": "resnet-cpu", "image_size": 160, "batch_size": 64, "epochs": 45,
        "epoch_images": 2048, "epochs_shrink": 0.40, "low_res": 0.4, "low_res_until": 0.75,
        "mixup": -1,
        "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine-floor",
        "warmup_epochs": 2, "label_smoothing": 0.1, "flip": True, "rotation": 0.05,
        "zoom": 0.15, "translate": 0.1, "brightness": 0.1, "contrast": 0.1, "tta": True,
        # A wall-clock budget, minutes: a probe of the pace before epoch 1 fits the plan's
        # epochs (and so its ramp and schedule) to it on this machine (train.probe); a
        # plan that needs less runs as it is. --time-limit 0: the plan's own length.
        "time_limit": 30.0,
    },
    # Starting from a model that knows photos (--init efficientnet-lite0 or another ImageNet
    # model: what --preset auto picks for a source of many classes, start_preset). The
    # source's network and resolution; the photo scaled to cover the square and centre-
    # cropped, as ImageNet models are evaluated; only the last units learn, on their inputs
    # computed once per photo and mirror image (train.features); BatchNorm keeps ImageNet's
    # statistics; a few epochs, sized to the data.
    "finetune": {
        "resize": "crop", "tune_units": 2, "batch_size": 64, "epochs": 10,
        "epoch_images": 2048, "epochs_shrink": 0.6, "mixup": 0.0,
        "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine-floor",
        "warmup_epochs": 0.5, "layer_lr_decay": 0.7, "label_smoothing": 0.1,
        "flip": True, "rotation": 0.0, "zoom": 0.0, "translate": 0.0, "brightness": 0.0,
        "contrast": 0.0, "tta": True,
    },
}

# What `--preset auto` adds to the tutorial's recipe on a GPU: a training set smaller than
# about this many photos is passed over several whole times an epoch, so a 240-photo folder
# gets ~1,000 steps in 25 epochs, not 50. The tutorial's recipe with it on an H200, 25 epochs:
# 120 photos/class 0.677 -> 0.703, 240/class 0.708 -> 0.717 (bench/gpu_recipes.sh,
# BENCHMARKS.md). From ~1,400 photos up it changes nothing; `--preset tutorial` never has it.
AUTO_GPU_EPOCH_IMAGES = 2048  # images an epoch shows at least

# `--preset auto` with `--init`: a source trained on fewer classes than this starts the recipe
# from scratch (start_preset); from this many up its features are taken as broad (ImageNet's
# 1,000, CIFAR-100's 100) and the finetune recipe keeps them. Measured only at 2 (Cats vs
# Dogs -> flowers) and, for finetune, by the literature's ImageNet practice: a judgment between.
BROAD_SOURCE_CLASSES = 100


MAX_IMAGE_SIZE = 2048  # px: a side above this is a typo (100000 px asked for 30 GB)

_KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false",
          "str": "a string", "dict": "a table of options", "str | None": "a string"}


@functools.lru_cache(maxsize=None)
def _adapters() -> dict:
    """One pydantic TypeAdapter per TrainConfig field, from its annotation."""
    import typing

    from pydantic import TypeAdapter

    return {name: TypeAdapter(hint) for name, hint in typing.get_type_hints(TrainConfig).items()}


def check_types(values: dict, where: str) -> dict:
    """Each setting of the type its field declares, strictly (pydantic's strict mode): the
    string "false" is not a boolean, 1.7 is not an epoch count, "8" is not a batch size;
    an int is a fine float. UserError names the setting, what it must be, and what it got."""
    from pydantic import ValidationError

    adapters = _adapters()
    for key, value in values.items():
        if key not in adapters or (key == "mixup" and value == "auto"):
            continue
        try:
            adapters[key].validate_python(value, strict=True)
        except ValidationError:
            hint = str(next(f.type for f in fields(TrainConfig) if f.name == key))
            raise UserError(f"{where}: {key.replace('_', '-')} must be "
                            f"{_KINDS.get(hint, hint)}, not {value!r} "
                            f"({type(value).__name__})") from None
    return values


# Names a setting had before: configs and run folders written with them still load.
ALIASES = {"schedule": {"onecycle": "cosine-floor"}}  # no momentum cycle: warm-up + cosine


def validate(cfg: TrainConfig) -> TrainConfig:
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                            f"not {getattr(cfg, name)!r}")
    checks = [
        (1 <= cfg.image_size <= MAX_IMAGE_SIZE,
         f"image size must be 1 to {MAX_IMAGE_SIZE} pixels, not {cfg.image_size}"),
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (cfg.batch_size >= 2, f"batch size must be at least 2, not {cfg.batch_size} (BatchNorm "
                              "needs two images a pass to compute batch statistics)"),
        (cfg.micro_batch >= 0, "micro batch must be >= 0 (0 = automatic)"),
        (cfg.micro_batch != 1, "micro batch must be 0 (automatic) or at least 2, not 1 "
                               "(BatchNorm needs two images a pass)"),
        (cfg.weight_decay >= 0, f"weight decay must be >= 0, not {cfg.weight_decay:g}"),
        (cfg.seed >= 0, f"seed must be >= 0, not {cfg.seed}"),
        (0 <= cfg.momentum < 1, f"momentum must be in [0, 1), not {cfg.momentum:g}"),
        (cfg.warmup_epochs >= 0, "warmup epochs must be >= 0"),
        (cfg.bn_recalibrate >= 0, "bn-recalibrate must be >= 0 (0 = never)"),
        (cfg.max_pixels >= 0, f"max-pixels must be >= 0 (0 = no limit), not {cfg.max_pixels}"),
        (cfg.brightness >= 0 and cfg.contrast >= 0, "augmentation strengths must be >= 0"),
        (cfg.lr > 0, "learning rate must be positive"),
        (0 < cfg.val_split < 1 or cfg.val_dir, "val-split must be between 0 and 1"),
        (0 <= cfg.label_smoothing < 1, "label smoothing must be in [0, 1)"),
        (cfg.mixup >= 0 or cfg.mixup == -1, "mixup must be >= 0 (0 = off) or auto"),
        (cfg.rotation >= 0 and cfg.zoom >= 0 and cfg.translate >= 0,
         "augmentation strengths must be >= 0"),
        (cfg.keep >= 0 and cfg.patience >= 0, "keep and patience must be >= 0"),
        (cfg.max_per_class >= 0, "max-per-class must be >= 0 (0 = every photo)"),
        (cfg.epoch_images >= 0, "epoch-images must be >= 0 (0 = one pass over the photos)"),
        (0 <= cfg.epochs_shrink <= 1, "epochs-shrink must be between 0 and 1 (0 = off)"),
        (0 <= cfg.low_res < 1, f"low-res must be in [0, 1) (0 = off), not {cfg.low_res:g}"),
        (0 < cfg.low_res_until <= 1, "low-res-until must be in (0, 1]"),
        (0 <= cfg.freeze_epochs < cfg.epochs,
         f"freeze-epochs must be >= 0 and fewer than the {cfg.epochs} epochs"),
        (0 < cfg.layer_lr_decay <= 1, "layer-lr-decay must be in (0, 1] (1 = one rate)"),
        (cfg.tune_units >= 0, f"tune-units must be >= 0 (0 = every layer), not {cfg.tune_units}"),
        (cfg.time_limit >= 0, "time limit must be >= 0 minutes"),
    ]
    import math

    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{f.name.replace('_', '-')} must be a finite number, not {v}")
    checks.append((cfg.threads >= 0, "threads must be 0 (all cores) or more"))
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)
    return cfg


def load_file(path: str) -> dict:
    """Read a config file: TOML (.toml) or JSON; unknown keys are an error."""
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read config ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file holds settings by name (a TOML table or a JSON "
                        f"object), not a {type(data).__name__}")
    return check_types(check_keys(data, path), path)


def check_keys(data: dict, where: str) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    return data


def auto_preset(device: str) -> tuple[str, str]:
    """(preset, why) for `--preset auto`: the tutorial's recipe where a GPU will train it,
    the CPU recipe elsewhere (the tutorial's network needs about a day on 2 CPU cores for
    Cats vs Dogs; BENCHMARKS.md)."""
    if device.startswith("cuda"):
        return "tutorial", f"--device {device}"
    if device == "cpu":
        return "cpu", "--device cpu"
    import torch

    if torch.cuda.is_available():
        return "tutorial", f"a CUDA GPU is available ({torch.cuda.get_device_name(0)})"
    return "cpu", "no GPU here, and the tutorial's network would take about a day on a CPU"


def start_preset(source_classes: int | None, device: str) -> tuple[str, str]:
    """(preset, why) for `--preset auto` when the run starts from a model.

    A source trained to tell a few classes apart (an imgcls run on cats and dogs) learnt
    narrow features: the finetune recipe, which keeps them (head first, earlier layers
    slower), was level with training from scratch on flower folders, while the recipe from
    scratch started from the source's weights beat scratch by 1.5-3.9 points
    (bench/finetune.py, BENCHMARKS.md "Warm start"). A source of many classes (ImageNet's
    1,000 in a torchvision/timm file; one whose classes are not known) has the broad features
    the finetune recipe is made to keep."""
    if source_classes is not None and source_classes < BROAD_SOURCE_CLASSES:
        preset, _ = auto_preset(device)
        return preset, (f"starting from a model of {source_classes} classes, whose narrow "
                        "features the recipe from scratch adapts better than the finetune one")
    return "finetune", "starting from a model"


def _layer(values: dict, layer: dict) -> None:
    """One level of the precedence over the ones below it: its settings replace theirs,
    except model_options, whose keys are merged (a file that sets the dropout keeps the
    preset's widths)."""
    for key, value in layer.items():
        if key == "model_options" and isinstance(value, dict) and \
                isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value


def resolve(overrides: dict, preset: str | None = None, config_file: str | None = None,
            base: TrainConfig | None = None, source: dict | None = None,
            source_classes: int | None = None) -> TrainConfig:
    """defaults (or base) < preset < source < file < overrides (None values are ignored).

    preset "auto" picks "cpu" or "tutorial" by the device the run will use; on a GPU it also
    passes a small training set over several times an epoch (AUTO_GPU_EPOCH_IMAGES). When the
    run starts from a model (`init`) it picks by the source's classes (`source_classes`:
    start_preset). `source`: what the model to start from says of the run (its network and
    image size: train.source)."""
    values = (base or TrainConfig()).to_dict()
    auto = preset == "auto"
    if preset == "finetune" and not overrides.get("init"):
        raise UserError("--preset finetune starts from a model: give --init SOURCE (an imgcls "
                        "run, or a torchvision/timm weights file)")
    if auto:
        device = overrides.get("device") or values.get("device") or "auto"
        if config_file:
            device = overrides.get("device") or load_file(config_file).get("device") or device
        preset, _ = (start_preset(source_classes, device) if overrides.get("init")
                     else auto_preset(device))
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of auto, {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        if auto and preset == "tutorial":
            values["epoch_images"] = AUTO_GPU_EPOCH_IMAGES
        values["preset"] = preset
    _layer(values, source or {})
    given = load_file(config_file) if config_file else {}
    overrides = {k: os.fspath(v) if isinstance(v, os.PathLike) else v
                 for k, v in overrides.items()}
    given.update({k: v for k, v in check_keys(overrides, "flags").items() if v is not None})
    _layer(values, given)
    if "epochs" in given and "epochs_shrink" not in given:
        values["epochs_shrink"] = 0.0  # epochs the user chose are the epochs trained
    if "epochs" in given and "time_limit" not in given:
        values["time_limit"] = 0.0  # ... all of them, not those a recipe's budget fits
    if values.get("mixup") == "auto":  # as a config file may say it
        values["mixup"] = -1.0
    check_types(values, "settings")
    for key, old_names in ALIASES.items():
        values[key] = old_names.get(values.get(key), values.get(key))
    if values.get("data_dir"):
        values["data_dir"] = os.path.abspath(os.path.expanduser(values["data_dir"]))
    if values.get("val_dir"):
        values["val_dir"] = os.path.abspath(os.path.expanduser(values["val_dir"]))
    if str(values.get("labels", "")).startswith("csv:"):  # the run must find its CSV again
        from imgcls.data.labels import parse

        values["labels"] = parse(values["labels"]).text
    return validate(TrainConfig(**values))
