"""The `imgcls` command: one subcommand per job, thin handlers, lazy imports.

Owns argument parsing and how results and errors are printed. A UserError (a user's
mistake) becomes one line on stderr and exit status 2, never a traceback; Ctrl-C exits 130.
Each handler imports its module when it runs, so `imgcls scan` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import sys

import imgcls.commands as commands
from imgcls.errors import UserError
from imgcls.version import __version__


def _number(kind: type, low: float, high: float | None = None):
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


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    from imgcls.data.scan import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE

    g = p.add_argument_group("scanning")
    g.add_argument("--max-pixels", type=_number(int, 0), default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="reject images with more pixels than this, undecoded (decompression "
                        "bomb guard; 0 = no limit of imgcls's own; default %(default)s)")
    g.add_argument("--min-side", type=_number(int, 1), default=DEFAULT_MIN_SIDE, metavar="PX",
                   help="reject images narrower or shorter than this, >= 1 (default %(default)s)")
    g.add_argument("--workers", type=_number(int, 0), default=0, metavar="N",
                   help="threads for decoding, >= 0 (default 0 = all cores)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="where scan results and image caches live (default: $IMGCLS_CACHE_DIR "
                        "or the user cache folder); never inside the data folder")
    g.add_argument("--no-cache", action="store_true", help="re-check every file")
    _add_labels(g)


def _mixup_alpha(text: str) -> float:
    if text == "auto":
        return -1.0
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {text!r}") from None


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from imgcls.config import CHOICES, PRESETS

    d = p.add_argument_group("data")
    d.add_argument("--val-dir", dest="val_dir", metavar="DIR",
                   help="validation folder (one sub-folder per class) instead of a split")
    d.add_argument("--val-split", dest="val_split", type=float, metavar="F",
                   help="fraction held out for validation, between 0 and 1 (default 0.2)")
    d.add_argument("--split", choices=CHOICES["split"], help="split method (default stratified)")
    d.add_argument("--image-size", dest="image_size", type=int, metavar="PX",
                   help="square input size, 1 to 2048 pixels (default 180)")
    d.add_argument("--resize", choices=CHOICES["resize"], help="default stretch (as Keras)")
    d.add_argument("--low-res", dest="low_res", type=_number(float, 0, 0.99), metavar="F",
                   help="progressive resizing: epoch 1 at F x image-size (default 0 = off)")
    d.add_argument("--low-res-until", dest="low_res_until", type=_number(float, 0.01, 1),
                   metavar="F", help="... rising to the full size by F of the epochs (0.5)")
    d.add_argument("--cache-dir", dest="cache_dir", metavar="DIR")
    d.add_argument("--max-pixels", dest="max_pixels", type=_number(int, 0), metavar="N",
                   help="reject images with more pixels than this (0 = no limit of imgcls's "
                        "own; default 89478485, Pillow's)")
    _add_labels(d)
    d.add_argument("--max-per-class", dest="max_per_class", type=int, metavar="N",
                   help="train on a seeded sample of at most N photos per class (a quick "
                        "look at a big folder; default 0 = all)")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--model", help="network name (`imgcls summary --list`; default: the preset's)")
    m.add_argument("--epochs", type=int, help="epochs, >= 1 (default 25)")
    m.add_argument("--epoch-images", dest="epoch_images", type=int, metavar="N",
                   help="an epoch shows at least about N images: a smaller set is passed over "
                        "several times (default 0 = once; cpu preset 2048)")
    m.add_argument("--epochs-shrink", dest="epochs_shrink", type=_number(float, 0, 1),
                   metavar="X", help="N > epoch-images photos train epochs * (epoch-images / "
                   "N) ** X epochs (default 0 = off; cpu preset 0.25; off with --epochs)")
    m.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                   help="global batch size, >= 2: BatchNorm needs two images a pass "
                        "(default 128; per rank = global / world size)")
    m.add_argument("--micro-batch", dest="micro_batch", type=int, metavar="N",
                   help="images a forward/backward pass, gradients summed to the batch (0 = "
                        "what fits in memory, the default; else >= 2)")
    m.add_argument("--optimizer", choices=CHOICES["optimizer"], help="default adam")
    m.add_argument("--lr", type=float, help="peak learning rate, > 0 (default 3e-4)")
    m.add_argument("--weight-decay", dest="weight_decay", type=float,
                   help="weight decay, >= 0, on weights only (not biases or normalisation; "
                        "default 0)")
    from imgcls.config import ALIASES

    m.add_argument("--schedule", choices=CHOICES["schedule"] + tuple(ALIASES["schedule"]),
                   metavar="{" + ",".join(CHOICES["schedule"]) + "}",
                   help="learning-rate schedule after the warm-up: constant, cosine (to 0) or "
                        "cosine-floor (to 1/1000 of the peak; 'onecycle' is its old name) "
                        "(default constant)")
    m.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                   help="linear warm-up, >= 0 epochs (fractions allowed; default 0)")
    m.add_argument("--init", metavar="SOURCE", help="start from a model: an imgcls run or "
                   "checkpoint, or a torchvision/timm ResNet file (.pth, .safetensors)")
    m.add_argument("--freeze-epochs", dest="freeze_epochs", type=_number(float, 0),
                   metavar="N", help="epochs in which only the head learns (finetune: 2)")
    m.add_argument("--layer-lr-decay", dest="layer_lr_decay", type=_number(float, 0, 1),
                   metavar="X", help="each layer group's rate is X times the next one's "
                                     "(default 1; finetune: 0.7)")
    m.add_argument("--label-smoothing", dest="label_smoothing", type=float, help="in [0, 1)")
    m.add_argument("--mixup", type=_mixup_alpha, metavar="ALPHA",
                   help="blend image pairs and labels, weights from Beta(ALPHA, ALPHA): 0 = off "
                        "(default), or auto (1.0 where a set is passed 4+ times an epoch)")
    m.add_argument("--class-weights", dest="class_weights", choices=CHOICES["class_weights"])
    a = p.add_argument_group("augmentation")
    a.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flip (default on)")
    a.add_argument("--rotation", type=float, help="fraction of a full turn, >= 0 (default 0.1)")
    a.add_argument("--zoom", type=float, help="fraction, >= 0 (default 0 = none)")
    a.add_argument("--translate", type=float, help="fraction of the side, >= 0 (default 0)")
    a.add_argument("--brightness", type=float, help="fraction, >= 0 (default 0)")
    a.add_argument("--contrast", type=float, help="fraction, >= 0 (default 0)")
    r = p.add_argument_group("run control")
    r.add_argument("--seed", type=int, help="split, weights and order seed, >= 0 (default 1337)")
    r.add_argument("--monitor", choices=CHOICES["monitor"],
                   help="metric that picks best.safetensors (default val_accuracy)")
    r.add_argument("--patience", type=int,
                   help="early stopping patience in epochs, >= 0 (0 = off, the default)")
    r.add_argument("--keep", type=int, help="epoch checkpoints to keep, >= 0 (0 = all)")
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="recommend flip test-time augmentation to evaluate and predict")
    r.add_argument("--time-limit", dest="time_limit", type=float, metavar="MIN",
                   help="the run's total minutes, resumes included (0 = none, the default): "
                        "the schedule is fitted to the epochs that fit")
    h = p.add_argument_group("hardware")
    h.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    h.add_argument("--amp", choices=CHOICES["amp"],
                   help="mixed precision (default auto: bf16 on CUDA and on CPUs with native "
                        "bf16, fp16 on older GPUs, float32 elsewhere)")
    h.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    h.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=None)
    h.add_argument("--threads", type=_number(int, 0), help="CPU threads (default 0 = all cores)")
    h.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronise BatchNorm across DDP ranks")
    p.add_argument("--preset", choices=["auto", *sorted(PRESETS)],
                   help="tutorial, cpu, finetune, or auto (default: finetune with --init, else "
                        "cpu without a GPU, tutorial with one)")
    p.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file")


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line errors: `imgcls: error: ...`, exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(2, f"imgcls: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imgcls",
        description="Train an image classifier from scratch on a folder of photos "
                    "(one sub-folder per class), then use it.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data_commands(sub)
    _add_train_command(sub)
    _add_model_commands(sub)
    return parser


def _add_data_commands(sub) -> None:
    """download, scan, restore, split, show, summary: looking at photos and networks."""

    from imgcls.data.download import DEFAULT_URL

    p = sub.add_parser("download", help="fetch and unpack the Cats vs Dogs archive (resumable)")
    p.add_argument("--dest", default="data", help="folder for the archive and the photos "
                                                 "(default %(default)s)")
    p.add_argument("--url", default=DEFAULT_URL, help="archive URL (default: the Keras tutorial's)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.add_argument("--timeout", type=_number(float, 0.1), default=15.0, metavar="S",
                   help="seconds to wait for the server (default %(default)s)")
    p.set_defaults(func=commands.cmd_download)

    p = sub.add_parser("scan", help="find, verify and report every photo in a class-per-folder tree",
                       description="Verify every file by decoding it; report rejected, ignored "
                                   "and duplicate files. Never modifies DATA_DIR.")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--quarantine", metavar="DIR",
                   help="move rejected files into DIR (outside DATA_DIR) with an undo manifest")
    _add_scan_options(p)
    p.set_defaults(func=commands.cmd_scan)

    p = sub.add_parser("restore", help="put quarantined files back where they came from")
    p.add_argument("quarantine_dir", metavar="DIR")
    p.set_defaults(func=commands.cmd_restore)

    p = sub.add_parser("split", help="show the seeded train/validation split")
    p.add_argument("data_dir", metavar="DATA_DIR")
    _add_split_options(p)
    p.add_argument("--json", action="store_true", help="print both file lists as JSON")
    _add_scan_options(p)
    p.set_defaults(func=commands.cmd_split)
    p = sub.add_parser("show", help="draw the first 9 training images, or 9 augmentations of one")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("-o", "--output", default="samples.png", help="PNG file (default %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="show 9 augmentations of the first training image instead")
    p.add_argument("--image-size", type=_number(int, 8, 2048), default=180, metavar="PX",
                   help="square size, 8 to 2048 pixels (default %(default)s)")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"), default="stretch")
    p.add_argument("--rotation", type=_number(float, 0, 1), default=0.1,
                   help="rotation factor, a fraction of a full turn, 0 to 1 (default %(default)s)")
    p.add_argument("--no-flip", action="store_true")
    _add_split_options(p)
    _add_scan_options(p)
    p.set_defaults(func=commands.cmd_show)
    p = sub.add_parser("summary", help="print a network's layers, output shapes and parameters")
    p.add_argument("--model", default="xception")
    p.add_argument("--list", action="store_true", help="list the networks imgcls can train")
    p.add_argument("--image-size", type=_number(int, 8, 2048), default=180, metavar="PX",
                   help="square size, 8 to 2048 pixels (default %(default)s)")
    p.add_argument("--num-classes", type=_number(int, 2, 100_000), default=2, metavar="C",
                   help="classes, >= 2 (default %(default)s)")
    p.add_argument("--single-logit", action="store_true",
                   help="one logit for two classes, as the Keras tutorial (2,731,065 parameters)")
    p.set_defaults(func=commands.cmd_summary)


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a class-per-folder tree",
                       description="Scan, split, cache and train, from scratch or --init. "
                                   "Flags override a --config file and a --preset.")
    p.add_argument("data_dir", metavar="DATA_DIR", nargs="?")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/DATA-DATE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run in its own folder; with DATA_DIR, the "
                        "run's data folder where it is now, if it moved")
    _add_train_options(p)
    p.set_defaults(func=commands.cmd_train)


def _add_model_commands(sub) -> None:
    """predict, evaluate, export, serve, plot: using a trained model."""
    p = sub.add_parser("predict", help="classify photos with a trained model",
                       description="Two classes: 'This image is 94.30% cat and 5.70% dog.'; "
                                   "more classes: the top-k. Exit status 1 if any file failed.")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its best checkpoint), a .safetensors or an .onnx file")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files, folders or globs")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per image")
    fmt.add_argument("--csv", action="store_true", help="CSV: path, class, one column per class")
    p.add_argument("--top-k", type=_number(int, 1), default=3, metavar="K",
                   help="classes named per photo with 3 or more classes, >= 1 (default 3)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the horizontal mirror (default: as the model's recipe says)")
    p.add_argument("--batch-size", type=_number(int, 1), default=32, metavar="N",
                   help="photos per forward pass, >= 1 (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    _add_amp(p)
    _add_max_pixels(p)
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("evaluate", help="accuracy, per-class scores, confusion matrix, top losses")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("data_dir", metavar="DATA_DIR", nargs="?",
                   help="class-per-folder tree (default: the run's own validation split)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the horizontal mirror (default: as the model's recipe says)")
    p.add_argument("--batch-size", type=_number(int, 1), default=32, metavar="N",
                   help="photos per forward pass, >= 1 (default %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", metavar="DIR", help="where the PNG figures go (default: the run folder)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--data", metavar="DIR",
                   help="where the run's data folder is now, if it moved (evaluates the run's "
                        "own validation photos there; their recorded digests decide)")
    p.add_argument("--cache-dir", metavar="DIR")
    _add_labels(p)
    _add_amp(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (checked against PyTorch)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("-o", "--output", default="model.onnx", help="default %(default)s")
    p.add_argument("--opset", type=_number(int, 7, 30), default=17,
                   help="ONNX opset, 7 to 30 (default %(default)s)")
    p.add_argument("--check-images", metavar="DIR",
                   help="images for the parity check (default: the run's data folder)")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("serve", help="a web page and JSON API for a model")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT_OR_ONNX")
    p.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    p.add_argument("--port", type=_number(int, 1, 65535), default=8000,
                   help="TCP port, 1 to 65535 (default %(default)s)")
    p.add_argument("--max-upload-mb", type=_number(float, 0.001), default=8.0, metavar="MB",
                   help="largest request body accepted, > 0 (default %(default)s)")
    p.add_argument("--max-files", type=_number(int, 1), default=16, metavar="N",
                   help="photos per request, >= 1 (default %(default)s)")
    _add_max_pixels(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("plot", help="draw a run's training curves (finished or running)")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("-o", "--output", help="PNG file (default RUN/curves.png)")
    p.set_defaults(func=commands.cmd_plot)


def _add_labels(p) -> None:
    p.add_argument("--labels", metavar="SOURCE",
                   help="where labels come from: folders (default: one sub-folder per class), "
                        "name:REGEX (the first group of REGEX in each file name, e.g. "
                        "'name:^(cat|dog)\\.' for Kaggle's cat.0.jpg), or "
                        "csv:FILE[:PATHCOL,LABELCOL] (rows of path,label; paths relative to "
                        "DATA_DIR; columns auto-detected)")


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    from imgcls.data.preprocess import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=_number(int, 0), default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse photos with more pixels than this, undecoded (decompression "
                        "bomb guard, the same default as scan and train: %(default)s; 0 = no "
                        "limit of imgcls's own)")


def _add_amp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="precision: auto = bf16 on a GPU or a CPU with native bf16 (AVX-512 "
                        "BF16, AMX: about 2x faster), float32 elsewhere; off = float32 "
                        "(default auto)")


def _add_split_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation split")
    g.add_argument("--val-split", type=_number(float, 0.001, 0.999), default=0.2, metavar="F",
                   help="fraction of images for validation (default %(default)s)")
    g.add_argument("--seed", type=_number(int, 0), default=1337,
                   help="split seed, >= 0 (default %(default)s)")
    g.add_argument("--split", choices=("stratified", "keras"), default="stratified",
                   help="stratified by class (default), or exactly the files Keras's "
                        "image_dataset_from_directory would choose")
    g.add_argument("--val-dir", metavar="DIR",
                   help="use this class-per-folder tree for validation instead of a split")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad flag: the parser printed its one line
        if exc.code in (0, None):  # --help, --version
            raise
        return int(exc.code)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import warnings

    def one_line(message, category, *rest, **kw):  # the library warns; the CLI prints
        print(f"imgcls: warning: {message}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, one_line
    from imgcls.logs import install_terminal, uninstall_terminal

    terminal = install_terminal()
    try:
        return args.func(args) or 0
    except UserError as exc:
        from imgcls.errors import PeerError
        from imgcls.fsutil import display

        if not isinstance(exc, PeerError):  # another rank's copy of rank 0's message
            print(f"imgcls: error: {display(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgcls: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `imgcls scan --json | head`: the reader went away; not an error worth a traceback.
        sys.stderr.close()
        return 0
    finally:
        warnings.showwarning = shown
        uninstall_terminal(*terminal)
