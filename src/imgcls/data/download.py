"""Fetch and unpack the Kaggle Cats vs Dogs archive (or any zip of class folders), safely.

Owns downloading (resumable with HTTP Range, size and optional SHA-256 check, a short
connect timeout so an unreachable network fails fast) and extraction that refuses entries
escaping the destination (zip-slip), absolute paths and links, and never overwrites an
existing file. Standard library only: urllib for HTTP, zipfile for the archive.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgcls.errors import UserError
from imgcls.fsutil import display, temp_path_for

# The archive the Keras tutorial downloads (Microsoft's PetImages, ~786 MB).
DEFAULT_URL = ("https://download.microsoft.com/download/3/E/1/"
               "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip")
CHUNK = 1 << 20


@dataclass
class DownloadResult:
    archive: Path
    extracted_to: Path
    files: int
    skipped_identical: int
    resumed_from: int


def _range_start(content_range: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes START-END/TOTAL` header, else None."""
    import re

    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range or "")
    return int(m[1]) if m else None


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def fetch(url: str, dest_file: Path, timeout: float = 15.0, sha256: str | None = None,
          progress: bool | None = None) -> int:
    """Download url to dest_file, resuming a previous partial download. Returns resumed bytes."""
    part = dest_file.with_name(dest_file.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "imgcls"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete
            resp = None
        else:
            raise UserError(f"download failed: HTTP {exc.code} {exc.reason} from {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"no network: cannot reach {url} ({reason})") from None
    resumed = 0
    if resp is not None:
        with resp:
            start = _range_start(resp.headers.get("Content-Range")) if resp.status == 206 else 0
            if have and resp.status == 206 and start == have:
                resumed = have
                mode = "ab"
            elif start != 0:
                # A partial reply for another range than we asked (or without saying which):
                # appending it would silently corrupt the archive. Start over instead.
                resp.close()
                part.unlink(missing_ok=True)
                return fetch(url, dest_file, timeout, sha256, progress)
            else:
                have, mode = 0, "wb"  # the server ignored the Range: start over
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            from tqdm.auto import tqdm  # widgets in Jupyter, text elsewhere

            show = sys.stderr.isatty() if progress is None else progress
            try:
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=dest_file.name, disable=not show) as bar:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except (OSError, ValueError) as exc:
                            raise UserError(f"download interrupted after {f.tell()} bytes ({exc}); "
                                            "run the same command again to resume") from None
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if _disk_full(exc):
                    raise UserError(f"disk full while downloading to {display(part)}; free some "
                                    "space and run the same command again to resume") from None
                raise
            if total is not None and part.stat().st_size != total:
                raise UserError(f"download incomplete: {part.stat().st_size} of {total} bytes; "
                                "run the same command again to resume")
    if sha256:
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        if h.hexdigest() != sha256.lower():
            bad = part.with_name(dest_file.name + ".corrupt")
            os.replace(part, bad)
            raise UserError(f"checksum mismatch for {url}: got {h.hexdigest()}, expected "
                            f"{sha256.lower()}; the file was moved to {display(bad)}")
    os.replace(part, dest_file)
    return resumed


def _safe_name(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    if any(part == ".." for part in p.parts):
        return None
    return p


def check_archive(zf: zipfile.ZipFile, dest: Path) -> list[zipfile.ZipInfo]:
    """Refuse the whole archive if any entry is unsafe; returns the file entries."""
    files = []
    root = dest.resolve()
    for info in zf.infolist():
        p = _safe_name(info.filename)
        if p is None:
            raise UserError(f"unsafe archive: entry {info.filename!r} has an absolute path or "
                            "'..' (zip-slip); nothing was extracted")
        target = (root / p).resolve()
        if target != root and root not in target.parents:
            raise UserError(f"unsafe archive: entry {info.filename!r} escapes {display(dest)}; "
                            "nothing was extracted")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UserError(f"unsafe archive: entry {info.filename!r} is a symbolic link; "
                            "nothing was extracted")
        if not info.is_dir():
            files.append(info)
    return files


def extract(archive: Path, dest: Path) -> tuple[int, int]:
    """Extract safely into dest; never overwrite. Returns (written, skipped identical)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{display(archive)}: not a zip archive or damaged ({exc})") from None
    with zf:
        files = check_archive(zf, dest)
        need = sum(i.file_size for i in files)
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if need > free:
            raise UserError(f"not enough disk space in {display(dest)}: the archive unpacks to "
                            f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free")
        conflicts = []
        for info in files:
            target = dest / _safe_name(info.filename)
            if os.path.lexists(target) and not (target.is_file() and
                                                target.stat().st_size == info.file_size):
                conflicts.append(str(_safe_name(info.filename)))
        if conflicts:
            raise UserError(f"{len(conflicts)} file(s) already exist in {display(dest)} with "
                            f"different content, e.g. {conflicts[0]}; not overwriting (choose "
                            "another --dest)")
        written = skipped = 0
        for info in files:
            target = dest / _safe_name(info.filename)
            if target.exists():  # same size: the same file from an earlier, interrupted run
                skipped += 1
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_path_for(target)
            try:
                with zf.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                os.link(tmp, target)  # fails rather than overwrite a file that appeared
            except zipfile.BadZipFile as exc:
                raise UserError(f"{display(archive)}: damaged entry {info.filename!r} ({exc}); "
                                "delete the archive and download again") from None
            except OSError as exc:
                if _disk_full(exc):
                    raise UserError(f"disk full while extracting into {display(dest)}") from None
                raise
            finally:
                if tmp.exists():
                    tmp.unlink()
            written += 1
    return written, skipped


def download(dest: str | os.PathLike = "data", url: str = DEFAULT_URL, sha256: str | None = None,
             timeout: float = 15.0, progress: bool | None = None) -> DownloadResult:
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urllib.request.urlparse(url).path) or "download.zip"
    archive = dest / name
    resumed = 0
    if not archive.exists():
        resumed = fetch(url, archive, timeout, sha256, progress)
    written, skipped = extract(archive, dest)
    return DownloadResult(archive, dest, written, skipped, resumed)
