"""fit(): scan, split, cache, then train with safe checkpoints and exact resume.

Owns the training loop. Its pieces, in the order a run meets them:
    prepare_data      scan, split (or the run's recorded split on resume), caches
    build_state       model, optimizer, loss, resumed counters: the TrainState
    epoch.train_epoch     one epoch of optimizer steps (micro-batches, mixed precision, mixup)
    epoch.run_validation  loss and accuracy over every validation image, across ranks
    epoch_stops       the stop rules (signal, divergence, time limit, patience), agreed
                      by every rank through distributed.agree
    runfolder.RunWriter   the files: config, data summary, split record, checkpoints
The run folder:
    run/config.json          the resolved TrainConfig
    run/data.json            scan summary, split sizes, data fingerprints
    run/split.json.gz        the exact training and validation files (split.write_record)
    run/metrics.jsonl        one JSON object per finished epoch
    run/checkpoints/epoch_NNN.safetensors   resumable, one per epoch (--keep N)
    run/last.safetensors     resumable: the newest state (an epoch, or a Ctrl-C)
    run/best.safetensors     weights only, best by --monitor: what predict/export use
    run/tb/                  TensorBoard scalars, when tensorboard is installed
Reproducibility: the data order comes from (seed, epoch), and the dropout and augmentation
generators are re-seeded from (seed, epoch, rank) at each epoch start, so a run resumed at an
epoch boundary retraces an uninterrupted one bit for bit on the CPU; a mid-epoch checkpoint
(Ctrl-C) stores the generator states and the epoch's partial sums themselves.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from imgcls import __version__
from imgcls import distributed as D
from imgcls.bnstats import collapse_warning, needs_recalibration, recalibrate
from imgcls.cache import ImageCache, build_cache
from imgcls.checkpoint import LAST, Checkpoint, find_resumable
from imgcls.config import TrainConfig
from imgcls.epoch import EpochOutcome, epoch_passes, mixup_alpha, run_validation, train_epoch
from imgcls.errors import PeerError, UserError
from imgcls.fsutil import display
from imgcls.loader import BatchLoader
from imgcls.models import ModelConfig, create_model
from imgcls.optim import (class_weights, load_optimizer_state, lr_factor, make_optimizer,
                          optimizer_state)
from imgcls.preprocess import PreprocessSpec
from imgcls.runfolder import RunLock, RunWriter
from imgcls.runtime import autocast_for, cpu_threads, keep_freed_memory, resolve_device
from imgcls.labels import val_dir_labels
from imgcls.scan import DatasetIndex, ScanOptions, report_dict, scan
from imgcls.split import Split, read_record, restore_split, split_index, split_with_val_dir, write_record

MAXIMIZE = {"val_accuracy": True, "accuracy": True, "val_loss": False, "loss": False}


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False


def _seed_for(cfg_seed: int, epoch: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([cfg_seed, epoch, rank, stream]).generate_state(1)[0])


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop at the next agreed step boundary."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now (files are still atomic)
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\nimgcls: {signal.Signals(signum).name}: saving a resumable checkpoint "
              "after this step (again to quit now)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _log(world: D.World, *args, **kw):
    if world.main:
        print(*args, **kw, flush=True)


def _stop_everywhere(world: D.World, message: str):
    """Raise the same stop on every rank; only rank 0's is printed."""
    raise UserError(message) if world.main else PeerError(message)


# ----------------------------------------------------------------------------- data


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
    out = None
    for turn in ("main", "others"):
        if (turn == "main") == world.main:
            index = scan(cfg.data_dir, opts)
            val_index = scan(cfg.val_dir, val_opts) if cfg.val_dir else None
            if cfg.max_per_class and record is None:  # on resume, the record is the sample
                index = sample_per_class(index, cfg.max_per_class, cfg.seed)
                val_index = val_index and sample_per_class(val_index, cfg.max_per_class, cfg.seed)
            if record is not None:
                sp, warnings = restore_split(record, index, val_index)
                # Decode only the recorded files: a --max-per-class sample stays a sample
                # (and its cache is the one reused), whatever the folder holds now.
                index = _only(index, sp.train.samples + ([] if val_index else sp.val.samples))
                val_index = val_index and _only(val_index, sp.val.samples)
            else:
                sp = (split_with_val_dir(index, val_index) if val_index else
                      split_index(index, cfg.val_split, cfg.seed, cfg.split))
                warnings = list(sp.notes)
                if resume:
                    warnings.append("this run has no record of its files (made by an older "
                                    "imgcls): its split is recomputed from the folder as it is now")
            progress = None if world.main else False
            kw = dict(max_pixels=cfg.max_pixels, progress=progress, build=world.main)
            cache = build_cache(index, spec, cfg.cache_dir, **kw)
            val_cache = build_cache(val_index, spec, cfg.cache_dir, **kw) if val_index else cache
            out = TrainData(index, sp, spec, cache, val_cache,
                            cache.rows_for([s.path for s in sp.train.samples]),
                            val_cache.rows_for([s.path for s in sp.val.samples]),
                            warnings, record is not None)
        D.barrier(world)
    return out


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


def _data_summary(data: TrainData) -> dict:
    sp = data.split
    return {"scan": report_dict(data.index), "split": sp.method, "pinned": data.pinned,
            "train_images": len(data.train_rows), "val_images": len(data.val_rows),
            "groups_kept_together": sp.groups_kept_together,
            "train_fingerprint": sp.train.fingerprint, "val_fingerprint": sp.val.fingerprint,
            "cache": str(data.cache.folder), "warnings": data.warnings,
            "dropped": [d.__dict__ for d in data.cache.dropped]}


CONFLICT_REASON = "listed with two different labels"


def _scan_lines(index: DatasetIndex, cfg: TrainConfig) -> list[str]:
    """What the scan left out or found doubtful, as `imgcls scan` reports it (counts and
    examples), so a user never trains past it unaware."""
    from imgcls.labels import describe

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


# ----------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """Everything that changes during training, and what a checkpoint must restore."""
    model: nn.Module  # the bare model (weights, BatchNorm statistics)
    net: nn.Module  # what the loop calls: the model, maybe wrapped by DDP / torch.compile
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable
    aug_gen: torch.Generator
    weights: torch.Tensor | None  # per-class loss weights
    micro: int  # images per forward/backward pass
    steps: int  # optimizer steps per epoch
    total_steps: int  # for the schedule
    warmup: int  # steps
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    bad_epochs: int = 0
    epoch: int = 0  # the epoch to run next (0-based)
    step: int = 0  # steps of that epoch already done (resuming mid-epoch)
    partial: list[float] | None = None  # that epoch's sums so far: loss, correct, count, seen, s
    resumed: Checkpoint | None = None
    recal_loader: BatchLoader | None = None  # training images for BatchNorm's statistics
    eval_autocast: Callable | None = None  # validation's precision (inference's: bf16 on a
    #                                        CPU that computes it natively)
    class_names: list[str] = field(default_factory=list)
    warned_collapse: bool = False
    epochs: int = 0  # epochs the schedule runs over: cfg.epochs, or fewer under --time-limit
    paces: list[float] = field(default_factory=list)  # seconds of each epoch this process ran
    mixup: float = 0.0  # the alpha in use (cfg.mixup resolved for the data size)
    dtype: torch.dtype = torch.float32  # of the weights and the inputs (float64: --amp fp64)
    started: float = 0.0  # perf_counter() at which the run, earlier sessions included, began

    def plan(self, epochs: int) -> None:
        self.epochs, self.total_steps = epochs, self.steps * epochs


def build_state(cfg: TrainConfig, data: TrainData, device: torch.device, world: D.World,
                resumed: Checkpoint | None, run: Path) -> tuple[TrainState, BatchLoader, BatchLoader]:
    n_classes = len(data.index.class_names)
    mcfg = ModelConfig(cfg.model, n_classes, dict(cfg.model_options))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    try:
        model = create_model(mcfg)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if cfg.image_size < getattr(model, "min_size", 1):
        raise UserError(f"image size {cfg.image_size} px is too small for {cfg.model}: "
                        f"it needs at least {model.min_size} px")
    if getattr(model, "num_logits", n_classes) == 1 and n_classes != 2:
        raise UserError(f"the single_logit option needs exactly two classes; this data has {n_classes}")
    if resumed is not None:
        _check_resume_matches(resumed, mcfg, data.index.class_names, data.spec, run)
        model.load_state_dict(resumed.weights)
    dtype = torch.float64 if cfg.amp == "fp64" else torch.float32
    model.to(device, dtype)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world.active:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            _log(world, "imgcls: note: --sync-bn needs CUDA (PyTorch's SyncBatchNorm); on the "
                 "CPU each rank keeps its own BatchNorm statistics", file=sys.stderr)
    net = model
    if world.active:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    per_rank = cfg.batch_size // world.size
    passes = epoch_passes(cfg.epoch_images, len(data.train_rows))
    per_rank_images = -(-len(data.train_rows) * passes // world.size)  # DDP pads shards evenly
    train_loader = BatchLoader(data.cache, data.train_rows, per_rank, seed=cfg.seed,
                               rank=world.rank, world_size=world.size, device=device,
                               passes=passes,
                               # a last batch of one image breaks BatchNorm: drop it
                               drop_last=per_rank_images % per_rank == 1)
    val_loader = BatchLoader(data.val_cache, data.val_rows, per_rank, shuffle=False,
                             rank=world.rank, world_size=world.size, device=device)
    micro = cfg.micro_batch or _auto_micro_batch(model, cfg.image_size, per_rank, device)
    micro = min(micro, per_rank)
    if micro < per_rank:
        _log(world, f"imgcls: note: {per_rank} images at once do not fit in free memory here; "
             f"each step accumulates gradients over passes of about {micro} (BatchNorm sees "
             f"{micro} images at a time; --micro-batch to choose)" if not cfg.micro_batch else
             f"imgcls: note: each step accumulates gradients over passes of about {micro} images",
             file=sys.stderr)
    if micro == 1 or per_rank == 1:
        _log(world, "imgcls: warning: BatchNorm sees one image at a time per rank: its batch "
             "statistics are noise; use a larger --batch-size (or --micro-batch)", file=sys.stderr)
    steps = len(train_loader)
    autocast, scaler = autocast_for(device, cfg.amp, training=True)
    w = class_weights(cfg, data.cache.labels[data.train_rows], n_classes)
    # A run started with one parameter group (before 0.2) resumes with the rule it had.
    decay_all = cfg.decay_1d or (resumed is not None and
                                 len(resumed.train_meta["optimizer"]["param_groups"]) == 1)
    state = TrainState(model, net, make_optimizer(cfg, model, decay_all), scaler, autocast,
                       torch.Generator(device=device), None if w is None else w.to(device, dtype),
                       micro, steps, steps * cfg.epochs, int(round(cfg.warmup_epochs * steps)))
    state.class_names = list(data.index.class_names)
    state.dtype = dtype
    state.epochs = cfg.epochs
    state.eval_autocast = autocast_for(device, cfg.amp, training=False)[0]
    state.mixup = mixup_alpha(cfg.mixup, passes)
    if cfg.bn_recalibrate > 0 and needs_recalibration(model, steps):
        state.recal_loader = BatchLoader(data.cache, data.train_rows, per_rank, seed=cfg.seed + 1,
                                         rank=world.rank, world_size=world.size, device=device)
    if resumed is not None:
        _restore(state, resumed, cfg, world)
    return state, train_loader, val_loader


def _restore(state: TrainState, ckpt: Checkpoint, cfg: TrainConfig, world: D.World) -> None:
    tm = ckpt.train_meta
    load_optimizer_state(state.opt, ckpt.train_tensors, tm["optimizer"])
    if state.scaler is not None and tm.get("scaler"):
        state.scaler.load_state_dict(tm["scaler"])
    state.epoch, state.step = tm["epoch"], tm["step"]
    state.partial = tm.get("partial")
    if state.step and tm.get("world_size", 1) != world.size:
        _log(world, f"imgcls: note: the run stopped mid-epoch on {tm.get('world_size')} ranks; "
             f"on {world.size} it restarts epoch {state.epoch + 1} from its beginning",
             file=sys.stderr)
        state.step, state.partial = 0, None
    if state.step >= state.steps:  # the data shrank since: start the next epoch
        state.step, state.partial = 0, None
    state.history, state.best, state.bad_epochs = tm["history"], tm["best"], tm["bad_epochs"]
    state.resumed = ckpt
    old_epochs = ckpt.meta.get("config", {}).get("epochs", cfg.epochs)
    fitted = tm.get("schedule_epochs")
    if fitted and old_epochs == cfg.epochs and cfg.time_limit:
        state.plan(min(cfg.epochs, max(fitted, state.epoch + 1)))
    if old_epochs != cfg.epochs and cfg.schedule != "constant":
        g = state.epoch * state.steps + state.step
        now = cfg.lr * lr_factor(g, state.steps * old_epochs, state.warmup, cfg.schedule)
        new = cfg.lr * lr_factor(g, state.total_steps, state.warmup, cfg.schedule)
        change = (f"the next step runs at {new:.3g} instead of {now:.3g}"
                  if abs(new - now) > 1e-3 * max(abs(now), 1e-12) else
                  f"the next step's rate stays {now:.3g} (still warming up); the decay after "
                  "it is stretched or shortened")
        _log(world, f"imgcls: note: --epochs {cfg.epochs} (was {old_epochs}) re-times the "
             f"{cfg.schedule} learning-rate schedule over {cfg.epochs} epochs: {change}",
             file=sys.stderr)


def _rng_states(state: TrainState, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random streams: dropout/mixup (torch's global) and augmentation."""
    out = {"rng.cpu": torch.get_rng_state(), "rng.aug": state.aug_gen.get_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def gather_rng_states(state: TrainState, world: D.World, device: torch.device) -> dict:
    """Every rank's random streams, as "rng.cpu.R" etc. (called on every rank), so a run
    stopped mid-epoch resumes each rank with its own streams, not rank 0's."""
    mine = _rng_states(state, device)
    if not world.active:
        return mine
    out = {}
    for key, t in mine.items():
        local = t.to(device)
        parts = [torch.empty_like(local) for _ in range(world.size)]
        torch.distributed.all_gather(parts, local)
        out.update({f"{key}.{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def _checkpoint(state: TrainState, meta_base: dict, world: D.World, device: torch.device,
                epoch_done: int, step_done: int, metrics: dict, full: bool = True,
                partial: list[float] | None = None, rng: dict | None = None) -> Checkpoint:
    """epoch_done = finished epochs, step_done = steps into the next one; rng: every rank's
    streams (gather_rng_states) for a mid-epoch checkpoint."""
    train_tensors, train_meta = {}, {}
    if full:
        t, om = optimizer_state(state.opt)
        train_tensors = dict(t, **(rng or _rng_states(state, device)))
        train_meta = {"optimizer": om, "epoch": epoch_done, "step": step_done,
                      "history": state.history, "best": state.best,
                      "bad_epochs": state.bad_epochs, "world_size": world.size,
                      "partial": partial, "schedule_epochs": state.epochs,
                      # the run's wall-clock so far: --time-limit is the run's total
                      "elapsed_s": time.perf_counter() - state.started,
                      "scaler": state.scaler.state_dict() if state.scaler is not None else None}
    return Checkpoint(state.model.state_dict(), dict(meta_base, epoch=epoch_done,
                                                     step=step_done, metrics=metrics),
                      train_tensors, train_meta)


# ----------------------------------------------------------------------------- epoch rules


def _diverged_message(cfg: TrainConfig, global_step: int, steps: int, run: Path,
                      last_epoch: int) -> str:
    epoch, step = divmod(global_step - 1, steps)
    kept = (f"the last finite checkpoint is kept ({display(run / LAST)}, epoch {last_epoch})"
            if last_epoch else "no epoch had finished, so nothing was saved")
    return (f"training diverged: the loss became NaN or infinite at epoch {epoch + 1}, step "
            f"{step + 1} (learning rate {cfg.lr:g}, weight decay {cfg.weight_decay:g}; a "
            f"learning rate or weight decay too high is the usual cause); {kept}")


def epoch_stops(cfg: TrainConfig, state: TrainState, h: dict, stop: _StopFlag,
                world: D.World, device: torch.device) -> dict:
    """The stop rules after an epoch, agreed by every rank (each rank's clock and signals
    may differ; the validation metrics are already the same everywhere)."""
    out_of_time = bool(cfg.time_limit and state.epoch + 1 < state.epochs and
                       h["elapsed_s"] + h["seconds"] > cfg.time_limit * 60)
    patience = bool(cfg.patience and state.bad_epochs >= cfg.patience)
    fit = epochs_that_fit(cfg, state, h)
    # max of -fit: the fewest epochs any rank's clock allows.
    return D.agree(world, device, signal=stop.signal is not None, time=out_of_time,
                   patience=patience, fit=-fit,
                   nonfinite=not (math.isfinite(h["val_loss"]) and math.isfinite(h["loss"])))


def _refit_schedule(cfg: TrainConfig, state: TrainState, fit: int, world: D.World) -> None:
    if fit == state.epochs:
        return
    if abs(fit - state.epochs) >= 2 or state.epochs == cfg.epochs:  # small drifts quietly
        _log(world, f"Time limit: at this pace {fit} epochs fit in {cfg.time_limit:g} minutes; "
             f"the {cfg.schedule} learning-rate schedule now ends with epoch {fit} (was "
             f"{state.epochs})")
    state.plan(fit)


def epochs_that_fit(cfg: TrainConfig, state: TrainState, h: dict) -> int:
    """The epochs the learning-rate schedule should run over: under --time-limit with a
    decaying schedule, as many as the time left allows at this run's pace so far (never more
    than planned), so the run still ends on the schedule's small final rates instead of
    being cut at a high one; otherwise the plan."""
    if not cfg.time_limit or cfg.schedule == "constant":
        return state.epochs
    per_epoch = float(np.median(state.paces or [h["seconds"]]))
    left = cfg.time_limit * 60 - h["elapsed_s"]
    # Up to cfg.epochs, not just the current plan: a first epoch slowed by warm-up may have
    # planned too few.
    return max(state.epoch + 1, min(cfg.epochs, state.epoch + 1 + int(left // per_epoch)))


# ----------------------------------------------------------------------------- fit


def fit(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False,
        made_here: bool = False) -> FitResult:
    """Train per cfg into run_dir. Raises UserError for bad input (one line, no traceback).

    made_here: run_dir was made empty for this run (removed again if the run stops before
    writing anything)."""
    run = Path(run_dir).expanduser().resolve()
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    world = D.init(device.type)
    try:
        return _fit(cfg, run, resume, device, world, started, made_here)
    except (RuntimeError, OSError) as exc:
        if not world.active or not _looks_like_lost_peer(exc):
            raise
        raise UserError(f"rank {world.rank}: lost contact with the other ranks ({_first_line(exc)}); "
                        f"a rank probably died. The last complete checkpoint is kept: resume with "
                        f"`imgcls train --resume {display(run)}` (any number of ranks)") from None
    finally:
        D.shutdown(world)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _looks_like_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("connection closed", "connection reset", "broken pipe",
                                   "timed out", "timeout", "peer", "gloo", "nccl", "socket"))


def _precision_line(device: torch.device, amp: str) -> str:
    from imgcls.runtime import precision_for

    p = precision_for(device.type, amp, training=True)
    if p == "fp64":
        return "float64 throughout (--amp fp64: for checking, several times slower)"
    if p == "fp32":
        why = ("--amp off" if amp == "off" else "--amp auto trains in float32 on a CPU; "
               "--amp bf16 to train in bf16")
        line = f"float32 ({why})"
        if precision_for(device.type, amp, training=False) == "bf16":
            line += "; validation in bf16, which this CPU computes natively"
        return line
    why = {"auto": "this CPU computes bf16 natively" if device.type == "cpu" else "the GPU's",
           "bf16": "--amp bf16", "fp16": "--amp fp16"}[amp]
    return f"{p} mixed precision, weights in float32 ({why}; --amp off for float32)"


def _setup_device(cfg: TrainConfig, device: torch.device, world: D.World) -> torch.device:
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
        if cfg.threads < 0:
            raise UserError(f"--threads must be 0 (all cores) or more, not {cfg.threads}")
        torch.set_num_threads(cfg.threads or max(1, cpu_threads() // max(1, _local_world())))
    else:
        # cuDNN autotuning stays off: on an H200 it cost 22 s for the first full batch and 16 s
        # for the epoch's last, partial one (4.8 and 4.5 s without), to run steps 2.6% faster,
        # so it pays only after ~20 minutes of training (bench/cudnn_warmup.py).
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.batch_size % world.size:
        raise UserError(f"batch size {cfg.batch_size} is not divisible by the {world.size} "
                        "ranks: per-rank batch = global batch / world size")
    return device


def _fit(cfg: TrainConfig, run: Path, resume: bool, device: torch.device,
         world: D.World, started: float, made_here: bool = False) -> FitResult:
    device = _setup_device(cfg, device, world)
    lock = RunLock(run, made_here) if world.main else None
    problem = None
    if lock is not None:
        try:
            holder = lock.acquire()
            if holder is not None:
                problem = (f"{display(run)} is in use by another imgcls run ({holder}); wait "
                           "for it to end, or choose another --out")
        except UserError as exc:
            problem = str(exc)
    try:
        # Every rank hears rank 0's answer before any of them reads a photo.
        if D.agree(world, device, busy=problem is not None)["busy"]:
            _stop_everywhere(world, problem or "rank 0 could not take the run folder")
        return _fit_locked(cfg, run, resume, device, world, started)
    finally:
        if lock is not None:
            lock.release()


def _fit_locked(cfg: TrainConfig, run: Path, resume: bool, device: torch.device,
                world: D.World, started: float) -> FitResult:
    writer = RunWriter(run, cfg.keep)
    resumed = None
    if resume:
        resumed, resumed_path, skipped = find_resumable(run)
        for w in skipped:
            _log(world, f"imgcls: warning: skipping {w}", file=sys.stderr)
    elif D.agree(world, device, taken=world.main and writer.holds_run())["taken"]:
        _stop_everywhere(world, f"{display(run)} already holds a run; continue it with "
                         f"`imgcls train --resume {display(run)}` or choose another --out")

    data = prepare_data(cfg, world, run, resume, None if resumed is None else
                        PreprocessSpec.from_dict(resumed.meta["preprocess"]))
    index = data.index
    n_classes = len(index.class_names)
    _log(world, f"Found {len(index.samples) + (len(data.split.val.samples) if cfg.val_dir else 0)}"
         f" files belonging to {n_classes} classes.\n" + "\n".join(data.split.summary_lines()))
    if cfg.max_per_class:
        _log(world, f"(a seeded sample of at most {cfg.max_per_class} photos per class: "
             "--max-per-class)")
    for line in _scan_lines(index, cfg) + [f"imgcls: warning: {w}" for w in data.warnings]:
        _log(world, line, file=sys.stderr)
    D.check_consistent(world, {"fingerprint": index.fingerprint, "torch": torch.__version__,
                               "imgcls": __version__, "batch": cfg.batch_size,
                               "cache": str(data.cache.folder)})
    state, train_loader, val_loader = build_state(cfg, data, device, world, resumed, run)
    state.started = started - (_elapsed_before(resumed) if resumed is not None else 0.0)
    _log(world, f"Precision: {_precision_line(device, cfg.amp)}")
    if train_loader.passes > 1:
        _log(world, f"Each epoch passes {train_loader.passes} times over the "
             f"{len(data.train_rows)} training photos ({state.steps} steps; --epoch-images "
             f"{cfg.epoch_images}: a small folder needs more steps than epochs)"
             + (f", with mixup (alpha {state.mixup:g}; --mixup 0 for none)"
                if state.mixup and cfg.mixup < 0 else ""))
    if resumed is not None:
        _log(world, f"Resuming {display(run)} from {display(resumed_path.name)}: epoch "
             f"{state.epoch + 1}, step {state.step}/{state.steps}")
    if world.main:
        writer.start(cfg.to_dict(), _data_summary(data))
        if not resume or not data.pinned:
            write_record(run, data.split)
    meta_base = {"class_names": index.class_names, "preprocess": data.spec.to_dict(),
                 "model": ModelConfig(cfg.model, n_classes, dict(cfg.model_options)).to_dict(),
                 "config": cfg.to_dict(), "data_fingerprint": index.fingerprint}
    if cfg.time_limit and resumed is not None and \
            time.perf_counter() - state.started >= cfg.time_limit * 60:
        _log(world, f"Time limit: this run has already trained for "
             f"{(time.perf_counter() - state.started) / 60:.1f} of its {cfg.time_limit:g} "
             "minutes (--time-limit is the run's total); give a larger --time-limit to train on")
        return FitResult(run, state.history, _best_epoch(cfg, state.history))
    with _StopFlag() as stop:
        return _epochs(cfg, run, state, train_loader, val_loader, writer, meta_base, world,
                       device, stop, state.started)


def _epochs(cfg, run, state: TrainState, train_loader, val_loader, writer: RunWriter,
            meta_base: dict, world: D.World, device: torch.device, stop: _StopFlag,
            started: float) -> FitResult:
    """The epoch loop: train, validate, save, then the agreed stop rules."""
    result = FitResult(run, state.history)
    tb = _tensorboard(run) if world.main else None
    first = state.epoch
    try:
        epoch = first
        while epoch < state.epochs:
            state.epoch = epoch
            mid = epoch == first and state.step > 0
            train_loader.set_epoch(epoch, state.step if mid else 0)
            _seed_epoch(state, cfg, world, device, epoch, mid)
            bar = _bar(world, state.steps, epoch, state.epochs, state.step if mid else 0)
            hint = ((lambda s, k: _cpu_hint(cfg, state.steps, s, k))
                    if epoch == first and device.type == "cpu" and world.main else None)
            out = train_epoch(state, cfg, train_loader, world, device, stop,
                              state.step if mid else 0, bar, hint)
            state.partial, state.step = None, 0
            if bar is not None:
                bar.close()
            if out.stop.get("nonfinite"):
                _stop_everywhere(world, _diverged_message(
                    cfg, int(out.stop["nonfinite"]), state.steps, run,
                    state.history[-1]["epoch"] if state.history else 0))
            if out.stop.get("signal") and out.step < state.steps:
                D.all_sum(world, out.sums)  # partial sums of every rank, for the resume
                rng = gather_rng_states(state, world, device)
                if world.main:
                    s = out.sums.tolist()
                    writer.save(run / LAST, _checkpoint(
                        state, meta_base, world, device, epoch, out.step, {},
                        partial=[s[0], s[1], s[2], out.seen * world.size, out.seconds],
                        rng=rng))
                D.barrier(world)
                _log(world, f"Stopped in epoch {epoch + 1} at step {out.step}/{state.steps}. "
                     f"Resume with: imgcls train --resume {display(run)}")
                result.interrupted = True
                return result
            h = _finish_epoch(cfg, state, out, val_loader, world, device, started)
            last_saved = state.history[-1]["epoch"] if state.history else 0
            improved = _score_epoch(cfg, state, h, result)
            decision = epoch_stops(cfg, state, h, stop, world, device)
            if decision["nonfinite"]:  # never save, nor call best, a model that outputs NaN
                _stop_everywhere(world, _diverged_message(
                    cfg, (epoch + 1) * state.steps, state.steps, run, last_saved))
            _refit_schedule(cfg, state, int(-decision["fit"]), world)
            _save_epoch(cfg, state, h, improved, writer, meta_base, world, device, tb)
            if decision["signal"]:
                result.interrupted = True
                _log(world, f"Stopped after epoch {epoch + 1}. Resume with: "
                     f"imgcls train --resume {display(run)}")
                return result
            if decision["time"]:
                _log(world, f"Time limit: another epoch would end past {cfg.time_limit:g} "
                     f"minutes; stopping after epoch {epoch + 1}.")
                break
            if decision["patience"]:
                result.stopped_early = True
                _log(world, f"Early stopping: {cfg.monitor} has not improved for {cfg.patience} "
                     f"epochs (best {state.best:.4f} at epoch {result.best_epoch}).")
                break
            D.barrier(world)
            epoch += 1
    finally:
        if tb is not None:
            tb.close()
    if not result.best_epoch:
        result.best_epoch = _best_epoch(cfg, state.history)
    return result


def _best_epoch(cfg: TrainConfig, history: list[dict]) -> int:
    if not history:
        return 0
    vals = [h[cfg.monitor] for h in history]
    return 1 + (int(np.argmax(vals)) if MAXIMIZE[cfg.monitor] else int(np.argmin(vals)))


def _elapsed_before(ckpt: Checkpoint) -> float:
    """Seconds the run had trained when ckpt was saved (older checkpoints: the last
    epoch's clock)."""
    tm = ckpt.train_meta
    if tm.get("elapsed_s") is not None:
        return float(tm["elapsed_s"])
    history = tm.get("history") or []
    return float(history[-1].get("elapsed_s", 0.0)) if history else 0.0


def _seed_epoch(state: TrainState, cfg: TrainConfig, world: D.World, device: torch.device,
                epoch: int, mid: bool) -> None:
    if mid and state.resumed is not None:
        t = state.resumed.train_tensors

        def own(key: str) -> str:  # this rank's streams (older checkpoints: rank 0's only)
            return f"{key}.{world.rank}" if f"{key}.{world.rank}" in t else key

        torch.set_rng_state(t[own("rng.cpu")])
        state.aug_gen.set_state(t[own("rng.aug")].to("cpu"))
        if device.type == "cuda" and own("rng.cuda") in t:
            torch.cuda.set_rng_state(t[own("rng.cuda")], device)
    else:
        torch.manual_seed(_seed_for(cfg.seed, epoch, world.rank, 0))
        state.aug_gen.manual_seed(_seed_for(cfg.seed, epoch, world.rank, 1))


def _finish_epoch(cfg: TrainConfig, state: TrainState, out: EpochOutcome, val_loader,
                  world: D.World, device: torch.device, started: float) -> dict:
    """Reduce the epoch's sums, validate, and return its metrics line."""
    t_val = time.perf_counter()
    D.all_sum(world, out.sums)
    if state.recal_loader is not None:
        state.recal_loader.set_epoch(state.epoch)
        recalibrate(state.model, state.recal_loader, cfg.bn_recalibrate, state.micro,
                    state.autocast, world)
    # The bare model, not the DDP wrapper: a rank with fewer validation batches (or none)
    # must not wait in a collective of a DDP forward that the others do not enter.
    v = run_validation(state.model, val_loader, world, state.eval_autocast,
                       len(state.class_names))
    s = out.sums.tolist()
    h = {"epoch": state.epoch + 1, "loss": s[0] / max(1.0, s[2]),
         "accuracy": s[1] / max(1.0, s[2]), "val_loss": v.loss, "val_accuracy": v.accuracy,
         "lr": state.opt.param_groups[0]["lr"],
         "images_per_s": out.seen * world.size / max(out.seconds, 1e-9),
         "seconds": out.seconds + time.perf_counter() - t_val,
         "elapsed_s": time.perf_counter() - started}
    state.paces.append(h["seconds"])
    warning = collapse_warning(v.pred_counts, v.true_counts, v.accuracy, h["accuracy"],
                               state.class_names, state.epoch + 1)
    if warning:
        h["collapsed"] = True
        if not state.warned_collapse or state.epoch + 1 == state.epochs:
            _log(world, f"imgcls: warning: {warning}", file=sys.stderr)
            state.warned_collapse = True
    if world.active:
        h["rank_weight_sums"] = _weights_checksum(world, state.model, device)
        if len(set(h["rank_weight_sums"])) != 1:
            raise RuntimeError(f"DDP ranks diverged: weight sums {h['rank_weight_sums']}")
    return h


def _score_epoch(cfg: TrainConfig, state: TrainState, h: dict, result: FitResult) -> bool:
    """Add the epoch to the history; whether it is the best so far by cfg.monitor."""
    state.history.append(h)
    value = h[cfg.monitor]
    improved = state.best is None or (value > state.best if MAXIMIZE[cfg.monitor] else value < state.best)
    if improved:
        state.best, state.bad_epochs, result.best_epoch = value, 0, state.epoch + 1
    else:
        state.bad_epochs += 1
    return improved


def _save_epoch(cfg: TrainConfig, state: TrainState, h: dict, improved: bool,
                writer: RunWriter, meta_base: dict, world: D.World, device: torch.device,
                tb) -> None:
    if world.main:
        full = _checkpoint(state, meta_base, world, device, state.epoch + 1, 0, h)
        best = _checkpoint(state, meta_base, world, device, state.epoch + 1, 0, h,
                           full=False) if improved else None
        writer.end_epoch(state.epoch + 1, full, best, state.history)
        if tb is not None:
            for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"):
                tb.add_scalar(k, h[k], state.epoch + 1)
            tb.flush()
    _log(world, _epoch_line(h, state.epochs))


def _epoch_line(h: dict, epochs: int) -> str:
    return (f"Epoch {h['epoch']}/{epochs}  loss {h['loss']:.4f}  accuracy {h['accuracy']:.4f}  "
            f"val_loss {h['val_loss']:.4f}  val_accuracy {h['val_accuracy']:.4f}  "
            f"{h['images_per_s']:.1f} img/s  {h['seconds']:.1f}s")


def _cpu_hint(cfg: TrainConfig, steps: int, seconds: float, done: int) -> None:
    """On a CPU, say what the tutorial recipe will cost and point to the CPU preset."""
    if cfg.model != "xception" or done <= 0:
        return
    per_epoch = seconds / done * steps
    if per_epoch < 300:
        return
    fmt = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"
    print(f"imgcls: note: on this CPU one epoch of {cfg.model} at {cfg.image_size} px takes about "
          f"{fmt(per_epoch)} ({cfg.epochs} epochs: {fmt(per_epoch * cfg.epochs)}). "
          "`--preset cpu` trains a CPU-sized network instead (see BENCHMARKS.md).",
          file=sys.stderr, flush=True)


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: assume it fits


def _auto_micro_batch(model: nn.Module, size: int, batch: int, device: torch.device) -> int:
    """Largest divisor of batch whose activations fit in 60% of free memory.

    Activation bytes per image = the sum of every layer's output for one image (measured by
    a no-grad forward), doubled for gradients and allocator slack. The tutorial's network at
    180 px needs ~115 MB per image, so its batch of 128 (~30 GB) was killed by the kernel's
    OOM killer on a 24 GB machine before this existed.
    """
    total = [0]

    def hook(mod, inp, out):
        if torch.is_tensor(out):
            total[0] += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    per_image = 2 * total[0]
    budget = 0.6 * _available_memory(device)
    if batch * per_image <= budget:
        return batch
    micro = max(1, int(budget // per_image))
    while batch % micro:
        micro -= 1
    return micro


def _weights_checksum(world: D.World, model: nn.Module, device: torch.device) -> list[float]:
    """Each rank's sum of all weights; DDP keeps them identical, so a difference is a bug."""
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for p in model.parameters():
        total += p.detach().double().sum()
    if not world.active:
        return [total.item()]
    out = [torch.zeros_like(total) for _ in range(world.size)]
    torch.distributed.all_gather(out, total)
    return [t.item() for t in out]


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def _check_resume_matches(ckpt: Checkpoint, mcfg: ModelConfig, class_names: list[str],
                          spec: PreprocessSpec, run: Path) -> None:
    m = ckpt.meta
    if m["class_names"] != class_names:
        raise UserError(f"cannot resume {display(run)}: it was trained on classes "
                        f"{m['class_names']}, this data has {class_names}")
    if m["model"] != mcfg.to_dict():
        raise UserError(f"cannot resume {display(run)}: it trained model {m['model']['name']} "
                        f"{m['model'].get('options') or ''}, not {mcfg.name} {mcfg.options or ''}")
    if PreprocessSpec.from_dict(m["preprocess"]) != spec:
        raise UserError(f"cannot resume {display(run)}: its images were prepared differently "
                        f"({m['preprocess']})")


def _bar(world: D.World, steps: int, epoch: int, epochs: int, initial: int):
    from imgcls.runtime import interactive

    if not world.main or not interactive():
        return None
    from tqdm.auto import tqdm  # widgets in Jupyter, text elsewhere

    return tqdm(total=steps, initial=initial, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                leave=False, dynamic_ncols=True)


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tb"))
