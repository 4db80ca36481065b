"""The `imgcls` command: one subcommand per job, thin handlers, lazy imports.

Owns argument parsing and how results and errors are printed. A UserError (a user's
mistake) becomes one line on stderr and exit status 2, never a traceback; Ctrl-C exits 130.
Each handler imports its module when it runs, so `imgcls scan` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from imgcls import __version__
from imgcls.errors import UserError
from imgcls.runtime import keep_freed_memory  # stdlib only: cheap to import


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
    from imgcls.scan import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE

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


def _scan_options(args):
    from imgcls.scan import ScanOptions

    return ScanOptions(max_pixels=args.max_pixels, min_side=args.min_side, workers=args.workers,
                       cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       labels=args.labels or "folders")


def cmd_scan(args) -> int:
    from imgcls.scan import EmptyClassError, format_report, report_dict, scan

    try:
        index = scan(args.data_dir, _scan_options(args))
    except EmptyClassError as exc:  # the report first (what was rejected, and why), then the error
        print(json.dumps(report_dict(exc.index), indent=1) if args.json else format_report(exc.index))
        raise
    if args.json:
        doc = report_dict(index)
    else:
        print(format_report(index))
    if args.quarantine:
        from imgcls.fsutil import display
        from imgcls.quarantine import quarantine

        rep = quarantine(index, args.quarantine)
        msgs = [f"Moved {len(rep.moved)} rejected files to {display(args.quarantine)} "
                f"(undo: imgcls restore {display(args.quarantine)})"]
        msgs += [f"  not moved: {display(p)}: {why}" for p, why in rep.skipped]
        print("\n".join(msgs), file=sys.stderr if args.json else sys.stdout)
        if args.json:
            doc["quarantined"] = rep.moved
    if args.json:
        print(json.dumps(doc, indent=1))
    return 0


def cmd_restore(args) -> int:
    from imgcls.fsutil import display
    from imgcls.quarantine import restore

    rep = restore(args.quarantine_dir)
    print(f"Restored {len(rep.moved)} files.")
    for p, why in rep.skipped:
        print(f"imgcls: not restored: {display(p)}: {why}", file=sys.stderr)
    return 1 if rep.skipped else 0


def cmd_split(args) -> int:
    from imgcls.scan import scan
    from imgcls.split import split_index, split_with_val_dir

    opts = _scan_options(args)
    index = scan(args.data_dir, opts)
    if args.val_dir:
        sp = split_with_val_dir(index, scan(args.val_dir, opts))
    else:
        sp = split_index(index, args.val_split, args.seed, args.split)
    if args.json:
        print(json.dumps({"method": sp.method, "seed": sp.seed,
                          "train": [s.path for s in sp.train.samples],
                          "val": [s.path for s in sp.val.samples]}, indent=1))
    else:
        print(f"Found {len(index.samples)} files belonging to {len(index.class_names)} classes.")
        print("\n".join(sp.summary_lines()))
    for note in sp.notes:
        print(f"imgcls: warning: {note}", file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    from imgcls.augment import AugmentConfig
    from imgcls.fsutil import display
    from imgcls.preprocess import PreprocessSpec
    from imgcls.scan import scan
    from imgcls.show import augment_figure, first_training_images, samples_figure
    from imgcls.split import split_index, split_with_val_dir

    opts = _scan_options(args)
    index = scan(args.data_dir, opts)
    sp = (split_with_val_dir(index, scan(args.val_dir, opts)) if args.val_dir
          else split_index(index, args.val_split, args.seed, args.split))
    spec = PreprocessSpec(args.image_size, args.image_size, resize=args.resize)
    items = first_training_images(index, sp.train, spec, args.seed, 1 if args.augment else 9)
    if args.augment:
        cfg = AugmentConfig(flip=not args.no_flip, rotation=args.rotation)
        augment_figure(items[0][0], cfg, args.seed, args.output, items[0][1])
    else:
        samples_figure(items, args.output)
    print(f"Wrote {display(args.output)}")
    return 0


def cmd_summary(args) -> int:
    from imgcls.models import ModelConfig, create_model, list_models
    from imgcls.models.summary import summary

    if args.list:
        print("\n".join(sorted(list_models())))
        return 0
    opts = {"single_logit": True} if args.single_logit else {}
    try:
        model = create_model(ModelConfig(args.model, args.num_classes, opts))
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if args.image_size < getattr(model, "min_size", 1):
        raise UserError(f"image size {args.image_size} px is too small for {args.model}: "
                        f"it needs at least {model.min_size} px")
    print(summary(model, (args.image_size, args.image_size)))
    return 0


def _train_overrides(args) -> dict:
    from dataclasses import fields

    from imgcls.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_train(args) -> int:
    from imgcls.api import fit
    from imgcls.fsutil import display

    overrides = {k: v for k, v in _train_overrides(args).items() if k not in ("data_dir", "preset")}
    result = fit(args.data_dir, args.out, args.preset or "auto", args.resume, args.config,
                 **overrides)
    if result.interrupted:
        return 130
    if result.history:
        b = result.history[result.best_epoch - 1]
        print(f"Best: epoch {result.best_epoch}, val_accuracy {b['val_accuracy']:.4f}. "
              f"Run folder: {display(result.run_dir)}")
    return 0


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
                   help="fraction held out for validation (default 0.2)")
    d.add_argument("--split", choices=CHOICES["split"], help="split method (default stratified)")
    d.add_argument("--image-size", dest="image_size", type=int, metavar="PX",
                   help="square input size in pixels (default 180)")
    d.add_argument("--resize", choices=CHOICES["resize"], help="default stretch (as Keras)")
    d.add_argument("--cache-dir", dest="cache_dir", metavar="DIR")
    d.add_argument("--max-pixels", dest="max_pixels", type=_number(int, 0), metavar="N",
                   help="reject images with more pixels than this (0 = no limit of imgcls's "
                        "own; default 89478485, Pillow's)")
    _add_labels(d)
    d.add_argument("--max-per-class", dest="max_per_class", type=int, metavar="N",
                   help="train on a seeded sample of at most N photos per class (a quick "
                        "look at a big folder; default 0 = all)")
    m = p.add_argument_group("model and optimisation")
    m.add_argument("--model", help="network name (`imgcls summary --list` lists them; default: "
                                   "the preset's)")
    m.add_argument("--epochs", type=int, help="default 25")
    m.add_argument("--epoch-images", dest="epoch_images", type=int, metavar="N",
                   help="an epoch shows at least about N images: a smaller training set is "
                        "passed over several whole times an epoch (default 0 = once; the cpu "
                        "preset 2048)")
    m.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                   help="global batch size (default 128; per rank = global / world size)")
    m.add_argument("--micro-batch", dest="micro_batch", type=int, metavar="N",
                   help="images per forward/backward pass, gradients accumulated to the batch "
                        "(default 0 = automatic: what fits in free memory)")
    m.add_argument("--optimizer", choices=CHOICES["optimizer"], help="default adam")
    m.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    m.add_argument("--weight-decay", dest="weight_decay", type=float)
    m.add_argument("--schedule", choices=CHOICES["schedule"], help="default constant")
    m.add_argument("--warmup-epochs", dest="warmup_epochs", type=float)
    m.add_argument("--label-smoothing", dest="label_smoothing", type=float)
    m.add_argument("--mixup", type=_mixup_alpha, metavar="ALPHA",
                   help="blend pairs of training images and their labels, weights drawn "
                        "from Beta(ALPHA, ALPHA): a number, 0 = off (the default), or auto "
                        "(the cpu preset's: 1.0 where a small training set is passed over "
                        "4 or more times an epoch, else off)")
    m.add_argument("--class-weights", dest="class_weights", choices=CHOICES["class_weights"])
    a = p.add_argument_group("augmentation")
    a.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flip (default on)")
    a.add_argument("--rotation", type=float, help="fraction of a full turn (default 0.1)")
    a.add_argument("--zoom", type=float)
    a.add_argument("--translate", type=float)
    a.add_argument("--brightness", type=float)
    a.add_argument("--contrast", type=float)
    r = p.add_argument_group("run control")
    r.add_argument("--seed", type=int, help="default 1337")
    r.add_argument("--monitor", choices=CHOICES["monitor"],
                   help="metric that picks best.safetensors (default val_accuracy)")
    r.add_argument("--patience", type=int, help="early stopping patience in epochs (0 = off)")
    r.add_argument("--keep", type=int, help="epoch checkpoints to keep (0 = all)")
    r.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="recommend flip test-time augmentation to evaluate and predict")
    r.add_argument("--time-limit", dest="time_limit", type=float, metavar="MIN",
                   help="stop after the last epoch that ends within MIN minutes")
    h = p.add_argument_group("hardware")
    h.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    h.add_argument("--amp", choices=CHOICES["amp"],
                   help="mixed precision (default auto: bf16 on CUDA, float32 on a CPU)")
    h.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    h.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction,
                   default=None)
    h.add_argument("--threads", type=_number(int, 0), help="CPU threads (default 0 = all cores)")
    h.add_argument("--sync-bn", dest="sync_bn", action=argparse.BooleanOptionalAction, default=None,
                   help="synchronise BatchNorm across DDP ranks")
    p.add_argument("--preset", choices=["auto", *sorted(PRESETS)],
                   help="a named recipe: tutorial (the Keras tutorial's), cpu (a CPU-sized "
                        "network), or auto (default: cpu without a GPU, tutorial with one)")
    p.add_argument("--config", metavar="FILE", help="settings from a TOML or JSON file")


def cmd_predict(args) -> int:
    import csv

    from imgcls.predict import Predictor, expand_inputs

    if args.top_k < 1:
        raise UserError(f"--top-k must be 1 or more, not {args.top_k}")
    files, errors = expand_inputs(args.paths)
    for e in errors:
        print(f"imgcls: error: {e}", file=sys.stderr)
    if not files:
        raise UserError("nothing to predict" + ("" if errors else ": give image files or folders"))
    keep_freed_memory()
    predictor = Predictor.from_checkpoint(args.model, device=args.device, amp=args.amp,
                                          max_pixels=args.max_pixels)
    show = sys.stderr.isatty() and len(files) > args.batch_size
    tta = predictor.recommends_tta if args.tta is None else args.tta
    preds = predictor.predict(files, batch_size=args.batch_size, tta=tta, progress=show)
    failed = [p for p in preds if p.error]
    for p in failed:
        print(f"imgcls: error: {p.path}: {p.error}", file=sys.stderr)
    good = [p for p in preds if not p.error]
    if args.json:
        print(json.dumps([p.to_dict() for p in good], indent=1))
    elif args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(["path", "class", *predictor.class_names])
        for p in good:
            w.writerow([p.path, p.class_name, *(f"{p.probabilities[c]:.6f}" for c in predictor.class_names)])
    else:
        for p in good:
            line = p.sentence(min(args.top_k, len(predictor.class_names)))
            # The bare sentence only when one photo was asked about: with several (even if
            # some failed), every answer names its file.
            print(line if len(files) + len(errors) == 1 else f"{p.path}: {line}")
    return 1 if failed or errors else 0


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from imgcls.checkpoint import resolve_model_path
    from imgcls.evaluate import (default_out_dir, evaluate_set, evaluation_set, figures,
                                 format_report)
    from imgcls.fsutil import display
    from imgcls.predict import Predictor

    keep_freed_memory()
    predictor = Predictor.from_checkpoint(args.model, device=args.device, amp=args.amp)
    model_path = Path(args.model)
    run_dir = model_path if model_path.is_dir() else resolve_model_path(model_path).parent
    es = evaluation_set(run_dir, predictor.class_names, args.data_dir, args.labels,
                        args.cache_dir, moved_to=args.data)
    tta = predictor.recommends_tta if args.tta is None else args.tta
    report = evaluate_set(predictor, es, tta, batch_size=args.batch_size,
                          progress=sys.stderr.isatty() and not args.json)
    for f in report.failed:
        print(f"imgcls: error: {display(f['path'])}: {f['reason']}", file=sys.stderr)
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(model_path)
    written = [] if args.no_figures else figures(report, out_dir, run_dir / "metrics.jsonl")
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_report(report))
        for w in written:
            print(f"Wrote {display(w)}")
    return 0


def cmd_plot(args) -> int:
    from pathlib import Path

    from imgcls.fsutil import display
    from imgcls.plots import curves_figure

    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"{display(args.run_dir)}: no metrics.jsonl (not a run folder, or no "
                        "epoch has finished yet)")
    out = Path(args.output or Path(args.run_dir) / "curves.png")
    curves_figure(metrics, out)
    print(f"Wrote {display(out)}")
    return 0


def cmd_export(args) -> int:
    from imgcls.export import export_onnx
    from imgcls.fsutil import display

    rep = export_onnx(args.model, args.output, opset=args.opset, check_dir=args.check_images)
    kind = "real images" if rep.real_images else "random images (no data folder found)"
    print(f"Wrote {display(rep.path)} (opset {rep.opset}, dynamic batch, input uint8 NHWC)")
    print(f"ONNX Runtime vs PyTorch on {rep.images_checked} {kind}: max |diff| "
          f"{rep.max_abs_diff_probabilities:.2e} in probabilities, "
          f"{rep.max_abs_diff_logits:.2e} in logits")
    return 0


def cmd_serve(args) -> int:
    from imgcls.serve import ServeLimits, serve

    keep_freed_memory()
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_files=args.max_files, max_pixels=args.max_pixels)
    serve(args.model, args.host, args.port, limits, args.device)
    return 0


def cmd_download(args) -> int:
    from imgcls.download import download
    from imgcls.fsutil import display

    res = download(args.dest, args.url, args.sha256, args.timeout)
    print(f"Archive: {display(res.archive)}" + (f" (resumed at {res.resumed_from} bytes)"
                                                  if res.resumed_from else ""))
    print(f"Extracted {res.files} files into {display(res.extracted_to)}"
          + (f" ({res.skipped_identical} already there)" if res.skipped_identical else ""))
    pet = res.extracted_to / "PetImages"
    if pet.is_dir():
        print(f"Next: imgcls scan {display(pet)}")
    return 0


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

    from imgcls.download import DEFAULT_URL

    p = sub.add_parser("download", help="fetch and unpack the Cats vs Dogs archive (resumable)")
    p.add_argument("--dest", default="data", help="folder for the archive and the photos "
                                                 "(default %(default)s)")
    p.add_argument("--url", default=DEFAULT_URL, help="archive URL (default: the Keras tutorial's)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive")
    p.add_argument("--timeout", type=_number(float, 0.1), default=15.0, metavar="S",
                   help="seconds to wait for the server (default %(default)s)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("scan", help="find, verify and report every photo in a class-per-folder tree",
                       description="Verify every file by decoding it; report rejected, ignored "
                                   "and duplicate files. Never modifies DATA_DIR.")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    p.add_argument("--quarantine", metavar="DIR",
                   help="move rejected files into DIR (outside DATA_DIR) with an undo manifest")
    _add_scan_options(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("restore", help="put quarantined files back where they came from")
    p.add_argument("quarantine_dir", metavar="DIR")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("split", help="show the seeded train/validation split")
    p.add_argument("data_dir", metavar="DATA_DIR")
    _add_split_options(p)
    p.add_argument("--json", action="store_true", help="print both file lists as JSON")
    _add_scan_options(p)
    p.set_defaults(func=cmd_split)
    p = sub.add_parser("show", help="draw the first 9 training images, or 9 augmentations of one")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("-o", "--output", default="samples.png", help="PNG file (default %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="show 9 augmentations of the first training image instead")
    p.add_argument("--image-size", type=_number(int, 8, 2048), default=180, metavar="PX")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"), default="stretch")
    p.add_argument("--rotation", type=_number(float, 0, 1), default=0.1,
                   help="rotation factor, a fraction of a full turn (default %(default)s)")
    p.add_argument("--no-flip", action="store_true")
    _add_split_options(p)
    _add_scan_options(p)
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("summary", help="print a network's layers, output shapes and parameters")
    p.add_argument("--model", default="xception")
    p.add_argument("--list", action="store_true", help="list the networks imgcls can train")
    p.add_argument("--image-size", type=_number(int, 8, 2048), default=180, metavar="PX")
    p.add_argument("--num-classes", type=_number(int, 2, 100_000), default=2, metavar="C")
    p.add_argument("--single-logit", action="store_true",
                   help="one logit for two classes, as the Keras tutorial (2,731,065 parameters)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a classifier from scratch on a class-per-folder tree",
                       description="Scan, split, cache and train. Defaults are the Keras "
                                   "tutorial's recipe; flags override a --config file and a --preset.")
    p.add_argument("data_dir", metavar="DATA_DIR", nargs="?")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/DATA-DATE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run in its own folder; with DATA_DIR, the "
                        "run's data folder where it is now, if it moved")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
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
    p.set_defaults(func=cmd_predict)

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
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (checked against PyTorch)")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT")
    p.add_argument("-o", "--output", default="model.onnx", help="default %(default)s")
    p.add_argument("--opset", type=_number(int, 7, 30), default=17)
    p.add_argument("--check-images", metavar="DIR",
                   help="images for the parity check (default: the run's data folder)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="a web page and JSON API for a model")
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT_OR_ONNX")
    p.add_argument("--host", default="127.0.0.1", help="default %(default)s (this machine only)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000,
                   help="TCP port, 0 to 65535 (0 = any free one; default %(default)s)")
    p.add_argument("--max-upload-mb", type=_number(float, 0.001), default=8.0, metavar="MB",
                   help="largest request body accepted, > 0 (default %(default)s)")
    p.add_argument("--max-files", type=_number(int, 1), default=16, metavar="N",
                   help="photos per request, >= 1 (default %(default)s)")
    _add_max_pixels(p)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("plot", help="draw a run's training curves (finished or running)")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("-o", "--output", help="PNG file (default RUN/curves.png)")
    p.set_defaults(func=cmd_plot)
    return parser


def _add_labels(p) -> None:
    p.add_argument("--labels", metavar="SOURCE",
                   help="where labels come from: folders (default: one sub-folder per class), "
                        "name:REGEX (the first group of REGEX in each file name, e.g. "
                        "'name:^(cat|dog)\\.' for Kaggle's cat.0.jpg), or "
                        "csv:FILE[:PATHCOL,LABELCOL] (rows of path,label; paths relative to "
                        "DATA_DIR; columns auto-detected)")


def _add_max_pixels(p: argparse.ArgumentParser) -> None:
    from imgcls.preprocess import DEFAULT_MAX_PIXELS

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
    try:
        return args.func(args) or 0
    except UserError as exc:
        from imgcls.fsutil import display

        from imgcls.errors import PeerError

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
