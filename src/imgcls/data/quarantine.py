"""Move rejected files out of a data folder, on request, and put them back exactly.

Owns the quarantine folder and its manifest. The only module that ever changes a user's data
folder, and only when asked (`imgcls scan DATA --quarantine DIR`): files are moved, never
deleted or rewritten, never over an existing file in either direction, and the manifest is
written before the first move so that `imgcls restore DIR` can undo even an interrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.index import DatasetIndex
from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_json, display, fsync_dir, is_within, temp_path_for

MANIFEST_NAME = "imgcls-quarantine.json"
MANIFEST_VERSION = 1


@dataclass
class MoveReport:
    moved: list[str] = field(default_factory=list)  # paths (relative to the data folder)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def _digest(path: Path) -> str | None:
    if path.is_symlink():
        return None
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _move_no_overwrite(src: Path, dst: Path) -> None:
    """Move src to dst, failing with FileExistsError if dst exists; crash-safe.

    A hard link (which refuses an existing target) then an unlink: at every instant the file
    exists under at least one of the two names. Across file systems, a verified copy instead.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            tmp = temp_path_for(dst)
            try:
                shutil.copy2(src, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.link(tmp, dst)  # refuses an existing dst, unlike rename
            finally:
                if tmp.exists():
                    tmp.unlink()
    fsync_dir(dst.parent)
    os.unlink(src)
    fsync_dir(src.parent)


def _read_manifest(qdir: Path) -> dict:
    path = qdir / MANIFEST_NAME
    if not path.exists():
        return {"version": MANIFEST_VERSION, "entries": []}
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if not isinstance(d.get("entries"), list):
            raise ValueError("no entries")
        return d
    except (OSError, ValueError) as exc:
        raise UserError(f"{display(path)}: unreadable quarantine manifest ({exc})") from None


def quarantine(index: DatasetIndex, qdir: str | os.PathLike) -> MoveReport:
    """Move every rejected file of `index` into qdir, keeping relative paths."""
    qdir = Path(qdir).expanduser().resolve()
    root = Path(index.root)
    if is_within(qdir, root) or is_within(root, qdir):
        raise UserError(f"quarantine folder {display(qdir)} must be outside the data folder "
                        f"{display(root)}")
    qdir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(qdir)
    report = MoveReport()
    planned = []
    for note in index.rejected:
        src = root / note.path
        if not os.path.lexists(src) or (src.is_dir() and not src.is_symlink()):
            report.skipped.append((note.path, "not a file"))
            continue
        if os.path.lexists(qdir / note.path):
            report.skipped.append((note.path, "already in the quarantine folder; not overwritten"))
            continue
        planned.append({"source": str(src), "stored": note.path, "reason": note.reason,
                        "blake2b": _digest(src), "state": "quarantined"})
    if not planned:
        return report
    # The manifest names every planned move before any file moves: restore can then undo a
    # run that was killed half-way (it skips entries whose file never left).
    manifest["entries"].extend(planned)
    atomic_write_json(qdir / MANIFEST_NAME, manifest)
    for entry in planned:
        try:
            _move_no_overwrite(Path(entry["source"]), qdir / entry["stored"])
            report.moved.append(entry["stored"])
        except OSError as exc:
            report.skipped.append((entry["stored"], f"could not move: {exc.strerror or exc}"))
            entry["state"] = "failed"
    atomic_write_json(qdir / MANIFEST_NAME, manifest)
    return report


def restore(qdir: str | os.PathLike) -> MoveReport:
    """Put every quarantined file back where it came from; never overwrite anything."""
    qdir = Path(qdir).expanduser().resolve()
    if not (qdir / MANIFEST_NAME).exists():
        raise UserError(f"{display(qdir)}: no quarantine manifest ({MANIFEST_NAME}) here")
    manifest = _read_manifest(qdir)
    report = MoveReport()
    for entry in manifest["entries"]:
        if entry.get("state") != "quarantined":
            continue
        src, stored = Path(entry["source"]), qdir / entry["stored"]
        here, there = os.path.lexists(stored), os.path.lexists(src)
        if not here and there:
            entry["state"] = "restored"  # the move never happened (an interrupted quarantine)
            report.moved.append(entry["stored"])
        elif not here:
            report.skipped.append((entry["stored"], "missing from the quarantine folder"))
        elif there:
            report.skipped.append((entry["stored"], f"{display(src)} exists; not overwritten"))
        elif entry.get("blake2b") and _digest(stored) != entry["blake2b"]:
            report.skipped.append((entry["stored"], "changed since it was quarantined; left here"))
        else:
            try:
                _move_no_overwrite(stored, src)
                entry["state"] = "restored"
                report.moved.append(entry["stored"])
            except OSError as exc:
                report.skipped.append((entry["stored"], f"could not move: {exc.strerror or exc}"))
    atomic_write_json(qdir / MANIFEST_NAME, manifest)
    return report
