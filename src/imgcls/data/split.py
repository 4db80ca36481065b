"""Seeded train/validation split of a DatasetIndex.

Owns the three ways to choose validation images:
- "stratified" (default): each class split in the same proportion, so a small class is
  never missing from validation;
- "keras": exactly the files `keras.utils.image_dataset_from_directory(..., validation_split,
  subset="both", seed)` puts in each subset, so results compare with the Keras tutorial;
- an explicit validation folder, scanned on its own (`split_with_val_dir`).

Byte-identical copies (scan's duplicate groups) always land on the same side, whole groups
at a time, so no validation photo is also a training photo.

Also owns the split *record*: when a run starts, the exact training and validation files
(relative path, label, size, content digest) go into the run folder (`split.json.gz`), and
resume and evaluate read that list back instead of recomputing a split from positions in
a folder that may have changed since (`restore_split`).
"""

from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgcls.data.index import DatasetIndex
from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_bytes, display
from imgcls.words import few

SPLIT_FILE = "split.json.gz"
RECORD_VERSION = 1
DIGEST_CHARS = 16  # 64 bits of the content digest: enough to notice a changed file

SPLIT_METHODS = ("stratified", "keras")


@dataclass
class Split:
    train: DatasetIndex
    val: DatasetIndex
    method: str
    seed: int
    val_fraction: float
    groups_kept_together: int = 0  # groups of byte-identical files, each kept on one side
    notes: list[str] = field(default_factory=list)  # warnings for the user (leaks, drift)

    def summary_lines(self) -> list[str]:
        lines = [f"Using {len(self.train.samples)} files for training.",
                 f"Using {len(self.val.samples)} files for validation."]
        if self.groups_kept_together:
            n = self.groups_kept_together
            lines.append(f"Kept {n} group{'s' if n != 1 else ''} of byte-identical files on one "
                         "side of the split (`imgcls scan` lists them).")
        return lines


def split_index(index: DatasetIndex, val_fraction: float = 0.2, seed: int = 1337,
                method: str = "stratified") -> Split:
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {val_fraction}")
    groups = duplicate_groups(index)
    if method == "stratified":
        train_pos, val_pos = _stratified(index.labels, groups, val_fraction, seed)
    elif method == "keras":
        train_pos, val_pos = _keras(index, groups, val_fraction, seed)
    else:
        raise UserError(f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}")
    if not train_pos or not val_pos:
        raise UserError(f"{len(index.samples)} images are too few to split with --val-split "
                        f"{val_fraction}: one subset would be empty")
    return Split(index.subset(train_pos), index.subset(val_pos), method, seed, val_fraction,
                 sum(1 for g in groups if len(g) > 1))


def duplicate_groups(index: DatasetIndex) -> list[list[int]]:
    """Positions of index.samples grouped by content (singletons included), in order."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    groups: list[list[int]] = []
    for i, s in enumerate(index.samples):
        if not s.digest:
            groups.append([i])
            continue
        g = by_digest[s.digest]
        if not g:
            groups.append(g)
        g.append(i)
    return groups


def _stratified(labels: list[int], groups: list[list[int]], val_fraction: float,
                seed: int) -> tuple[list[int], list[int]]:
    """Per class (of a group's first file), shuffle the groups and fill validation with
    whole groups up to the class's share. Without duplicates this is a plain per-class
    shuffle (Generator.permutation(n) draws what Generator.shuffle would)."""
    rng = np.random.default_rng(seed)
    units: dict[int, list[list[int]]] = defaultdict(list)
    for g in groups:
        units[labels[g[0]]].append(g)
    train, val = [], []
    for c in sorted(units):
        cls_units = units[c]
        n = sum(len(u) for u in cls_units)
        # Round to nearest, but keep one image on each side when the class has two or more.
        n_val = int(round(val_fraction * n))
        if n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        taken = 0
        for k in rng.permutation(len(cls_units)):
            u = cls_units[k]
            if taken < n_val and (taken + len(u) <= n_val or taken == 0 and len(u) < n):
                val.extend(u)
                taken += len(u)
            else:
                train.extend(u)
    return sorted(train), sorted(val)


def keras_order(index: DatasetIndex) -> list[int]:
    """Positions of index.samples in the order Keras's index_directory lists files.

    Keras walks each class folder with sorted(os.walk(class_dir), key=dirpath) and sorted file
    names per folder, classes in sorted order; comparing (folder, file name) reproduces it.
    """
    def key(i: int):
        s = index.samples[i]
        folder, name = os.path.split(s.path)
        return (s.label, folder, name)

    return sorted(range(len(index.samples)), key=key)


def _keras(index: DatasetIndex, groups: list[list[int]], val_fraction: float,
           seed: int) -> tuple[list[int], list[int]]:
    order = np.asarray(keras_order(index))
    # Keras shuffles paths and labels with two RandomState(seed) generators, i.e. by one
    # permutation that depends only on the length; then the *last* int(f * n) are validation.
    np.random.RandomState(seed).shuffle(order)
    n_val = int(val_fraction * len(order))
    if n_val == 0:
        return order.tolist(), []
    train, val = order[:-n_val].tolist(), set(order[-n_val:].tolist())
    # Keras's files exactly, except copies of a training photo: those train too (a
    # validation photo that is also a training photo measures memory, not accuracy).
    for g in groups:
        if len(g) > 1 and any(i in val for i in g) and not all(i in val for i in g):
            for i in g:
                if i in val:
                    val.discard(i)
                    train.append(i)
    return train, [i for i in order[-n_val:].tolist() if i in val]


def split_with_val_dir(train: DatasetIndex, val: DatasetIndex) -> Split:
    """Use a separately scanned validation folder; its classes must match the training ones."""
    if val.class_names != train.class_names:
        raise UserError(f"validation folder {display(val.root)} has classes "
                        f"{val.class_names}, the training folder {display(train.root)} has "
                        f"{train.class_names}; they must be the same")
    # The same photo in both folders would be validated on what it trained on: leave the
    # validation copies out, and say so.
    seen = {s.digest for s in train.samples if s.digest}
    keep = [i for i, s in enumerate(val.samples) if not s.digest or s.digest not in seen]
    notes = []
    if len(keep) < len(val.samples):
        leaked = [s.path for s in val.samples if s.digest in seen]
        notes.append(f"{len(leaked)} validation file(s) are byte-identical to training files and "
                     f"are left out of validation: {_examples(leaked)}")
        val = val.subset(keep)
    if not val.samples:
        raise UserError(f"every file in {display(val.root)} is also in the training folder")
    return Split(train, val, "val-dir", 0, len(val.samples) / (len(train.samples) + len(val.samples)),
                 notes=notes)


def _examples(paths: list[str], n: int = 3) -> str:
    return few([display(p) for p in paths], n)


# ----------------------------------------------------------------------------- the record


def _rows(index: DatasetIndex) -> list[list]:
    return [[s.path, index.class_names[s.label], s.size, s.digest[:DIGEST_CHARS]]
            for s in index.samples]


def write_record(run_dir: str | os.PathLike, sp: Split) -> Path:
    """Write the run's exact training and validation files into run_dir/split.json.gz.

    One row per file: [relative path, class name, bytes, 64-bit content digest]; gzip keeps
    it near 30 bytes a photo (about 30 MB for a million).
    """
    doc = {"version": RECORD_VERSION, "method": sp.method, "seed": sp.seed,
           "val_fraction": sp.val_fraction, "groups_kept_together": sp.groups_kept_together,
           "class_names": sp.train.class_names, "train_root": sp.train.root,
           "val_root": sp.val.root, "columns": ["path", "class", "bytes", "digest"],
           "train": _rows(sp.train), "val": _rows(sp.val)}
    path = Path(run_dir) / SPLIT_FILE
    atomic_write_bytes(path, gzip.compress(json.dumps(doc, separators=(",", ":")).encode(),
                                           compresslevel=6, mtime=0))
    return path


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The run's split record, or None for a run made before records existed."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
        if doc.get("version") != RECORD_VERSION:
            raise ValueError(f"version {doc.get('version')}")
        return doc
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{display(path)}: the run's record of its files is damaged ({exc})") from None


@dataclass
class Drift:
    """Recorded files that are no longer what the run trained or validated on."""
    vanished: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # other bytes, or another class
    added: int = 0  # files in the folder now that the record does not list

    def warning(self, what: str) -> str | None:
        bad = [f"{display(p)} (vanished)" for p in self.vanished] + \
              [f"{display(p)} (changed)" for p in self.changed]
        if not bad:
            return None
        return (f"{len(bad)} of the run's {what} files vanished or changed since the run "
                f"started and are left out: {few(bad, 5)}")


def _pinned(index: DatasetIndex, rows: list[list]) -> tuple[list[int], Drift]:
    where = {s.path: i for i, s in enumerate(index.samples)}
    keep, drift = [], Drift()
    for path, cls, size, digest in rows:
        i = where.get(path)
        if i is None:
            drift.vanished.append(path)
            continue
        s = index.samples[i]
        if s.size != size or s.digest[:DIGEST_CHARS] != digest or index.class_names[s.label] != cls:
            drift.changed.append(path)
            continue
        keep.append(i)
    return keep, drift


def restore_split(record: dict, index: DatasetIndex, val_index: DatasetIndex | None = None
                  ) -> tuple[Split, list[str]]:
    """The recorded split over today's scan: recorded files still present and unchanged,
    nothing added since. Returns (split, warnings naming what vanished or changed)."""
    if index.class_names != record["class_names"]:
        raise UserError(f"{display(index.root)} now has classes {index.class_names}; the run "
                        f"was started with {record['class_names']}")
    train_pos, train_drift = _pinned(index, record["train"])
    vindex = val_index if val_index is not None else index
    val_pos, val_drift = _pinned(vindex, record["val"])
    recorded = {r[0] for r in record["train"]} | ({r[0] for r in record["val"]}
                                                   if val_index is None else set())
    train_drift.added = sum(1 for s in index.samples if s.path not in recorded)
    warnings = [w for w in (train_drift.warning("training"), val_drift.warning("validation")) if w]
    if train_drift.added:
        warnings.append(f"{train_drift.added} file(s) added to {display(index.root)} since the "
                        "run started are not part of this run")
    if not train_pos or not val_pos:
        raise UserError(f"none of the run's {'training' if not train_pos else 'validation'} "
                        f"files are left unchanged in {display(vindex.root if train_pos else index.root)}")
    sp = Split(index.subset(train_pos), vindex.subset(val_pos), record["method"], record["seed"],
               record["val_fraction"], record.get("groups_kept_together", 0))
    return sp, warnings
