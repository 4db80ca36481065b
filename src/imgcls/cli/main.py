"""The `imgcls` command: one subcommand per job, thin handlers, lazy imports.

Owns argument parsing and how results and errors are printed. A UserError (a user's
mistake) becomes one line on stderr and exit status 2, never a traceback; Ctrl-C exits 130.
Each handler imports its module when it runs, so `imgcls scan` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import sys

import imgcls.cli.commands as commands
from imgcls.errors import UserError
from imgcls.cli.train_flags import add_labels, add_train_options, number
from imgcls.version import __version__


def _add_scan_options(p: argparse.ArgumentParser) -> None:
    from imgcls.data.scan import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE

    g = p.add_argument_group("scanning")
    g.add_argument("--max-pixels", type=number(int, 0), default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="reject images with more pixels than this, undecoded (decompression "
                        "bomb guard; 0 = no limit of imgcls's own; default %(default)s)")
    g.add_argument("--min-side", type=number(int, 1), default=DEFAULT_MIN_SIDE, metavar="PX",
                   help="reject images narrower or shorter than this, >= 1 (default %(default)s)")
    g.add_argument("--workers", type=number(int, 0), default=0, metavar="N",
                   help="threads for decoding, >= 0 (default 0 = all cores)")
    g.add_argument("--cache-dir", metavar="DIR",
                   help="where scan results and image caches live (default: $IMGCLS_CACHE_DIR "
                        "or the user cache folder); never inside the data folder")
    g.add_argument("--no-cache", action="store_true", help="re-check every file")
    add_labels(g)


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
    p.add_argument("--timeout", type=number(float, 0.1), default=15.0, metavar="S",
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
    p = sub.add_parser("show", help="draw the first 9 training images, or 9 augmentations of one",
                       description="The first 9 photos of training epoch 0 as `imgcls train` "
                                   "with the same preset and flags would see them.")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("-o", "--output", default="samples.png", help="PNG file (default %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="show 9 augmentations of the first training image instead")
    p.add_argument("--preset", choices=("auto", "tutorial", "cpu"),
                   help="the recipe whose pixels and order to show (default auto, as train)")
    p.add_argument("--image-size", type=number(int, 8, 2048), metavar="PX",
                   help="square size, 8 to 2048 pixels (default: the recipe's)")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"),
                   help="how a photo becomes a square (default: the recipe's)")
    p.add_argument("--rotation", type=number(float, 0, 1),
                   help="rotation factor, a fraction of a full turn, 0 to 1 (default: the "
                        "recipe's)")
    p.add_argument("--no-flip", action="store_true")
    _add_split_options(p)
    _add_scan_options(p)
    p.set_defaults(func=commands.cmd_show)
    p = sub.add_parser("summary", help="print a network's layers, output shapes and parameters")
    p.add_argument("--model", default="xception")
    p.add_argument("--list", action="store_true", help="list the networks imgcls can train")
    p.add_argument("--image-size", type=number(int, 8, 2048), default=180, metavar="PX",
                   help="square size, 8 to 2048 pixels (default %(default)s)")
    p.add_argument("--num-classes", type=number(int, 2, 100_000), default=2, metavar="C",
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
    add_train_options(p)
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
    p.add_argument("--top-k", type=number(int, 1), default=3, metavar="K",
                   help="classes named per photo with 3 or more classes, >= 1 (default 3)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the horizontal mirror (default: as the model's recipe says)")
    p.add_argument("--batch-size", type=number(int, 1), default=32, metavar="N",
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
    p.add_argument("--batch-size", type=number(int, 1), default=32, metavar="N",
                   help="photos per forward pass, >= 1 (default %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", metavar="DIR", help="where the PNG figures go (default: the run folder)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--data", metavar="DIR",
                   help="where the run's data folder is now, if it moved (evaluates the run's "
                        "own validation photos there; their recorded digests decide)")
    p.add_argument("--cache-dir", metavar="DIR")
    add_labels(p)
    _add_amp(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (checked against PyTorch)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("-o", "--output", default="model.onnx", help="default %(default)s")
    p.add_argument("--opset", type=number(int, 7, 30), default=17,
                   help="ONNX opset, 7 to 30 (default %(default)s)")
    p.add_argument("--check-images", metavar="DIR",
                   help="images for the parity check (default: the run's data folder)")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("serve", help="a web page and JSON API for a model")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT_OR_ONNX")
    p.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    p.add_argument("--port", type=number(int, 1, 65535), default=8000,
                   help="TCP port, 1 to 65535 (default %(default)s)")
    p.add_argument("--max-upload-mb", type=number(float, 0.001), default=8.0, metavar="MB",
                   help="largest request body accepted, > 0 (default %(default)s)")
    p.add_argument("--max-files", type=number(int, 1), default=16, metavar="N",
                   help="photos per request, >= 1 (default %(default)s)")
    _add_max_pixels(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("plot", help="draw a run's training curves (finished or running)")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("-o", "--output", help="PNG file (default RUN/curves.png)")
    p.set_defaults(func=commands.cmd_plot)


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    from imgcls.data.preprocess import DEFAULT_MAX_PIXELS

    p.add_argument("--max-pixels", type=number(int, 0), default=DEFAULT_MAX_PIXELS, metavar="N",
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
    g.add_argument("--val-split", type=number(float, 0.001, 0.999), default=0.2, metavar="F",
                   help="fraction of images for validation (default %(default)s)")
    g.add_argument("--seed", type=number(int, 0), default=1337,
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
