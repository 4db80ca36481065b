"""The run folder's writer: what a training run leaves on disk, and in what order.

Owns the files of a run folder (see train.py's docstring for the list): the resolved config,
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

from imgcls.checkpoint import (BEST, EPOCHS, LAST, Checkpoint, CheckpointError, epoch_path,
                               read_metadata, save_checkpoint)
from imgcls.fsutil import atomic_write_bytes, atomic_write_json, temp_path_for

METRICS, CONFIG, DATA = "metrics.jsonl", "config.json", "data.json"


class RunWriter:
    def __init__(self, run: Path, keep: int):
        self.run = run
        self.keep = keep  # epoch checkpoints to keep, newest by (epoch, step); 0 = all

    def holds_run(self) -> bool:
        return (self.run / LAST).exists()

    def start(self, config: dict, data: dict) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run / CONFIG, config)
        atomic_write_json(self.run / DATA, data)

    def save(self, path: Path, ckpt: Checkpoint) -> None:
        save_checkpoint(path, ckpt)

    def end_epoch(self, epoch: int, full: Checkpoint, best: Checkpoint | None,
                  history: list[dict]) -> None:
        """The epoch's checkpoint, then `last` pointing at it, `best`, pruning, metrics."""
        path = epoch_path(self.run, epoch)
        save_checkpoint(path, full)
        replace_with_link(path, self.run / LAST)
        if best is not None:
            save_checkpoint(self.run / BEST, best)
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
