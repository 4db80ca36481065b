"""The commands: parsed arguments -> API calls -> what is printed, and the exit code.

One function per command (`cmd_scan`, `cmd_train`, ...), called by cli.main. Each reads its
arguments, calls the library (api.py and the packages), prints the result and returns the
exit status (0, 1 where some photo failed, 2 through UserError); no policy lives here.
"""


from __future__ import annotations

import json
import os
import sys

from imgcls.errors import UserError
from imgcls.runtime import keep_freed_memory  # stdlib only: cheap to import


def _scan_options(args):
    from imgcls.data.scan import ScanOptions

    return ScanOptions(max_pixels=args.max_pixels, min_side=args.min_side, workers=args.workers,
                       cache_dir=args.cache_dir, use_cache=not args.no_cache,
                       labels=args.labels or "folders")


def cmd_scan(args) -> int:
    from imgcls.data.scan import EmptyClassError, format_report, report_dict, scan

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
        from imgcls.data.quarantine import quarantine
        from imgcls.fsutil import display

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
    from imgcls.data.quarantine import restore
    from imgcls.fsutil import display

    rep = restore(args.quarantine_dir)
    print(f"Restored {len(rep.moved)} files.")
    for p, why in rep.skipped:
        print(f"imgcls: not restored: {display(p)}: {why}", file=sys.stderr)
    return 1 if rep.skipped else 0


def cmd_split(args) -> int:
    from imgcls.data.scan import scan
    from imgcls.data.split import split_index, split_with_val_dir

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
    from imgcls.api import show_batch
    from imgcls.fsutil import display

    given = {"image_size": args.image_size, "resize": args.resize, "rotation": args.rotation,
             "flip": False if args.no_flip else None, "val_split": args.val_split,
             "seed": args.seed, "split": args.split, "val_dir": args.val_dir,
             "labels": args.labels, "cache_dir": args.cache_dir, "max_pixels": args.max_pixels}
    show_batch(args.data_dir, args.augment, args.preset or "auto", args.output,
               **{k: v for k, v in given.items() if v is not None})
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
    if result.history and os.environ.get("RANK", "0") == "0":  # once, not once a rank
        b = result.history[result.best_epoch - 1]
        print(f"Best: epoch {result.best_epoch}, val_accuracy {b['val_accuracy']:.4f}. "
              f"Run folder: {display(result.run_dir)}")
    return 0


def cmd_predict(args) -> int:
    import csv

    from imgcls.data.files import expand_inputs
    from imgcls.infer.predictor import Predictor

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
    preds = predictor.predict(files, batch_size=args.batch_size, tta=args.tta, progress=show)
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

    from imgcls.fsutil import display
    from imgcls.infer.evaluate import (
        default_out_dir,
        evaluate_set,
        evaluation_set,
        figures,
        format_report,
    )
    from imgcls.infer.predictor import Predictor

    keep_freed_memory()
    predictor = Predictor.from_checkpoint(args.model, device=args.device, amp=args.amp)
    model_path = Path(args.model)
    es = evaluation_set(model_path, predictor.class_names, args.data_dir, args.labels,
                        args.cache_dir, moved_to=args.data, meta=predictor.meta)
    report = evaluate_set(predictor, es, args.tta, batch_size=args.batch_size,
                          progress=sys.stderr.isatty() and not args.json)
    for f in report.failed:
        print(f"imgcls: error: {display(f['path'])}: {f['reason']}", file=sys.stderr)
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(model_path, es.run)
    metrics = es.run / "metrics.jsonl" if es.run is not None else None
    written = [] if args.no_figures else figures(report, out_dir, metrics)
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
    from imgcls.viz.plots import curves_figure

    metrics = Path(args.run_dir) / "metrics.jsonl"
    if not metrics.exists():
        raise UserError(f"{display(args.run_dir)}: no metrics.jsonl (not a run folder, or no "
                        "epoch has finished yet)")
    out = Path(args.output or Path(args.run_dir) / "curves.png")
    curves_figure(metrics, out)
    print(f"Wrote {display(out)}")
    return 0


def cmd_export(args) -> int:
    from imgcls.fsutil import display
    from imgcls.infer.export import export_onnx

    rep = export_onnx(args.model, args.output, opset=args.opset, check_dir=args.check_images)
    kind = "real images" if rep.real_images else "random images (no data folder found)"
    print(f"Wrote {display(rep.path)} (opset {rep.opset}, dynamic batch, input uint8 NHWC)")
    print(f"ONNX Runtime vs PyTorch on {rep.images_checked} {kind}: max |diff| "
          f"{rep.max_abs_diff_probabilities:.2e} in probabilities, "
          f"{rep.max_abs_diff_logits:.2e} in logits")
    return 0


def cmd_serve(args) -> int:
    from imgcls.infer.serve import ServeLimits, serve

    keep_freed_memory()
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                         max_files=args.max_files, max_pixels=args.max_pixels)
    serve(args.model, args.host, args.port, limits, args.device)
    return 0


def cmd_download(args) -> int:
    from imgcls.data.download import download
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
