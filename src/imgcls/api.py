"""The Python API: a few functions and two objects, for notebooks and programs.

    import imgcls
    index = imgcls.scan_folder("data/PetImages")          # DatasetIndex: classes, files, rejects
    run = imgcls.fit("data/PetImages", out="runs/pets", epochs=10)     # Run
    model = imgcls.load("runs/pets")                      # Model (a run, a .safetensors, an .onnx)
    model.predict(["cat.jpg", pil_image, numpy_array])    # [Prediction]
    model.evaluate("data/other")                          # EvalReport
    model.export("pets.onnx")                             # ExportReport

Owns nothing new: each call is the same code path as the matching command (the CLI's
`train` and `fit` both resolve a TrainConfig and call train.fit), and errors are
UserError exceptions with the same one-line messages the CLI prints. Everything returned is
plain data: dataclasses, lists, NumPy arrays, matplotlib figures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import UserError


# Not `scan`/`train`/`show`: those names are the package's modules (imgcls.data.scan, ...), and an
# imported submodule replaces a package attribute of the same name.
def scan_folder(path: str | os.PathLike, labels: str = "folders", **options):
    """Scan a folder: every file decoded and checked, nothing modified.

    labels: "folders" (one sub-folder per class), "name:REGEX" or "csv:FILE".
    options: ScanOptions fields (max_pixels, min_side, workers, cache_dir, use_cache).
    Returns a DatasetIndex (class_names, samples, rejected, ignored, duplicates, ...)."""
    from imgcls.data.scan import ScanOptions
    from imgcls.data.scan import scan as _scan

    return _scan(path, ScanOptions(labels=labels, progress=options.pop("progress", None),
                                   **options))


@dataclass
class Run:
    """A finished (or stopped) training run."""
    run_dir: Path
    history: list[dict] = field(default_factory=list)  # one dict per epoch (metrics.jsonl)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False

    @property
    def best(self) -> dict:
        return self.history[self.best_epoch - 1] if self.best_epoch else {}

    def load(self, **kw) -> "Model":
        """The run's best model."""
        return load(self.run_dir, **kw)

    def curves(self):
        """Loss and accuracy per epoch as a matplotlib Figure."""
        from imgcls.viz.plots import curves_figure

        return _shown(curves_figure(self.run_dir / "metrics.jsonl"))


def _source_settings(init: str | None) -> tuple[dict, int | None]:
    """What the model to start from decides unless told otherwise: its network (and that
    network's options) and its image size; and how many classes it tells apart (which
    recipe `--preset auto` picks: config.start_preset)."""
    if not init:
        return {}, None
    from imgcls.train.source import read_source

    src = read_source(init)
    # single_logit is a two-class head's shape, not the backbone's: the new run's classes
    # decide its head (a three-class run from a one-logit source would be refused).
    options = None if src.model_options is None else \
        {k: v for k, v in src.model_options.items() if k != "single_logit"}
    values = {"model": src.model, "model_options": options, "image_size": src.image_size}
    return {k: v for k, v in values.items() if v is not None}, src.classes


def fit(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          preset: str = "auto", resume: str | os.PathLike | None = None, config: str | None = None,
          **settings: Any) -> Run:
    """Train from scratch on `data` into the run folder `out` (as `imgcls train`).

    settings: any TrainConfig field (epochs=10, image_size=128, labels="name:^(cat|dog)\\.",
    val_dir=..., max_per_class=..., time_limit=minutes, ...). resume=RUN continues a run with
    its own settings (only epochs, time_limit and hardware may change); with `data` (and
    val_dir) it finds the run's photos in a folder that moved: the run's record of its
    files (paths and content digests) decides which photos are the run's."""
    from imgcls.config import TrainConfig, check_keys, check_types, resolve
    from imgcls.fsutil import display
    from imgcls.train import fit as fit_

    settings = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in settings.items()}
    check_types(check_keys(settings, "fit()"), "fit()")
    if resume is not None:
        import json

        run = Path(resume)
        try:
            base = TrainConfig(**json.loads((run / "config.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise UserError(f"{display(run)}: not a run folder (no readable config.json)") from None
        if out is not None and os.path.realpath(out) != os.path.realpath(run):
            raise UserError(f"--out {display(out)} with --resume {display(run)}: a resumed run "
                            "continues in its own folder; leave --out out")
        if data is not None:  # the run's data folder, moved: the record decides what is whose
            settings["data_dir"] = os.path.abspath(os.path.expanduser(os.fspath(data)))
            if not os.path.isdir(settings["data_dir"]):
                raise UserError(f"{display(data)}: no such folder")
        # Only the length of the run, the hardware and where its folders now are may change.
        may_change = {"epochs", "time_limit", "device", "threads", "compile", "cache_dir",
                      "data_dir", "val_dir"}
        changed = sorted(k for k, v in settings.items()
                         if v is not None and k not in may_change and v != getattr(base, k))
        if changed:
            raise UserError(f"--resume continues a run with its own settings; cannot change "
                            f"{', '.join(changed)}")
        cfg = resolve(settings, base=base)
        result = fit_(cfg, run, resume=True)
    else:
        if data is None:
            raise UserError("give a DATA_DIR to train on (or --resume RUN_DIR)")
        from imgcls.config import load_file

        init = settings.get("init") or (load_file(config).get("init") if config else None)
        source, classes = _source_settings(init)
        cfg = resolve(dict(settings, data_dir=str(data), init=init), preset, config,
                      source=source, source_classes=classes)
        if preset == "auto" and os.environ.get("RANK", "0") == "0":
            from imgcls.config import auto_preset, start_preset

            fitted = (f", each epoch showing at least {cfg.epoch_images} images"
                      if cfg.preset == "tutorial" and cfg.epoch_images else "")
            why = (f"{start_preset(classes, cfg.device)[1]}; {cfg.model} at {cfg.image_size} "
                   "px as the source" if init else auto_preset(cfg.device)[1])
            logging.getLogger(__name__).info(
                f"Recipe: the {cfg.preset} preset{fitted} ({why}; --preset tutorial, cpu or "
                "finetune to choose)")
        made = out is None
        if made:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise UserError("under torchrun give --out: every rank must write to the "
                                "same run folder")
            from imgcls.train.runfolder import new_run_dir

            _check_run_folder(Path("runs"), cfg)  # before anything is made
            out = new_run_dir(cfg.data_dir)
        out = Path(out)
        _check_run_folder(out, cfg)
        result = fit_(cfg, out, made_here=made)
    return Run(result.run_dir, result.history, result.best_epoch, result.stopped_early,
               result.interrupted)


def _shown(fig):
    """Return fig; in IPython, first teach it to draw matplotlib Figures made without
    pyplot (ours use the object API: no global figure state), as PNG."""
    import sys

    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        import io

        from matplotlib.figure import Figure

        def png(f):
            buf = io.BytesIO()
            f.savefig(buf, format="png", bbox_inches="tight")
            return buf.getvalue()

        shell.display_formatter.formatters["image/png"].for_type(Figure, png)
    return fig


def _check_run_folder(out, cfg) -> None:
    """A run folder must be a folder, outside the data (the next scan would take it for a
    class); the same for the cache folder."""
    from pathlib import Path

    from imgcls.fsutil import display, is_within

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {display(out)}: that is an existing file, not a folder")
    for d in filter(None, (cfg.data_dir, cfg.val_dir)):
        if is_within(out, Path(d)):
            raise UserError(f"--out {display(out)} is inside the data folder {display(d)}, "
                            "where the next scan would take it for a class; choose a folder "
                            "outside it")
        if cfg.cache_dir and is_within(Path(cfg.cache_dir), Path(d)):
            raise UserError(f"--cache-dir {display(cfg.cache_dir)} is inside the data folder "
                            f"{display(d)}; choose one outside it")


Input = Any  # a path, a PIL image, an (H, W, 3) uint8 NumPy array, or encoded bytes


class Model:
    """A trained classifier: predict, evaluate, export. Made by `imgcls.load`."""

    def __init__(self, predictor, source: Path):
        self._p = predictor
        self.source = source

    @property
    def class_names(self) -> list[str]:
        return list(self._p.class_names)

    @staticmethod
    def _as_list(inputs) -> list:
        """One input, or a list/tuple of them, or a batch -> a list: an (N, H, W, C) array,
        or an (N, C, H, W) torch tensor (PyTorch's batch layout)."""
        from PIL import Image

        tensor = type(inputs).__module__.startswith("torch")
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return list(inputs)
        if tensor and getattr(inputs, "ndim", 0) == 4:
            return list(inputs.unbind(0))
        if isinstance(inputs, (list, tuple)):
            return list(inputs)
        if inputs is None or isinstance(inputs, (str, os.PathLike, bytes, bytearray,
                                                 memoryview, Image.Image, np.ndarray)) \
                or hasattr(inputs, "read") or tensor:
            return [inputs]
        try:
            return list(inputs)
        except TypeError:
            return [inputs]

    def predict(self, inputs, tta: bool | None = None, batch_size: int = 32) -> list:
        """One Prediction (path, class_name, probabilities, error) per input, in order.

        inputs: one or a list of paths, PIL images, (H, W, 3) arrays or (C, H, W) torch
        tensors, or a batch: an (N, H, W, 3) array or an (N, C, H, W) tensor. tta: average
        with the mirror image (default: as the training recipe says)."""
        items = self._as_list(inputs)
        from imgcls.runtime import interactive

        return self._p.predict(items, batch_size=batch_size, tta=tta,
                               progress=interactive() and len(items) > batch_size)

    def probabilities(self, inputs, tta: bool | None = None) -> np.ndarray:
        """(N, C) probabilities in class_names order; an unreadable input raises UserError."""
        preds = self.predict(inputs, tta)
        bad = [p for p in preds if p.error]
        if bad:
            raise UserError(f"{bad[0].path}: {bad[0].error}")
        return np.array([[p.probabilities[c] for c in self.class_names] for p in preds])

    def evaluate(self, data: str | os.PathLike | None = None, labels: str = "folders",
                 tta: bool | None = None, moved_to: str | os.PathLike | None = None):
        """An EvalReport on a labelled folder, or on the run's own validation files (in
        its data folder, or at `moved_to` where that folder moved)."""
        from imgcls.infer.evaluate import evaluate_set, evaluation_set

        es = evaluation_set(self.source, self.class_names, data, labels,
                            moved_to=None if moved_to is None else os.fspath(moved_to),
                            meta=self._p.meta)
        return evaluate_set(self._p, es, tta)

    def export(self, path: str | os.PathLike, check_images: str | None = None):
        """Write an ONNX file (checked against PyTorch on real images first)."""
        from imgcls.infer.export import export_onnx

        if self.source.suffix.lower() == ".onnx":
            raise UserError(f"{self.source} is already an ONNX file")
        return export_onnx(self.source, path, check_dir=check_images)

    def __repr__(self) -> str:
        return f"Model({str(self.source)!r}, classes={self.class_names})"


def load(path: str | os.PathLike, device: str = "auto", amp: str = "auto") -> Model:
    """A run folder (its best checkpoint), a .safetensors checkpoint or an .onnx file."""
    from imgcls.infer.predictor import Predictor

    return Model(Predictor.from_checkpoint(path, device=device, amp=amp), Path(path))


def confusion_figure(report):
    """An EvalReport's confusion matrix as a matplotlib Figure."""
    from imgcls.viz.plots import confusion_figure as fig

    return _shown(fig(report.confusion_matrix, report.class_names))


def top_losses_figure(report):
    """The images an EvalReport's model got most wrong, as a matplotlib Figure."""
    from imgcls.viz.plots import top_losses_figure as fig

    return _shown(fig(report.top_losses, root=report.data))


def show_batch(data: str | os.PathLike, augment: bool = False, preset: str = "auto",
               output: str | os.PathLike | None = None, **settings: Any):
    """The first 9 photos of training epoch 0 (or 9 augmentations of the first) as `imgcls
    train DATA` with the same preset and settings would see them: its labels, split, pixel
    recipe, epoch order (several passes over a small folder included) and augmentation.
    A matplotlib Figure, also written to `output` (PNG) when given."""
    from imgcls.config import check_keys, check_types, resolve
    from imgcls.data.augment import AugmentConfig
    from imgcls.data.preprocess import PreprocessSpec
    from imgcls.train.plan import epoch_passes
    from imgcls.train.prepare import scan_and_split
    from imgcls.viz.show import augment_figure, first_training_images, samples_figure

    settings = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in settings.items()}
    check_types(check_keys(settings, "show_batch()"), "show_batch()")
    cfg = resolve(dict(settings, data_dir=os.fspath(data)), preset)
    index, _, sp = scan_and_split(cfg)
    spec = PreprocessSpec(cfg.image_size, cfg.image_size, resize=cfg.resize)
    items = first_training_images(index, sp.train, spec, cfg.seed, 1 if augment else 9,
                                  epoch_passes(cfg.epoch_images, len(sp.train.samples)))
    if not items:
        raise UserError(f"{data}: no training photo could be read")
    if augment:
        aug = AugmentConfig(cfg.flip, cfg.rotation, cfg.zoom, cfg.translate, cfg.brightness,
                            cfg.contrast)
        return _shown(augment_figure(items[0][0], aug, cfg.seed, output, items[0][1]))
    return _shown(samples_figure(items, output))
