"""Checkpoint + labelled images -> EvalReport: loss, accuracy, per-class scores, confusion
matrix, ROC AUC (two classes) and the top losses.

Owns the metrics. Predictions come from predict.Predictor, so evaluation sees exactly what a
user's `imgcls predict` would. The few metrics are computed here with NumPy (no scikit-learn
for a confusion matrix and a rank-based AUC).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.infer.predictor import Predictor

logger = logging.getLogger(__name__)

@dataclass
class EvalReport:
    accuracy: float
    loss: float  # mean cross-entropy (natural log)
    class_names: list[str]
    per_class: dict[str, dict]  # name -> precision, recall, f1, support
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted
    roc_auc: float | None  # two classes: AUC of P(second class); None otherwise
    images: int
    failed: list[dict] = field(default_factory=list)  # files that could not be read
    top_losses: list[dict] = field(default_factory=list)  # path, true, predicted, p_true, loss
    data: str = ""
    tta: bool = False
    rejected: int = 0  # files in the folder the scan rejected: not in `images`
    # Photos of the folder that the run trained on (by content digest): left out of the
    # scores above, and scored apart here (how well it fits them, not how it generalises).
    in_training: int = 0
    training_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def confusion(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_scores(cm: np.ndarray, names: list[str]) -> dict[str, dict]:
    out = {}
    for i, name in enumerate(names):
        tp = int(cm[i, i])
        support, predicted = int(cm[i].sum()), int(cm[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return None
    # 1-based ranks, tied scores sharing their average rank (Mann-Whitney U).
    _, inv, counts = np.unique(np.concatenate([neg, pos]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inv]
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def evaluate(predictor: Predictor, items: list[tuple[str, int]], names: list[str] | None = None,
             tta: bool | None = None, batch_size: int = 32, top_k_losses: int = 9,
             progress: bool | None = False) -> EvalReport:
    """items: (file path, label index in predictor.class_names); tta None: the recipe's."""
    tta = predictor.resolve_tta(tta)
    preds = predictor.predict([p for p, _ in items], batch_size=batch_size, tta=tta,
                              names=names, progress=progress)
    classes = predictor.class_names
    ok = [i for i, p in enumerate(preds) if p.error is None]
    failed = [{"path": preds[i].path, "reason": preds[i].error} for i in range(len(preds))
              if preds[i].error is not None]
    if not ok:
        raise UserError("no image could be evaluated" + (f" ({failed[0]['path']}: "
                                                         f"{failed[0]['reason']})" if failed else ""))
    labels = np.array([items[i][1] for i in ok])
    probs = np.array([[preds[i].probabilities[c] for c in classes] for i in ok])
    predicted = probs.argmax(1)
    p_true = np.clip(probs[np.arange(len(ok)), labels], 1e-12, 1.0)
    losses = -np.log(p_true)
    cm = confusion(labels, predicted, len(classes))
    worst = np.argsort(-losses, kind="stable")[:top_k_losses]
    top = [{"path": preds[ok[i]].path, "true": classes[labels[i]],
            "predicted": classes[predicted[i]], "p_true": float(p_true[i]),
            "p_predicted": float(probs[i, predicted[i]]), "loss": float(losses[i])} for i in worst]
    return EvalReport(
        accuracy=float((predicted == labels).mean()), loss=float(losses.mean()),
        class_names=classes, per_class=per_class_scores(cm, classes),
        confusion_matrix=cm.tolist(),
        roc_auc=roc_auc(labels, probs[:, 1]) if len(classes) == 2 else None,
        images=len(ok), failed=failed, top_losses=top, tta=tta)


def format_report(r: EvalReport) -> str:
    w = max(12, max(len(c) for c in r.class_names) + 2)
    lines = [f"Evaluated {r.images} images" + (f" from {display(r.data)}" if r.data else "")
             + (" (with flip TTA)" if r.tta else ""),
             f"accuracy {r.accuracy:.4f}   loss {r.loss:.4f}"
             + (f"   ROC AUC {r.roc_auc:.4f}" if r.roc_auc is not None else ""), "",
             f"{'class':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, s in r.per_class.items():
        lines.append(f"{display(name):<{w}}{s['precision']:>10.4f}{s['recall']:>10.4f}"
                     f"{s['f1']:>10.4f}{s['support']:>10d}")
    lines += ["", "confusion matrix (rows = true, columns = predicted):",
              " " * w + "".join(f"{display(c)[:9]:>10}" for c in r.class_names)]
    for name, row in zip(r.class_names, r.confusion_matrix):
        lines.append(f"{display(name):<{w}}" + "".join(f"{v:>10d}" for v in row))
    if r.failed:
        lines.append(f"\n{len(r.failed)} files could not be read (see stderr)")
    if r.rejected:
        lines.append(f"{r.rejected} file{'s' if r.rejected != 1 else ''} the scan rejected "
                     f"{'are' if r.rejected != 1 else 'is'} not counted (`imgcls scan` lists them)")
    if r.in_training:
        lines.append(f"{r.in_training} more photo{'s' if r.in_training != 1 else ''} of this "
                     "folder were in the run's training set: left out of the scores above"
                     + (f" (accuracy on them {r.training_accuracy:.4f}: how well the model "
                        "fits its training photos, not how it does on new ones)"
                        if r.training_accuracy is not None else ""))
    return "\n".join(lines)


def run_validation_items(run_dir: Path, class_names: list[str], moved_to: str | None = None
                         ) -> tuple[list[tuple[str, int]], list[str], str]:
    """The run's own validation images: the files its record lists (split.json.gz), minus
    those that vanished or changed since (named in a warning); never files added later.
    Runs made before records existed get their split recomputed from the config.
    moved_to: where the run's data folder is now (the record's digests decide)."""

    from imgcls.data.scan import ScanOptions, scan
    from imgcls.data.split import read_record, restore_split, split_index

    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{display(run_dir)}: no config.json; give a DATA_DIR to evaluate on") from None
    if moved_to is not None:
        if not Path(moved_to).is_dir():
            raise UserError(f"{display(moved_to)}: no such folder")
        cfg["data_dir"] = str(Path(moved_to).expanduser().resolve())
    elif not Path(cfg["data_dir"]).is_dir():
        raise UserError(f"{display(cfg['data_dir'])}: the data folder {display(run_dir)} trained "
                        "on is gone; say where it is now with --data DIR, or give a DATA_DIR")
    labels = cfg.get("labels", "folders")
    opts = ScanOptions(max_pixels=cfg["max_pixels"], cache_dir=cfg.get("cache_dir"), labels=labels)
    record = read_record(run_dir)
    index = scan(cfg["data_dir"], opts)
    from dataclasses import replace

    from imgcls.data.labels import val_dir_labels

    val_opts = replace(opts, labels=val_dir_labels(labels))
    val_index = scan(cfg["val_dir"], val_opts) if cfg.get("val_dir") else None
    if record is not None:
        sp, warnings = restore_split(record, index, val_index)
        for w in warnings:
            if "validation" in w:
                logger.warning(w)
        val = sp.val
    elif val_index is not None:
        val = val_index
    else:
        logger.warning("this run has no record of its files (made by an older imgcls): "
                       "its validation split is recomputed from the folder as it is now")
        val = split_index(index, cfg["val_split"], cfg["seed"], cfg["split"]).val
    items, names = items_for(val, class_names)
    return items, names, val.root


@dataclass
class EvalSet:
    """What `evaluate` scores: (path, label) items and their display names, the folder, and
    what was set apart: training photos of the run (by content) and the scan's rejects."""
    items: list[tuple[str, int]]
    names: list[str]
    root: str
    training_items: list[tuple[str, int]] = field(default_factory=list)
    training_names: list[str] = field(default_factory=list)
    rejected: int = 0
    all_training: bool = False  # every photo was a training photo: scored anyway, said so
    run: Path | None = None  # the run that trained the model; None where it was not found


def find_run(model_path: Path, meta: dict) -> Path | None:
    """THE rule for which run a model file belongs to: the run folder given; the folder of
    its file (best, last); the run above `checkpoints/` (an epoch file); else the run its
    metadata records (a copy elsewhere: the checkpoint's `run`, an ONNX file's `source`),
    where that folder still holds a run of the same data. None where none is found."""
    model_path = Path(model_path)
    recorded = [meta.get("run"), meta.get("source")]
    here = model_path if model_path.is_dir() else model_path.parent
    candidates = [here, here.parent if here.name == "checkpoints" else None]
    for rec in filter(None, recorded):
        rec = Path(rec)
        folder = rec if rec.is_dir() else rec.parent
        candidates += [folder, folder.parent if folder.name == "checkpoints" else None]
    for c in filter(None, candidates):
        if _is_run_of(c, meta):
            return c
    return None


def _is_run_of(folder: Path, meta: dict) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    want = meta.get("config", {}).get("data_dir")
    return isinstance(cfg, dict) and (want is None or cfg.get("data_dir") == want)


def evaluation_set(model_path: Path, class_names: list[str], data_dir=None,
                   labels: str | None = None, cache_dir: str | None = None,
                   moved_to: str | None = None, meta: dict | None = None) -> EvalSet:
    """The one rule for what an evaluation scores: the run's own validation files (its data
    folder at `moved_to` if it moved), or a folder's photos minus those the run trained on
    (its split record's digests). The run is found by find_run."""
    from imgcls.data.scan import ScanOptions, scan
    from imgcls.data.split import DIGEST_CHARS, read_record

    run_dir = find_run(Path(model_path), meta or {})
    if data_dir is None:
        if run_dir is None:
            raise UserError(f"{display(model_path)}: the run that trained this model was not "
                            "found (the model is outside its run folder, and no run it "
                            "records is left); give a DATA_DIR to evaluate on")
        items, names, root = run_validation_items(run_dir, class_names, moved_to)
        return EvalSet(items, names, root, run=run_dir)
    index = scan(data_dir, ScanOptions(cache_dir=cache_dir, min_classes=1,
                                       labels=labels or "folders"))
    items, names = items_for(index, class_names)
    out = EvalSet(items, names, index.root, rejected=len(index.rejected), run=run_dir)
    record = read_record(run_dir) if run_dir is not None else None
    if record is None:
        return out
    trained = {row[3] for row in record["train"]}
    seen = [s.digest[:DIGEST_CHARS] in trained for s in index.samples]
    if not any(seen):
        return out
    if all(seen):
        out.all_training = True
        return out
    keep = [i for i, s in enumerate(seen) if not s]
    held = [i for i, s in enumerate(seen) if s]
    out.items, out.names = [items[i] for i in keep], [names[i] for i in keep]
    out.training_items, out.training_names = [items[i] for i in held], [names[i] for i in held]
    return out


def evaluate_set(predictor: Predictor, es: EvalSet, tta: bool | None, batch_size: int = 32,
                 progress: bool | None = False) -> EvalReport:
    """evaluate() over an EvalSet, with what was set apart counted in the report."""
    # Logged, not warnings.warn: a warning is shown once per place in a process, and every
    # evaluation must say this (the library's notes go through logging: ARCHITECTURE.md).
    if es.run is None:
        logger.warning(f"the run that trained this model was not found (the model is outside "
                       f"its run folder): photos of {display(es.root)} it trained on cannot be "
                       "told apart, so these scores may count them")
    if es.all_training:
        logger.warning(f"every photo in {display(es.root)} was in the run's training set: the "
                       "scores say how well the model fits its training photos, not how it "
                       "does on new ones")
    report = evaluate(predictor, es.items, es.names, tta=tta, batch_size=batch_size,
                      progress=progress)
    report.data, report.rejected = es.root, es.rejected
    if es.training_items:
        seen = evaluate(predictor, es.training_items, es.training_names, tta=tta,
                        batch_size=batch_size)
        report.in_training, report.training_accuracy = len(es.training_items), seen.accuracy
    return report


def items_for(index, class_names: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Map an index's samples onto the model's classes by folder name."""
    unknown = [c for c in index.class_names if c not in class_names]
    if unknown:
        raise UserError(f"{display(index.root)} has class folder(s) the model does not know: "
                        f"{', '.join(map(display, unknown))} (model classes: "
                        f"{', '.join(map(display, class_names))})")
    where = {c: class_names.index(c) for c in index.class_names}
    items = [(index.abspath(s), where[index.class_names[s.label]]) for s in index.samples]
    return items, [s.path for s in index.samples]


def figures(report: EvalReport, out_dir: Path, metrics_file: Path | None = None) -> list[Path]:
    from imgcls.viz.plots import confusion_figure, curves_figure, top_losses_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "confusion_matrix.png", out_dir / "top_losses.png"]
    confusion_figure(report.confusion_matrix, report.class_names, written[0])
    top_losses_figure(report.top_losses, written[1], report.data)
    if metrics_file is not None and metrics_file.exists():
        curves_figure(metrics_file, out_dir / "curves.png")
        written.append(out_dir / "curves.png")
    return written


def default_out_dir(model_path: Path, run: Path | None) -> Path:
    """Figures go to the model's run folder; a model outside any run, beside its file."""
    if run is not None:
        return run
    return model_path if model_path.is_dir() else model_path.parent
