"""Where labels come from when they are not folder names: file names, or a CSV file.

Owns the `--labels` setting:
    folders          (default) one sub-folder per class: scan.py's own layout
    name:REGEX       the class is the first group of REGEX searched in the file name
                     (Kaggle's flat `cat.0.jpg ... dog.12499.jpg`: `name:^(cat|dog)\\.`)
    csv:FILE[:P,L]   rows of (path, label), paths relative to the data folder; the header's
                     columns P and L, else auto-detected (path/file/filename/image/id and
                     label/class/category/target), else the first two columns
For the last two, every file below the data folder is a candidate, as files.walk finds them
(the one walker and link policy scan's class folders use too); what cannot be labelled is
reported, never guessed:
files whose name does not match, CSV rows naming missing files, files listed twice with
different labels, empty labels, and files present but not listed. Decoding and every other
check stay scan.py's.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.files import Found, has_image_name, walk
from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.words import few

PATH_COLUMNS = ("path", "file", "filename", "file_name", "fname", "image", "image_id",
                "img", "id", "name")
LABEL_COLUMNS = ("label", "class", "category", "target", "breed", "species", "y")


@dataclass(frozen=True)
class LabelSpec:
    kind: str  # "folders", "name" or "csv"
    pattern: str = ""  # name: the regular expression
    csv_file: str = ""  # csv: the file
    columns: tuple[str, str] | None = None  # csv: (path column, label column) by header name

    @property
    def text(self) -> str:
        if self.kind == "name":
            return f"name:{self.pattern}"
        if self.kind == "csv":
            return f"csv:{self.csv_file}" + (f":{','.join(self.columns)}" if self.columns else "")
        return "folders"


def val_dir_labels(spec: str) -> str:
    """The label source of a separate validation folder: the same file-name rule, else
    class folders (a CSV describes the data folder only)."""
    return spec if spec.startswith("name:") else "folders"


def parse(spec: str | None) -> LabelSpec:
    """`folders`, `name:REGEX` or `csv:FILE[:PATHCOL,LABELCOL]` -> LabelSpec (UserError if bad)."""
    if not spec or spec == "folders":
        return LabelSpec("folders")
    kind, _, rest = spec.partition(":")
    if kind == "name" and rest:
        try:
            re.compile(rest)
        except re.error as exc:
            raise UserError(f"--labels {spec}: not a regular expression ({exc})") from None
        return LabelSpec("name", pattern=rest)
    if kind == "csv" and rest:
        path, columns = rest, None
        head, _, tail = rest.rpartition(":")
        if head and "," in tail and not os.path.exists(rest):
            p, l = (c.strip() for c in tail.split(",", 1))
            path, columns = head, (p, l)
        return LabelSpec("csv", csv_file=os.path.abspath(os.path.expanduser(path)), columns=columns)
    raise UserError(f"--labels {spec}: use folders, name:REGEX or csv:FILE[:PATHCOL,LABELCOL]")


@dataclass
class Labelled:
    """What a label source found: classes, (relative path, label) pairs, and problems."""
    class_names: list[str]
    files: list[tuple[str, int, Found]]  # (relative path, label, the file)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)  # kind -> examples (all)


def _walk(root: Path) -> tuple[list[Found], list[tuple[str, str]], list[tuple[str, str]]]:
    """(files, rejected, ignored) below root by files.walk's one link policy."""
    got = walk(root)
    return (got.files, [(n.rel, n.reason) for n in got.rejected],
            [(n.rel, n.reason) for n in got.ignored])


def from_names(root: Path, spec: LabelSpec) -> Labelled:
    rx = re.compile(spec.pattern)
    found, rejected, skipped = _walk(root)
    named, ignored = [], list(skipped)
    for f in found:
        rel = f.rel
        m = rx.search(os.path.basename(rel))
        label = (m.group(1) if m and m.groups() else m.group(0) if m else None)
        if not label:
            ignored.append((rel, f"no label in the file name (--labels name:{spec.pattern})"))
            continue
        named.append((rel, label, f))
    classes = sorted({lab for _, lab, _ in named})
    index = {c: i for i, c in enumerate(classes)}
    unmatched = [r for r, why in ignored if why.startswith("no label") and has_image_name(r)]
    return Labelled(classes, [(r, index[lab], f) for r, lab, f in named], rejected, ignored,
                    {"file names without a label": unmatched} if unmatched else {})


def _columns(header: list[str], spec: LabelSpec) -> tuple[int, int, bool]:
    """(path column, label column, whether row 0 is a header)."""
    low = [h.strip().lower() for h in header]
    if spec.columns:
        p, l = spec.columns[0].lower(), spec.columns[1].lower()
        if p not in low or l not in low:
            raise UserError(f"{display(spec.csv_file)}: no column {spec.columns[0]!r} and "
                            f"{spec.columns[1]!r} in its header {header}")
        return low.index(p), low.index(l), True
    p = next((low.index(c) for c in PATH_COLUMNS if c in low), None)
    l = next((low.index(c) for c in LABEL_COLUMNS if c in low), None)
    if p is not None and l is not None and p != l:
        return p, l, True
    return 0, 1, False


def from_csv(root: Path, spec: LabelSpec) -> Labelled:
    try:
        with open(spec.csv_file, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"--labels csv:{display(spec.csv_file)}: cannot read it ({exc.strerror})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{display(spec.csv_file)}: no rows")
    pcol, lcol, header = _columns(rows[0], spec)
    if header:
        rows = rows[1:]
    found, walk_rejected, skipped = _walk(root)
    csv_real = os.path.realpath(spec.csv_file)
    by_path = {f.rel: f for f in found if os.path.realpath(root / f.rel) != csv_real}
    by_stem: dict[str, list[str]] = {}
    for rel in by_path:  # Kaggle's ids often leave out the extension
        by_stem.setdefault(os.path.splitext(rel)[0], []).append(rel)
    wanted: dict[str, str] = {}
    problems: dict[str, list[str]] = {"rows naming missing files": [], "empty labels": [],
                                      "rows naming files outside the data folder": [],
                                      "files listed twice with different labels": [],
                                      "files present but not listed": []}
    conflicted, unlabelled = set(), set()
    for n, row in enumerate(rows, 2 if header else 1):
        if max(pcol, lcol) >= len(row):
            problems["empty labels"].append(f"line {n}")
            continue
        path = csv_path(row[pcol], root)
        label = row[lcol].strip()
        if not label:
            problems["empty labels"].append(f"line {n}" + (f" ({path})" if path else ""))
            if path:
                unlabelled.add(path)
            continue
        if path is None:
            problems["rows naming files outside the data folder"].append(
                f"line {n}: {row[pcol].strip()}")
            continue
        rel = path if path in by_path else (by_stem.get(path) or [None])[0] \
            if len(by_stem.get(path, [])) == 1 else None
        if rel is None:
            problems["rows naming missing files"].append(f"line {n}: {path}")
            continue
        if rel in wanted and wanted[rel] != label:
            problems["files listed twice with different labels"].append(
                f"{rel} ({wanted[rel]}, {label})")
            conflicted.add(rel)
        wanted.setdefault(rel, label)
    ignored = list(skipped)

    name = os.path.basename(spec.csv_file)
    for rel in by_path:
        if rel in wanted:
            continue
        if rel in unlabelled or os.path.splitext(rel)[0] in unlabelled:
            ignored.append((rel, f"its row in {name} has an empty label"))
            continue
        if has_image_name(rel):
            problems["files present but not listed"].append(rel)
        ignored.append((rel, f"not listed in {name}"))
    rejected = walk_rejected + [(rel, f"listed with two different labels in {name}")
                                for rel in sorted(conflicted)]
    kept = {rel: lab for rel, lab in wanted.items() if rel not in conflicted}
    classes = sorted(set(kept.values()))
    index = {c: i for i, c in enumerate(classes)}
    files = [(rel, index[kept[rel]], by_path[rel]) for rel in sorted(kept)]
    return Labelled(classes, files, rejected, ignored, {k: v for k, v in problems.items() if v})


def csv_path(text: str, root: Path) -> str | None:
    """A CSV row's path -> '/'-separated and relative to root; None if it leaves root.

    Relative paths are relative to the data folder (`./a.jpg`, `a/../b.jpg` and Windows
    backslashes as usual); an absolute path must lie inside it. Nothing is stripped
    character by character: `../x.jpg` is outside, never `x.jpg`."""
    import posixpath

    raw = text.strip().replace("\\", "/")
    if not raw:
        return ""
    if os.path.isabs(raw) or re.match(r"^[A-Za-z]:/", raw):
        for base in (str(root), os.path.realpath(root)):
            rel = os.path.relpath(os.path.normpath(raw), base).replace(os.sep, "/")
            if rel != ".." and not rel.startswith("../"):
                return rel
        return None
    rel = posixpath.normpath(raw)
    return None if rel == ".." or rel.startswith("../") or rel == "." else rel


def describe(problems: dict[str, list[str]], n: int = 3) -> list[str]:
    """One line per kind of problem: a count and the first few examples."""
    out = []
    for kind, items in problems.items():
        out.append(f"{len(items)} {kind}: {few([display(x) for x in items], n)}")
    return out
