"""Folder of photos -> DatasetIndex: find, verify by really decoding, report; never modify.

Owns: the class-per-folder layout rules, what counts as an image (by content, not by
extension), the reasons a file is rejected or ignored, duplicate detection, and the per-file
scan cache that makes a second scan of an unchanged folder nearly free. Moving rejected files
out of the way is `quarantine.py`'s job; this module only reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from imgcls.data import labels as L
from imgcls.data.files import (
    inside,
    might_be_image,
    os_reason,
    skipped_name,
    walk,
)
from imgcls.data.index import DatasetIndex, FileNote, Sample, compute_fingerprint
from imgcls.data.preprocess import DEFAULT_MAX_PIXELS, EMPTY
from imgcls.errors import UserError, require_whole
from imgcls.fsutil import atomic_write_json, display, is_within
from imgcls.runtime import thread_map
from imgcls.words import first_line

logger = logging.getLogger(__name__)

SCAN_CACHE_VERSION = 1
DEFAULT_MIN_SIDE = 4  # px; narrower images are degenerate (lines, 1x1 tracking pixels)


class EmptyClassError(UserError):
    """A class folder without a usable image; carries the scan so it can still be reported."""

    def __init__(self, index: "DatasetIndex", message: str):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class ScanOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS  # width*height above which a file is not decoded
    min_side: int = DEFAULT_MIN_SIDE  # px; smaller width or height is rejected as degenerate
    workers: int = 0  # threads; 0 = all cores
    cache_dir: str | None = None  # None = user cache dir (see default_cache_dir)
    use_cache: bool = True
    progress: bool | None = None  # None = only when stderr is a terminal
    min_classes: int = 2  # a training folder needs two; evaluating on a subset needs one
    labels: str = "folders"  # "folders", "name:REGEX" or "csv:FILE[:PATHCOL,LABELCOL]" (labels.py)

    def __post_init__(self):
        for name, low in (("max_pixels", 0), ("min_side", 1), ("workers", 0), ("min_classes", 1)):
            require_whole(name, getattr(self, name), low)


def default_cache_dir() -> Path:
    """$IMGCLS_CACHE_DIR, else the platform's user cache folder (~/.cache/imgcls on Linux)."""
    env = os.environ.get("IMGCLS_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("imgcls"))


# ----------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class _Candidate:
    rel: str
    label: int
    size: int
    mtime_ns: int
    ctime_ns: int
    image_name: bool  # has an image extension


def _list_files(root: Path) -> tuple[list[str], list[_Candidate], list[FileNote], list[FileNote]]:
    """Class folders (the root's sub-folders), then every file below them, walked by
    files.walk's one link policy. Returns (class_names, candidates, rejected, ignored).
    Candidates still need decoding."""
    class_names: list[str] = []
    ignored: list[FileNote] = []
    with os.scandir(root) as it:
        top = sorted(it, key=lambda e: e.name)
    for e in top:
        why = skipped_name(e.name)
        if why:
            ignored.append(FileNote(e.name, why))
        elif _entry_is_dir(e):
            class_names.append(e.name)
        else:
            ignored.append(FileNote(e.name, "not in a class folder"))
    class_names, link_notes = _drop_linked_classes(root, class_names)
    ignored += link_notes
    got = walk(root, class_names)
    cands = [_Candidate(f.rel, f.scope, f.size, f.mtime_ns, f.ctime_ns, f.image_name)
             for f in got.files]
    return (class_names, cands, [FileNote(n.rel, n.reason) for n in got.rejected],
            ignored + [FileNote(n.rel, n.reason) for n in got.ignored])


def _drop_linked_classes(root: Path, class_names: list[str]) -> tuple[list[str], list[FileNote]]:
    """Class folders that are links to (or into) another class folder, or to the data
    folder, are not classes: the same photos would carry two labels."""
    real_root = str(root)
    real = {c: os.path.realpath(root / c) for c in class_names}
    keep, notes = [], []
    for c in class_names:
        if inside(real_root, real[c]):
            notes.append(FileNote(c, "folder link to the data folder or above it: not a class"))
            continue
        # A link that reaches another class's folder loses to the real folder; if both are
        # links to the same place, the first by name keeps it.
        owner = next((o for o in class_names if o != c and inside(real[c], real[o])
                      and (not os.path.islink(root / o) or o < c or not inside(real[o], real[c]))),
                     None)
        if owner is not None and os.path.islink(root / c):
            notes.append(FileNote(c, f"folder link into class folder {display(owner)}: not a "
                                     "class (its photos would carry two labels)"))
            continue
        keep.append(c)
    return keep, notes


def _list_labelled(root: Path, spec) -> tuple:
    """Like _list_files, with labels from file names or a CSV (labels.py)."""
    got = (L.from_names if spec.kind == "name" else L.from_csv)(root, spec)
    cands = [_Candidate(rel, label, f.size, f.mtime_ns, f.ctime_ns, f.image_name)
             for rel, label, f in got.files]
    return (got.class_names, cands, [FileNote(p, r) for p, r in got.rejected],
            [FileNote(p, r) for p, r in got.ignored], got.problems)


def _entry_is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir(follow_symlinks=True)
    except OSError:
        return False


# ----------------------------------------------------------------------------- checking

# (status, reason, digest, width, height): status is "ok", "rejected" or "ignored".
CheckResult = tuple


def check_file(path: str, image_name: bool, max_pixels: int, min_side: int) -> CheckResult:
    """Decide whether one file is a usable still image by decoding all of it.

    Runs on worker threads (Pillow and hashlib release the GIL). The file is read once: the
    same bytes are hashed (for duplicates) and decoded.
    """
    from PIL import Image, UnidentifiedImageError

    bad = "rejected" if image_name else "ignored"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if not head:
                return (bad, EMPTY, "", 0, 0)
            if not image_name and not might_be_image(f):
                return ("ignored", "not an image", "", 0, 0)
            f.seek(0)
            data = f.read()
    except OSError as exc:
        return (bad, f"unreadable: {os_reason(exc, path)}", "", 0, 0)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we apply our own limit
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if max_pixels and w * h > max_pixels:  # 0 = no limit of ours
                    return ("rejected", f"too large to decode safely: {w}x{h} = "
                            f"{w * h / 1e6:.1f} MP is over the limit of {max_pixels / 1e6:.1f} MP "
                            "(decompression bomb guard, --max-pixels)", digest, w, h)
                if min(w, h) < min_side:
                    return ("rejected", f"degenerate image: {w}x{h} px "
                            f"(smaller than --min-side {min_side})", digest, w, h)
                if im.format == "JPEG":
                    # Decode at 1/8 scale: the whole entropy-coded stream is still read, so
                    # truncation and corrupt markers are caught, at a fraction of the cost.
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
    except Image.DecompressionBombError as exc:
        return ("rejected", f"too large to decode safely: {exc}", digest, 0, 0)
    except UnidentifiedImageError:
        return (bad, _not_an_image_reason(data), digest, 0, 0)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
            ZeroDivisionError, MemoryError, TypeError, KeyError) as exc:
        # Pillow signals corrupt data with a variety of exception types.
        return (bad, f"truncated or corrupt: {first_line(exc)}", digest, 0, 0)
    return ("ok", "", digest, w, h)


def _not_an_image_reason(data: bytes) -> str:
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc", b"ftypavif"):
        return "not decodable: HEIC/HEIF/AVIF image (Pillow needs a plug-in such as pillow-heif)"
    if data.lstrip()[:5].lower() in (b"<?xml", b"<svg ", b"<svg>"):
        return "not an image: SVG (vector) file"
    return "not an image"


def _run_checks(root: Path, todo: list[_Candidate], opts: ScanOptions) -> list[CheckResult]:
    """Check files on a thread pool; results come back in `todo` order."""
    return thread_map(lambda c: check_file(str(root / c.rel), c.image_name, opts.max_pixels,
                                           opts.min_side),
                      todo, opts.workers, desc="scan", unit="file", progress=opts.progress)


# ----------------------------------------------------------------------------- cache


def _scan_cache_file(cache_dir: Path, root: Path) -> Path:
    key = hashlib.sha256(os.fsencode(str(root))).hexdigest()[:20]
    return cache_dir / "scans" / f"{key}.json"


def _settings_key(opts: ScanOptions) -> str:
    return f"v{SCAN_CACHE_VERSION}:max_pixels={opts.max_pixels}:min_side={opts.min_side}"


def _load_scan_cache(path: Path, root: Path, settings: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("root") == str(root) and d.get("settings") == settings:
            return d["files"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a missing or damaged cache is simply rebuilt
    return {}


# ----------------------------------------------------------------------------- scan


def scan(data_dir: str | os.PathLike, opts: ScanOptions | None = None) -> DatasetIndex:
    """Scan a class-per-folder tree. Raises UserError for a folder that cannot be used."""
    opts = opts or ScanOptions()
    t0 = time.perf_counter()
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"{display(root)}: no such folder")
    if not root.is_dir():
        raise UserError(f"{display(root)}: not a folder (expected one sub-folder per class)")
    root = root.resolve()
    spec = L.parse(opts.labels)
    class_names, cands, rejected, ignored, problems = _list(root, spec, opts)
    results, decoded = _checked(root, cands, opts)
    samples: list[Sample] = []
    by_digest: dict[str, list[_Candidate]] = defaultdict(list)
    for c in cands:
        status, reason, digest, w, h = results[c.rel]
        if status == "ok":
            samples.append(Sample(c.rel, c.label, c.size, c.mtime_ns, w, h, digest))
            by_digest[digest].append(c)
        else:
            (rejected if status == "rejected" else ignored).append(FileNote(c.rel, reason))
    groups = [g for g in by_digest.values() if len(g) > 1]
    duplicates = sorted(sorted(c.rel for c in g) for g in groups)
    conflicts = sorted(sorted(c.rel for c in g) for g in groups if len({c.label for c in g}) > 1)
    samples.sort(key=lambda s: (s.label, s.path))
    index = DatasetIndex(str(root), class_names, samples, sorted(rejected, key=lambda n: n.path),
                         sorted(ignored, key=lambda n: n.path), duplicates, conflicts,
                         compute_fingerprint(class_names, samples),
                         {"decoded": decoded, "from_cache": len(cands) - decoded,
                          "seconds": round(time.perf_counter() - t0, 3)}, spec.text, problems)
    empty = [name for name, n in index.per_class().items() if n == 0]
    if empty:
        name = empty[0]
        bad = sum(1 for n in rejected if n.path.startswith(name + "/"))
        where = f"class folder {display(root / name)}" if spec.kind == "folders" else f"class {display(name)}"
        raise EmptyClassError(index, f"{where} has no usable image"
                              + (f" ({bad} rejected; see `imgcls scan {display(root)}`)" if bad else ""))
    return index


def _list(root: Path, spec, opts: ScanOptions) -> tuple:
    """(class_names, candidates, rejected, ignored, label problems), or UserError for a
    folder with too few classes to train on."""
    problems: dict = {}
    try:
        if spec.kind == "folders":
            class_names, cands, rejected, ignored = _list_files(root)
        else:
            class_names, cands, rejected, ignored, problems = _list_labelled(root, spec)
    except PermissionError as exc:
        raise UserError(f"{display(root)}: cannot read the folder ({exc.strerror})") from None
    if spec.kind != "folders" and len(class_names) < opts.min_classes:
        raise UserError(f"{display(root)}: --labels {spec.text} found "
                        f"{len(class_names)} class(es) ({', '.join(map(display, class_names)) or 'none'}); "
                        f"a classifier needs at least {opts.min_classes}"
                        + (f" ({L.describe(problems)[0]})" if problems else ""))
    if not class_names:
        raise UserError(f"{display(root)}: no class folders found (expected one sub-folder "
                        "per class, e.g. {root}/cat/*.jpg and {root}/dog/*.jpg)".replace(
                            "{root}", display(root)))
    if len(class_names) < opts.min_classes:
        raise UserError(f"{display(root)}: only one class folder ({display(class_names[0])}); "
                        "a classifier needs at least two")
    return class_names, cands, rejected, ignored, problems


def _checked(root: Path, cands: list[_Candidate], opts: ScanOptions
             ) -> tuple[dict[str, CheckResult], int]:
    """Each candidate's check result, from the scan cache where the file is unchanged (path,
    size, mtime, ctime), else by decoding it; and how many were decoded."""
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
    if is_within(cache_dir, root):
        raise UserError(f"cache folder {display(cache_dir)} is inside the data folder; "
                        "choose one outside it (--cache-dir)")
    cache_file = _scan_cache_file(cache_dir, root)
    settings = _settings_key(opts)
    cached = _load_scan_cache(cache_file, root, settings) if opts.use_cache else {}
    results: dict[str, CheckResult] = {}
    todo = []
    for c in cands:
        hit = cached.get(c.rel)
        if hit and hit[:3] == [c.size, c.mtime_ns, c.ctime_ns]:
            results[c.rel] = tuple(hit[3:])
        else:
            todo.append(c)
    for c, res in zip(todo, _run_checks(root, todo, opts)):
        results[c.rel] = res
    if opts.use_cache and (todo or len(cached) != len(cands)):
        new_cache = {c.rel: [c.size, c.mtime_ns, c.ctime_ns, *results[c.rel]] for c in cands}
        try:
            atomic_write_json(cache_file, {"root": str(root), "settings": settings,
                                           "files": new_cache}, indent=None)
        except OSError as exc:
            logger.warning(f"could not write the scan cache {display(cache_file)}: "
                           f"{exc.strerror}")
    return results, len(todo)


def format_report(index: DatasetIndex, limit: int = 20) -> str:
    """The human summary: Keras's first line, then counts, rejects with reasons, duplicates."""
    lines = [f"Found {len(index.samples)} files belonging to {len(index.class_names)} classes."]
    if index.label_source != "folders":
        from imgcls.data.labels import describe

        lines.append(f"Labels from {display(index.label_source)}"
                     + (":" if index.label_problems else "."))
        lines += [f"  {line}" for line in describe(index.label_problems)]
    width = max(len(display(c)) for c in index.class_names)
    for name, n in index.per_class().items():
        lines.append(f"  {display(name):<{width}}  {n}")
    for title, notes in (("Rejected", index.rejected), ("Ignored", index.ignored)):
        if notes:
            lines.append(f"{title} {len(notes)} file{'s' if len(notes) != 1 else ''}:")
            shown = notes if title == "Rejected" else notes[:limit]
            lines += [f"  {display(n.path)}: {n.reason}" for n in shown]
            if len(shown) < len(notes):
                lines.append(f"  ... and {len(notes) - len(shown)} more (--json lists all)")
    if index.duplicates:
        lines.append(f"Duplicates: {len(index.duplicates)} groups of byte-identical files"
                     f" ({len(index.label_conflicts)} across classes):")
        conflict = {tuple(g) for g in index.label_conflicts}
        for g in index.duplicates[:limit]:
            tag = "  [label conflict]" if tuple(g) in conflict else ""
            lines.append("  " + " = ".join(display(p) for p in g) + tag)
        if len(index.duplicates) > limit:
            lines.append(f"  ... and {len(index.duplicates) - limit} more (--json lists all)")
    return "\n".join(lines)


def report_dict(index: DatasetIndex) -> dict:
    """The `scan --json` document (without the per-sample list, which can be 25,000 long)."""
    d = index.to_dict()
    d.pop("samples")
    return d
