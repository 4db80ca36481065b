"""fit(): scan, split, cache, then train with safe checkpoints and exact resume.

Owns the training loop and the run folder:
    run/config.json          the resolved TrainConfig
    run/data.json            scan summary, split sizes, data fingerprints
    run/metrics.jsonl        one JSON object per finished epoch
    run/checkpoints/epoch_NNN.safetensors   resumable, one per epoch (--keep N)
    run/last.safetensors     resumable: the newest state (an epoch, or a Ctrl-C)
    run/best.safetensors     weights only, best by --monitor: what predict/export use
    run/tb/                  TensorBoard scalars, when tensorboard is installed
Reproducibility: the data order comes from (seed, epoch), and the dropout and augmentation
generators are re-seeded from (seed, epoch, rank) at each epoch start, so a run resumed at an
epoch boundary retraces an uninterrupted one bit for bit on the CPU; a mid-epoch checkpoint
(Ctrl-C) stores the generator states themselves.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from imgcls import __version__
from imgcls import distributed as D
from imgcls.augment import AugmentConfig, augment_batch, to_float
from imgcls.cache import build_cache
from imgcls.checkpoint import (BEST, LAST, Checkpoint, epoch_path, find_resumable,
                               save_checkpoint)
from imgcls.config import TrainConfig
from imgcls.errors import UserError
from imgcls.fsutil import atomic_write_bytes, atomic_write_json, display, temp_path_for
from imgcls.loader import BatchLoader
from imgcls.models import ModelConfig, create_model
from imgcls.preprocess import PreprocessSpec
from imgcls.runtime import cpu_threads, keep_freed_memory
from imgcls.scan import ScanOptions, report_dict, scan
from imgcls.split import split_index, split_with_val_dir

MAXIMIZE = {"val_accuracy": True, "accuracy": True, "val_loss": False, "loss": False}


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available to PyTorch "
                        f"(torch {torch.__version__} is a {'CUDA' if torch.version.cuda else 'CPU-only'} build)")
    return dev


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    # one-cycle: after the warm-up, cosine down to 1/1000 of the peak (as fastai/timm do)
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * progress))


def _seed_for(cfg_seed: int, epoch: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([cfg_seed, epoch, rank, stream]).generate_state(1)[0])


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary."""

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
              "after this step (again to quit now)", file=sys.stderr)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _log(world: D.World, *args, **kw):
    if world.main:
        print(*args, **kw, flush=True)


def prepare_data(cfg: TrainConfig, world: D.World):
    """Scan, split and cache (rank 0 builds the caches, the others wait and reuse them)."""
    opts = ScanOptions(max_pixels=cfg.max_pixels, cache_dir=cfg.cache_dir,
                       progress=None if world.main else False)
    spec = PreprocessSpec(cfg.image_size, cfg.image_size, resize=cfg.resize)
    out = None
    for turn in ("main", "others"):
        if (turn == "main") == world.main:
            index = scan(cfg.data_dir, opts)
            val_index = scan(cfg.val_dir, opts) if cfg.val_dir else None
            sp = (split_with_val_dir(index, val_index) if val_index else
                  split_index(index, cfg.val_split, cfg.seed, cfg.split))
            progress = None if world.main else False
            kw = dict(max_pixels=cfg.max_pixels, progress=progress, build=world.main)
            cache = build_cache(index, spec, cfg.cache_dir, **kw)
            val_cache = build_cache(val_index, spec, cfg.cache_dir, **kw) if val_index else cache
            out = (index, sp, spec, cache, val_cache)
        D.barrier(world)
    return out


def _class_weights(cfg: TrainConfig, labels: np.ndarray, n: int) -> torch.Tensor | None:
    if cfg.class_weights == "none":
        return None
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    return torch.tensor(counts.sum() / (n * np.maximum(counts, 1)), dtype=torch.float32)


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state as (tensors, JSON-able) for a pickle-free checkpoint."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _autocast(device: torch.device, amp: str):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return nullcontext, None
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    if amp == "auto" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


@torch.no_grad()
def run_validation(model: nn.Module, loader: BatchLoader, world: D.World,
                   autocast) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over every validation image, across all ranks."""
    model.eval()
    dev = loader.device
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss, correct, count
    for b in loader:
        x = to_float(b.images)
        with autocast():
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, b.labels, reduction="sum").double()
        sums[1] += (logits.argmax(1) == b.labels).sum()
        sums[2] += len(b.labels)
    D.all_sum(world, sums)
    n = max(sums[2].item(), 1)
    return sums[0].item() / n, sums[1].item() / n


def _write_metrics(run: Path, history: list[dict]) -> None:
    atomic_write_bytes(run / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())


def _epoch_line(h: dict, epochs: int) -> str:
    return (f"Epoch {h['epoch']}/{epochs}  loss {h['loss']:.4f}  accuracy {h['accuracy']:.4f}  "
            f"val_loss {h['val_loss']:.4f}  val_accuracy {h['val_accuracy']:.4f}  "
            f"{h['images_per_s']:.1f} img/s  {h['seconds']:.1f}s")


def fit(cfg: TrainConfig, run_dir: str | os.PathLike, resume: bool = False) -> FitResult:
    """Train per cfg into run_dir. Raises UserError for bad input (one line, no traceback)."""
    run = Path(run_dir).expanduser().resolve()
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    world = D.init(device.type)
    try:
        return _fit(cfg, run, resume, device, world, started)
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


def _fit(cfg: TrainConfig, run: Path, resume: bool, device: torch.device,
         world: D.World, started: float) -> FitResult:
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
        torch.set_num_threads(cfg.threads or max(1, cpu_threads() // max(1, _local_world())))
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.batch_size % world.size:
        raise UserError(f"batch size {cfg.batch_size} is not divisible by the {world.size} "
                        "ranks: per-rank batch = global batch / world size")
    per_rank_batch = cfg.batch_size // world.size

    resumed = None
    if resume:
        resumed, resumed_path, skipped = find_resumable(run)
        for w in skipped:
            _log(world, f"imgcls: warning: skipping {w}", file=sys.stderr)
    elif world.main and (run / LAST).exists():
        raise UserError(f"{display(run)} already holds a run; continue it with "
                        f"`imgcls train --resume {display(run)}` or choose another --out")

    index, sp, spec, cache, val_cache = prepare_data(cfg, world)
    n_classes = len(index.class_names)
    _log(world, f"Found {len(index.samples) + (len(sp.val.samples) if cfg.val_dir else 0)} files "
         f"belonging to {n_classes} classes.\nUsing {len(sp.train.samples)} files for training.\n"
         f"Using {len(sp.val.samples)} files for validation.")
    train_rows, val_rows = cache.rows_for([s.path for s in sp.train.samples]), \
        val_cache.rows_for([s.path for s in sp.val.samples])
    D.check_consistent(world, {"fingerprint": index.fingerprint, "torch": torch.__version__,
                               "imgcls": __version__, "batch": cfg.batch_size,
                               "cache": str(cache.folder)})

    mcfg = ModelConfig(cfg.model, n_classes, dict(cfg.model_options))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    try:
        model = create_model(mcfg)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    min_size = getattr(model, "min_size", 1)
    if cfg.image_size < min_size:
        raise UserError(f"image size {cfg.image_size} px is too small for {cfg.model}: "
                        f"it needs at least {min_size} px")
    if resumed is not None:
        _check_resume_matches(resumed, mcfg, index.class_names, spec, run)
        model.load_state_dict(resumed.weights)
    model.to(device)
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

    opt = _make_optimizer(cfg, model)
    autocast, scaler = _autocast(device, cfg.amp)
    weights = _class_weights(cfg, cache.labels[train_rows], n_classes)
    loss_fn = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device),
                                  label_smoothing=cfg.label_smoothing)
    train_loader = BatchLoader(cache, train_rows, per_rank_batch, seed=cfg.seed, rank=world.rank,
                               world_size=world.size, device=device,
                               # a last batch of one image breaks BatchNorm: drop it
                               drop_last=len(train_rows) % cfg.batch_size == 1)
    val_loader = BatchLoader(val_cache, val_rows, per_rank_batch, shuffle=False, rank=world.rank,
                             world_size=world.size, device=device)
    micro = cfg.micro_batch or _auto_micro_batch(model, cfg.image_size, per_rank_batch, device)
    if micro < per_rank_batch:
        _log(world, f"imgcls: note: {per_rank_batch} images at once do not fit in free memory here; "
             f"each step accumulates gradients over passes of {micro} (BatchNorm sees {micro} "
             "images at a time; --micro-batch to choose)", file=sys.stderr)
    steps = len(train_loader)
    total_steps = steps * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps))
    aug_cfg = AugmentConfig(cfg.flip, cfg.rotation, cfg.zoom, cfg.translate, cfg.brightness,
                            cfg.contrast)
    aug_gen = torch.Generator(device=device)

    history: list[dict] = []
    start_epoch, start_step, best, bad_epochs = 0, 0, None, 0
    if resumed is not None:
        tm = resumed.train_meta
        _load_optimizer_state(opt, resumed.train_tensors, tm["optimizer"])
        if scaler is not None and tm.get("scaler"):
            scaler.load_state_dict(tm["scaler"])
        start_epoch, start_step = tm["epoch"], tm["step"]
        if start_step and tm.get("world_size", 1) != world.size:
            _log(world, f"imgcls: note: the run stopped mid-epoch on {tm.get('world_size')} ranks; "
                 f"on {world.size} it restarts epoch {start_epoch + 1} from its beginning",
                 file=sys.stderr)
            start_step = 0
        history, best, bad_epochs = tm["history"], tm["best"], tm["bad_epochs"]
        _log(world, f"Resuming {display(run)} from {display(resumed_path.name)}: epoch "
             f"{start_epoch + 1}, step {start_step}/{steps}")
    if world.main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg.to_dict())
        atomic_write_json(run / "data.json", {
            "scan": report_dict(index), "split": sp.method, "train_images": len(train_rows),
            "val_images": len(val_rows), "train_fingerprint": sp.train.fingerprint,
            "val_fingerprint": sp.val.fingerprint, "cache": str(cache.folder),
            "dropped": [d.__dict__ for d in cache.dropped]})
    tb = _tensorboard(run) if world.main else None
    meta_base = {"class_names": index.class_names, "preprocess": spec.to_dict(),
                 "model": mcfg.to_dict(), "config": cfg.to_dict(),
                 "data_fingerprint": index.fingerprint}
    result = FitResult(run, history)

    def save(epoch_done: int, step_done: int, metrics: dict, path: Path, full: bool = True):
        """Checkpoint; epoch_done = finished epochs, step_done = steps into the next one."""
        train_tensors, train_meta = {}, {}
        if full:
            t, om = _optimizer_state(opt)
            train_tensors = dict(t, **{"rng.cpu": torch.get_rng_state(), "rng.aug": aug_gen.get_state()})
            if device.type == "cuda":
                train_tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
            train_meta = {"optimizer": om, "epoch": epoch_done, "step": step_done, "history": history,
                          "best": best, "bad_epochs": bad_epochs, "world_size": world.size,
                          "scaler": scaler.state_dict() if scaler is not None else None}
        save_checkpoint(path, Checkpoint(model.state_dict(), dict(
            meta_base, epoch=epoch_done, step=step_done, metrics=metrics), train_tensors, train_meta))

    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            mid = resumed is not None and epoch == start_epoch and start_step > 0
            train_loader.set_epoch(epoch, start_step if mid else 0)
            if mid:
                torch.set_rng_state(resumed.train_tensors["rng.cpu"])
                aug_gen.set_state(resumed.train_tensors["rng.aug"].to("cpu"))
                if device.type == "cuda" and "rng.cuda" in resumed.train_tensors:
                    torch.cuda.set_rng_state(resumed.train_tensors["rng.cuda"], device)
            else:
                torch.manual_seed(_seed_for(cfg.seed, epoch, world.rank, 0))
                aug_gen.manual_seed(_seed_for(cfg.seed, epoch, world.rank, 1))
            net.train()
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
            t0, seen = time.perf_counter(), 0
            bar = _bar(world, steps, epoch, cfg.epochs, start_step if mid else 0)
            step = start_step if mid else 0
            for batch in train_loader:
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(epoch * steps + step, total_steps, warmup, cfg.schedule)
                x = to_float(batch.images)
                if aug_cfg.active:
                    x = augment_batch(x, aug_cfg, aug_gen)
                n = len(batch.labels)
                opt.zero_grad(set_to_none=True)
                parts = range(0, n, micro)
                for j, lo in enumerate(parts):
                    xs, ys = x[lo:lo + micro], batch.labels[lo:lo + micro]
                    # DDP: all-reduce gradients once per step, on the last pass only.
                    last = j == len(parts) - 1
                    sync = nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
                    with sync:
                        with autocast():
                            logits = net(xs)
                            loss = loss_fn(logits.float(), ys) * (len(ys) / n)
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    sums[0] += loss.detach().double() * n
                    sums[1] += (logits.detach().argmax(1) == ys).sum()
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sums[2] += n
                seen += n
                step += 1
                if step == 3 and epoch == start_epoch and device.type == "cpu" and world.main:
                    _cpu_hint(cfg, steps, time.perf_counter() - t0, 3 - (start_step if mid else 0))
                if bar is not None:
                    bar.update()
                    if step % 10 == 0 or step == steps:
                        bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.4f}")
                if _should_stop(world, stop, device, step) and step < steps:
                    break
            if bar is not None:
                bar.close()
            if stop.signal is not None and step < steps:
                D.barrier(world)
                if world.main:
                    save(epoch, step, {}, run / LAST)
                _log(world, f"Stopped in epoch {epoch + 1} at step {step}/{steps}. Resume with: "
                     f"imgcls train --resume {display(run)}")
                result.interrupted = True
                return result
            train_time = time.perf_counter() - t0
            D.all_sum(world, sums)
            val_loss, val_acc = run_validation(net, val_loader, world, autocast)
            h = {"epoch": epoch + 1, "loss": sums[0].item() / sums[2].item(),
                 "accuracy": sums[1].item() / sums[2].item(), "val_loss": val_loss,
                 "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"],
                 "images_per_s": seen * world.size / train_time,
                 "seconds": time.perf_counter() - t0,
                 "elapsed_s": time.perf_counter() - started}
            if world.active:
                h["rank_weight_sums"] = _weights_checksum(world, model, device)
                if len(set(h["rank_weight_sums"])) != 1:
                    raise RuntimeError(f"DDP ranks diverged: weight sums {h['rank_weight_sums']}")
            history.append(h)
            value = h[cfg.monitor]
            improved = best is None or (value > best if MAXIMIZE[cfg.monitor] else value < best)
            if improved:
                best, bad_epochs, result.best_epoch = value, 0, epoch + 1
            else:
                bad_epochs += 1
            if world.main:
                path = epoch_path(run, epoch + 1)
                save(epoch + 1, 0, h, path)
                _replace_with_link(path, run / LAST)
                if improved:
                    save(epoch + 1, 0, h, run / BEST, full=False)
                _prune(run, cfg.keep)
                _write_metrics(run, history)
                if tb is not None:
                    for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"):
                        tb.add_scalar(k, h[k], epoch + 1)
                    tb.flush()
            _log(world, _epoch_line(h, cfg.epochs))
            if stop.signal is not None:
                result.interrupted = True
                _log(world, f"Stopped after epoch {epoch + 1}. Resume with: "
                     f"imgcls train --resume {display(run)}")
                return result
            if cfg.time_limit and epoch + 1 < cfg.epochs and (
                    h["elapsed_s"] + h["seconds"] > cfg.time_limit * 60):
                _log(world, f"Time limit: another epoch would end past {cfg.time_limit:g} minutes; "
                     f"stopping after epoch {epoch + 1}.")
                break
            if cfg.patience and bad_epochs >= cfg.patience:
                result.stopped_early = True
                _log(world, f"Early stopping: {cfg.monitor} has not improved for {cfg.patience} epochs "
                     f"(best {best:.4f} at epoch {result.best_epoch}).")
                break
            D.barrier(world)
    if tb is not None:
        tb.close()
    if not result.best_epoch and history:
        vals = [h[cfg.monitor] for h in history]
        result.best_epoch = 1 + (int(np.argmax(vals)) if MAXIMIZE[cfg.monitor] else int(np.argmin(vals)))
    return result


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
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
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


def _should_stop(world: D.World, stop: _StopFlag, device: torch.device, step: int) -> bool:
    """Every rank must stop at the same step, or DDP's next all-reduce would hang.

    Ranks agree every 8 steps only: the all-reduce + .item() would otherwise stall the GPU
    pipeline every step.
    """
    if not world.active:
        return stop.signal is not None
    if step % 8:
        return False
    flag = torch.tensor([1.0 if stop.signal is not None else 0.0], device=device)
    D.all_sum(world, flag)
    if flag.item() and stop.signal is None:
        stop.signal = signal.SIGTERM  # another rank was told to stop
    return bool(flag.item())


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


def _replace_with_link(src: Path, dst: Path) -> None:
    """dst becomes the same file as src, atomically (a hard link renamed into place)."""
    tmp = temp_path_for(dst)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _prune(run: Path, keep: int) -> None:
    if keep <= 0:
        return
    files = sorted((run / "checkpoints").glob("epoch_*.safetensors"))
    for p in files[:-keep]:
        p.unlink(missing_ok=True)


def _bar(world: D.World, steps: int, epoch: int, epochs: int, initial: int):
    if not world.main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=initial, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                leave=False, dynamic_ncols=True)


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tb"))
