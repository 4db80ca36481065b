"""A run's data: scan, split (or the run's recorded split on resume), caches.

Owns what a run trains and validates on and what it says about it first: the scan's report
(broken files, label problems, classes that differ only in case, classes too small for a
validation split), a --max-per-class sample, and the data summary in data.json. Rank 0
builds the caches; the other ranks wait and open them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from imgcls.config import TrainConfig
from imgcls.data.cache import ImageCache, build_cache
from imgcls.data.index import DatasetIndex
from imgcls.data.labels import describe, val_dir_labels
from imgcls.data.preprocess import PreprocessSpec
from imgcls.data.scan import ScanOptions, report_dict, scan
from imgcls.data.split import Split, read_record, restore_split, split_index, split_with_val_dir
from imgcls.fsutil import display
from imgcls.train import distributed as D


@dataclass
class TrainData:
    index: DatasetIndex
    split: Split
    spec: PreprocessSpec
    cache: ImageCache
    val_cache: ImageCache
    train_rows: np.ndarray
    val_rows: np.ndarray
    warnings: list[str] = field(default_factory=list)
    pinned: bool = False  # the split came from the run's record


def prepare_data(cfg: TrainConfig, world: D.World, run: Path | None = None,
                 resume: bool = False, spec: PreprocessSpec | None = None) -> TrainData:
    """Scan, split and cache (rank 0 builds the caches, the others wait and reuse them).

    On resume the split is the run's record (split.json.gz): the files it trained and
    validated on, minus those that vanished or changed; files added since are not used.
    """
    opts = ScanOptions(max_pixels=cfg.max_pixels, cache_dir=cfg.cache_dir,
                       progress=None if world.main else False, labels=cfg.labels)
    # A validation folder has class folders, or the same file-name rule; a CSV is the data's.
    val_opts = replace(opts, labels=val_dir_labels(cfg.labels))
    # A resumed run keeps the preprocessing it was trained with (an older version included).
    spec = spec or PreprocessSpec(cfg.image_size, cfg.image_size, resize=cfg.resize)
    record = read_record(run) if resume and run is not None else None

    def work() -> TrainData:
        if record is not None:
            index = scan(cfg.data_dir, opts)
            val_index = scan(cfg.val_dir, val_opts) if cfg.val_dir else None
            sp, warnings = restore_split(record, index, val_index)
            # Decode only the recorded files: a --max-per-class sample stays a sample
            # (and its cache is the one reused), whatever the folder holds now.
            index = _only(index, sp.train.samples + ([] if val_index else sp.val.samples))
            val_index = val_index and _only(val_index, sp.val.samples)
        else:
            index, val_index, sp = scan_and_split(cfg, opts)
            warnings = list(sp.notes)
            if resume:
                warnings.append("this run has no record of its files (made by an older "
                                "imgcls): its split is recomputed from the folder as it is now")
        progress = None if world.main else False
        kw = dict(max_pixels=cfg.max_pixels, progress=progress, build=world.main)
        cache = build_cache(index, spec, cfg.cache_dir, **kw)
        val_cache = build_cache(val_index, spec, cfg.cache_dir, **kw) if val_index else cache
        return TrainData(index, sp, spec, cache, val_cache,
                         cache.rows_for([s.path for s in sp.train.samples]),
                         val_cache.rows_for([s.path for s in sp.val.samples]),
                         warnings, record is not None)

    return D.main_first(world, work)


def scan_and_split(cfg: TrainConfig, opts: ScanOptions | None = None
                   ) -> tuple[DatasetIndex, DatasetIndex | None, Split]:
    """THE photos a fresh run trains and validates on: the scan (and the validation
    folder's), a --max-per-class sample, and the split. `imgcls show` draws from the same."""
    opts = opts or ScanOptions(max_pixels=cfg.max_pixels, cache_dir=cfg.cache_dir,
                               labels=cfg.labels)
    index = scan(cfg.data_dir, opts)
    val_index = (scan(cfg.val_dir, replace(opts, labels=val_dir_labels(cfg.labels)))
                 if cfg.val_dir else None)
    if cfg.max_per_class:
        index = sample_per_class(index, cfg.max_per_class, cfg.seed)
        val_index = val_index and sample_per_class(val_index, cfg.max_per_class, cfg.seed)
    sp = (split_with_val_dir(index, val_index) if val_index else
          split_index(index, cfg.val_split, cfg.seed, cfg.split))
    return index, val_index, sp


def _only(index: DatasetIndex, samples) -> DatasetIndex:
    """index restricted to these samples (in the index's order), its report kept."""
    wanted = {s.path for s in samples}
    sub = index.subset([i for i, s in enumerate(index.samples) if s.path in wanted])
    _keep_report(sub, index)
    return sub


def _keep_report(sub: DatasetIndex, index: DatasetIndex) -> None:
    sub.rejected, sub.ignored = index.rejected, index.ignored
    sub.duplicates, sub.label_conflicts = index.duplicates, index.label_conflicts
    sub.label_source, sub.label_problems = index.label_source, index.label_problems


def sample_per_class(index: DatasetIndex, n: int, seed: int) -> DatasetIndex:
    """At most n photos of each class, drawn with the seed (the same sample every time)."""
    rng = np.random.default_rng([seed, 7])
    labels = np.asarray(index.labels)
    keep: list[int] = []
    for c in range(len(index.class_names)):
        pos = np.flatnonzero(labels == c)
        keep += sorted(rng.permutation(pos)[:n].tolist()) if len(pos) > n else pos.tolist()
    sub = index.subset(sorted(keep))
    _keep_report(sub, index)
    return sub


def data_summary(data: TrainData) -> dict:
    sp = data.split
    return {"scan": report_dict(data.index), "split": sp.method, "pinned": data.pinned,
            "train_images": len(data.train_rows), "val_images": len(data.val_rows),
            "groups_kept_together": sp.groups_kept_together,
            "train_fingerprint": sp.train.fingerprint, "val_fingerprint": sp.val.fingerprint,
            "cache": str(data.cache.folder), "warnings": data.warnings,
            "dropped": [d.__dict__ for d in data.cache.dropped]}


CONFLICT_REASON = "listed with two different labels"


def scan_lines(index: DatasetIndex, cfg: TrainConfig) -> list[str]:
    """What the scan left out or found doubtful, as `imgcls scan` reports it (counts and
    examples), so a user never trains past it unaware."""

    parts = []
    broken = [n for n in index.rejected if not n.reason.startswith(CONFLICT_REASON)]
    listed_twice = len(index.rejected) - len(broken)
    if broken:
        parts.append(f"{len(broken)} broken file{'s' if len(broken) != 1 else ''} left out")
    if listed_twice:
        parts.append(f"{listed_twice} file(s) {CONFLICT_REASON} left out")
    if index.label_conflicts:
        parts.append(f"{len(index.label_conflicts)} group(s) of identical files under different classes")
    lines = [f"imgcls: note: {'; '.join(parts)} (`imgcls scan {display(index.root)}` lists them)"] \
        if parts else []
    if index.label_source != "folders":
        lines += [f"imgcls: warning: labels from {display(index.label_source)}: {line}"
                  for line in describe(index.label_problems)]
    by_lower: dict[str, list[str]] = {}
    for name in index.class_names:
        by_lower.setdefault(name.lower(), []).append(name)
    lines += [f"imgcls: warning: classes {' and '.join(map(repr, names))} differ only in case: "
              "two classes, as given" for names in by_lower.values() if len(names) > 1]
    if not cfg.val_dir:
        need = math.ceil(1 / cfg.val_split) if cfg.val_split > 0 else 1
        small = [f"{display(c)} ({n})" for c, n in index.per_class().items() if n < need]
        if small:
            lines.append(f"imgcls: warning: class{'es' if len(small) > 1 else ''} "
                         f"{', '.join(small)} ha{'ve' if len(small) > 1 else 's'} fewer than the "
                         f"{need} photos a {cfg.val_split:g} validation split needs to hold one "
                         "back: validation cannot judge it")
    return lines
