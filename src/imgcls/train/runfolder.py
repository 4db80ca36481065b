"""The run folder's writer: what a training run leaves on disk, and in what order.

Owns the files of a run folder (see train.py's docstring for the list): the lock that keeps
a second run out of a folder in use, the resolved config,
the data summary, the split record, one checkpoint per epoch, `last` (a hard link to the
newest), `best` (weights only), pruning by (epoch, step) and metrics.jsonl. Only rank 0
writes. Every file goes through fsutil's atomic writers, so a kill at any moment leaves the
previous complete file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from imgcls.checkpoint import (
    BEST,
    EPOCHS,
    LAST,
    Checkpoint,
    CheckpointError,
    epoch_path,
    read_metadata,
    save_checkpoint,
)
from imgcls.fsutil import atomic_write_bytes, atomic_write_json, display, temp_path_for

METRICS, CONFIG, DATA, LOCK = "metrics.jsonl", "config.json", "data.json", ".lock"


def new_run_dir(data_dir: str, parent: str | os.PathLike = "runs") -> Path:
    """The default run folder, made now: runs/DATA-YYYYmmdd-HHMMSS, with -2, -3, ... where
    that exists already (mkdir is atomic, so runs started in the same second never share)."""
    import time

    base = Path(parent) / f"{Path(data_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(parent).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: too many runs of that name")


class RunLock:
    """An exclusive lock on a run folder for a run's whole life (rank 0 holds it).

    flock on `RUN/.lock`: the kernel drops it when the process ends, however it ends (kill -9
    included), so a stale lock never blocks a resume. The file names the holder (pid, host,
    start time) for the message a second run gets. A folder the lock itself created and
    nothing else wrote into is removed again on release: a run refused before its first
    file leaves nothing behind.
    """

    def __init__(self, run: Path, made_here: bool = False):
        self.run = run
        self._fd: int | None = None
        self._made_folder = made_here  # the folder was made for this run (new_run_dir)

    def acquire(self) -> str | None:
        """None when locked; otherwise who holds it, in words."""
        import fcntl
        import socket
        import time

        from imgcls.errors import UserError
        from imgcls.fsutil import display

        self._made_folder = self._made_folder or not self.run.exists()
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write the run folder {display(self.run)}: "
                            f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return holder
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        if self._made_folder and [p.name for p in self.run.iterdir()] == [LOCK]:
            (self.run / LOCK).unlink(missing_ok=True)
            try:
                self.run.rmdir()
            except OSError:
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class RunWriter:
    def __init__(self, run: Path, keep: int):
        self.run = run
        self.keep = keep  # epoch checkpoints to keep, newest by (epoch, step); 0 = all

    def run_traces(self) -> list[str]:
        """What in the folder a run wrote: any of it means a run lives here (a pruned or
        copied run may keep `best` and its config without `last`), never to be trained
        over."""
        from imgcls.data.split import SPLIT_FILE

        names = [LAST, BEST, CONFIG, DATA, METRICS, SPLIT_FILE]
        found = [n for n in names if (self.run / n).exists()]
        if any((self.run / EPOCHS).glob("*.safetensors")):
            found.append(f"{EPOCHS}/")
        return found

    def taken_message(self, traces: list[str]) -> str:
        """The one line refusing to train over `traces`: --resume is offered only where
        there is something to resume (a config and a full checkpoint)."""
        where = display(self.run)
        resumable = CONFIG in traces and (LAST in traces or f"{EPOCHS}/" in traces)
        fix = (f"continue it with `imgcls train --resume {where}` or choose another --out"
               if resumable else "choose another --out (nothing there can be resumed)")
        return f"{where} already holds a run ({', '.join(traces)}); {fix}"

    def start(self, config: dict, data: dict) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run / CONFIG, config)
        atomic_write_json(self.run / DATA, data)

    def save(self, path: Path, ckpt: Checkpoint) -> None:
        save_checkpoint(path, ckpt)

    def end_epoch(self, epoch: int, full: Checkpoint, best: Checkpoint | None,
                  history: list[dict]) -> None:
        """`best`, then the epoch's checkpoint, `last` pointing at it, pruning, metrics.

        `best` goes first: a run killed after its epoch file but before `best` would resume
        past the epoch that earned it and never write it (a resumed run then kept an older
        `best` than the same run uninterrupted). Killed after `best` but before the epoch
        file, the resumed run repeats the epoch and writes the same `best` again."""
        if best is not None:
            save_checkpoint(self.run / BEST, best)
        path = epoch_path(self.run, epoch)
        save_checkpoint(path, full)
        replace_with_link(path, self.run / LAST)
        self.prune()
        atomic_write_bytes(self.run / METRICS,
                           "".join(json.dumps(h) + "\n" for h in history).encode())

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` epoch checkpoints, newest by their (epoch, step)
        metadata: names sort wrongly past epoch 999, and a file's name can lie."""
        if self.keep <= 0:
            return []
        ranked = []
        for p in (self.run / EPOCHS).glob("epoch_*.safetensors"):
            try:
                m = read_metadata(p)
                ranked.append(((m.get("epoch", 0), m.get("step", 0)), p))
            except CheckpointError:
                continue  # damaged: leave it for a person to look at, never count it as new
        ranked.sort(key=lambda kv: kv[0])
        doomed = [p for _, p in ranked[:-self.keep]]
        for p in doomed:
            p.unlink(missing_ok=True)
        return doomed


def replace_with_link(src: Path, dst: Path) -> None:
    """dst becomes the same file as src, atomically (a hard link renamed into place)."""
    tmp = temp_path_for(dst)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
