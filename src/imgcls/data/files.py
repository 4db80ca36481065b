"""The one walker: every file under a data folder, with one link policy for every label source.

Owns what counts as a candidate photo before anything is decoded: hidden and system files
(the one rule for them, `skipped_name`), which names look like images (IMAGE_EXTENSIONS),
regular files only (a FIFO would block a read forever), and links. Links are followed, once,
except where they would put a photo under a second name or the wrong label: a link met
inside one scope (a class folder, or the whole folder for file-name and CSV labels) that
leads to the data folder or above it, into another class's tree, or elsewhere inside the
data folder is not followed, and is reported with where it leads. A folder reached from two
classes is left out of both. `scan.py` (class folders) and `labels.py` (names, CSV) both
walk through `walk`; neither has a walker of its own.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from imgcls.fsutil import display

# File names that look like images: a file with one of these that does not decode is
# *rejected* (reported as broken); any other file that does not decode is *ignored*.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .gif .webp .tif .tiff .ppm .pgm .pbm .pnm "
    ".tga .ico .heic .heif .avif .jp2 .jxl".split()
)
# Written by operating systems and photo tools into photo folders; never user data.
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r"})
SYSTEM_DIRS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information"})


def skipped_name(name: str) -> str | None:
    """Why a file or folder name is never looked at ("hidden", "system file"), else None."""
    if name.startswith("."):
        return "hidden"
    if name.lower() in SYSTEM_FILES or name.lower() in SYSTEM_DIRS:
        return "system file"
    return None


def has_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def might_be_image(f) -> bool:
    """Cheap content test for a file without an image extension (an open binary file): its
    header opens as an image (so a 4 GB video is not read)."""
    import warnings

    from PIL import Image

    try:
        f.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(f):
                return True
    except Exception:
        return False


@dataclass(frozen=True)
class Found:
    """A regular file below the root: a candidate photo, not yet decoded."""
    rel: str  # '/'-separated, relative to the root
    scope: int  # index of the scope (class folder) it was found in; 0 for a flat walk
    size: int  # bytes
    mtime_ns: int
    ctime_ns: int
    image_name: bool  # has an image extension


@dataclass(frozen=True)
class Note:
    rel: str
    reason: str


@dataclass
class Walk:
    files: list[Found]
    rejected: list[Note]  # unreadable folders and image-named files: a user's photos lost
    ignored: list[Note]  # hidden, system, not regular, links not followed


def inside(path: str, folder: str) -> bool:
    """Whether path is folder or below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def os_reason(exc: OSError, path: str | None = None) -> str:
    """An OSError in words, naming a looping or broken link, or a file that vanished."""
    import errno

    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        # A link whose target is gone, or a file deleted between the listing and now.
        if path is None or os.path.islink(path):
            return "broken symlink"
        return "vanished during the scan"
    return exc.strerror or str(exc)


class _Policy:
    """Whether following a link met inside scope `own` would relabel photos."""

    def __init__(self, root: Path, scopes: list[str]):
        self.root = str(root)
        self.flat = scopes == [""]
        self.real = [os.path.realpath(root / s) if s else self.root for s in scopes]
        self.names = scopes

    def why_not(self, own: int, path: Path, folder: bool) -> str | None:
        real = os.path.realpath(path)
        what = "folder link" if folder else "file link"
        if inside(self.root, real):
            where = ("the data folder itself" if real == self.root
                     else f"{display(real)}, which holds the data folder")
            return f"{what} to {where}: not followed (it would relabel other classes' photos)"
        if self.flat:
            if inside(real, self.root):
                return (f"{what} to {display(os.path.relpath(real, self.root))} inside the data "
                        "folder: not followed (that file is taken under its own name)")
            return None
        for other, real_other in enumerate(self.real):
            if other != own and inside(real, real_other):
                name = self.names[other]
                rel = os.path.relpath(real, real_other)
                target = f"class folder {display(name)}" if rel == "." else \
                    f"{display(name + '/' + rel.replace(os.sep, '/'))} in class {display(name)}"
                return (f"{what} to {target}: not followed (those photos belong to "
                        f"{display(name)}, not {display(self.names[own])})")
        if inside(real, self.root) and not inside(real, self.real[own]):
            return (f"{what} to {display(os.path.relpath(real, self.root))} inside the data "
                    "folder but outside every class folder: not followed")
        return None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir(follow_symlinks=True)
    except OSError:
        return False


def walk(root: Path, scopes: list[str] | None = None) -> Walk:
    """Every regular file below root/scope for each scope (class folders), or below root
    itself (scopes None: labels from names or a CSV), by the one link policy."""
    scopes = scopes if scopes else [""]
    policy = _Policy(root, scopes)
    out = Walk([], [], [])
    visited: dict[tuple[int, int], str] = {}
    shared: list[tuple[str, str]] = []  # (folder as first walked, the other class's link)
    for own, scope in enumerate(scopes):
        stack = [(root / scope if scope else root, scope)]
        while stack:
            folder, rel_folder = stack.pop()
            if rel_folder != scope and os.path.islink(folder):
                why = policy.why_not(own, folder, folder=True)
                if why:
                    out.ignored.append(Note(rel_folder, why))
                    continue
            entries = _enter(folder, rel_folder, scope, visited, shared, out)
            if entries is None:
                continue
            subdirs = []
            for e in entries:
                rel = f"{rel_folder}/{e.name}" if rel_folder else e.name
                why = skipped_name(e.name)
                if why:
                    out.ignored.append(Note(rel, why))
                elif _is_dir(e):
                    subdirs.append((Path(e.path), rel))
                else:
                    _take_file(e, rel, own, policy, out)
            stack.extend(reversed(subdirs))
    _drop_shared(shared, out)
    return out


def _enter(folder: Path, rel_folder: str, scope: str, visited: dict, shared: list,
           out: Walk) -> list | None:
    """The folder's entries, sorted; None (with a note) if unreadable or already walked."""
    label = rel_folder or "."
    try:
        st = os.stat(folder)
    except OSError as exc:
        out.rejected.append(Note(label, f"unreadable folder: {exc.strerror}"))
        return None
    key = (st.st_dev, st.st_ino)
    if key in visited:
        first = visited[key]
        first_scope = first.split("/", 1)[0] if scope else ""
        if first_scope != scope:  # one folder reached from two classes
            shared.append((first, rel_folder))
            out.ignored.append(Note(rel_folder, (
                f"folder link to {display(first)}, already scanned in class "
                f"{display(first_scope)}: its photos would be under two classes; left "
                "out of both")))
        else:
            out.ignored.append(Note(rel_folder, f"folder link to {display(first or '.')} "
                                    "(already scanned; a symlink loop or a second link)"))
        return None
    visited[key] = rel_folder
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        out.rejected.append(Note(label, f"unreadable folder: {exc.strerror}"))
        return None


def _take_file(e: os.DirEntry, rel: str, own: int, policy: _Policy, out: Walk) -> None:
    why = policy.why_not(own, Path(e.path), folder=False) if e.is_symlink() else None
    if why:
        out.ignored.append(Note(rel, why))
        return
    image_name = has_image_name(e.name)
    try:
        st = e.stat()  # follows a file link
    except OSError as exc:
        note = Note(rel, f"unreadable: {os_reason(exc, e.path)}")
        (out.rejected if image_name else out.ignored).append(note)
        return
    if not stat.S_ISREG(st.st_mode):
        # FIFOs, sockets, devices: opening a FIFO would block forever.
        out.ignored.append(Note(rel, "not a regular file"))
        return
    out.files.append(Found(rel, own, st.st_size, st.st_mtime_ns, st.st_ctime_ns, image_name))


def _drop_shared(shared: list[tuple[str, str]], out: Walk) -> None:
    for first, other in shared:
        # Which label is right is unknowable: the photos go to neither class.
        inside = [f for f in out.files if f.rel.startswith(first + "/")]
        if inside:
            out.ignored.append(Note(first, f"its {len(inside)} file(s) are also reached from "
                                    f"{display(other)} in another class: left out of both"))
            gone = {id(f) for f in inside}
            out.files = [f for f in out.files if id(f) not in gone]


def expand_inputs(items) -> tuple[list[str], list[str]]:
    """Files, folders and globs (as `imgcls predict` is given them) -> (files, errors).

    A folder gives what `scan` would take from it, by the same walk: regular files,
    image-named or opening as an image (a photo without an extension), hidden and system
    files aside; notes.txt and the like are passed over quietly, as scan ignores them."""
    import glob

    files: list[str] = []
    errors: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = [os.path.join(item, f.rel) for f in walk(Path(item)).files
                     if f.image_name or _opens_as_image(os.path.join(item, f.rel))]
            if not found:
                errors.append(f"{display(item)}: no image files in this folder")
            files += found
        elif os.path.lexists(item):
            files.append(item)
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                errors.append(f"{display(item)}: no file matches this pattern")
            for m in matched:
                (files.append(m) if os.path.isfile(m) else files.extend(expand_inputs([m])[0]))
        else:
            errors.append(f"{display(item)}: no such file or folder")
    return files, errors


def _opens_as_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return might_be_image(f)
    except OSError:
        return True  # named in the results as unreadable, not passed over
