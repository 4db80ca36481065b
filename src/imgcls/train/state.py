"""TrainState: the one owner of what changes during a run, and what a checkpoint restores.

Owns building the state (model, optimizer, loaders' sizes, precision, micro-batch size,
resumed counters and schedule), restoring it from a checkpoint, and turning it back into
one (every rank's random streams included, for a mid-epoch stop). The loop (loop.py) and
one epoch (epoch.py) read and advance it; neither defines it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from imgcls.checkpoint import Checkpoint
from imgcls.config import TrainConfig
from imgcls.data.loader import BatchLoader
from imgcls.data.preprocess import PreprocessSpec
from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.models import ModelConfig, create_model
from imgcls.runtime import autocast_for, cpu_threads, keep_freed_memory, precision_for
from imgcls.train.memory import micro_batch
from imgcls.train import distributed as D
from imgcls.train.bnstats import needs_recalibration
from imgcls.train.plan import VAL_SAMPLE, epoch_passes, mixup_alpha
from imgcls.train.optim import (
    class_weights,
    load_optimizer_state,
    lr_factor,
    make_optimizer,
    optimizer_state,
)
from imgcls.train.prepare import TrainData
from imgcls.train.report import log
from imgcls.train.resolution import Pace


@dataclass
class FitResult:
    run_dir: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False


def seed_for(cfg_seed: int, epoch: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([cfg_seed, epoch, rank, stream]).generate_state(1)[0])


class StopFlag:
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
    recal_every: bool = False  # re-estimate them every epoch, not only after smaller sizes
    min_size: int = 1  # px: the network's smallest input (train.resolution never goes below)
    eval_autocast: Callable | None = None  # validation's precision (inference's: bf16 on a
    #                                        CPU that computes it natively)
    class_names: list[str] = field(default_factory=list)
    warned_collapse: bool = False
    epochs: int = 0  # epochs the schedule runs over: cfg.epochs, or fewer under --time-limit
    pace: Pace = field(default_factory=Pace)  # this process's epochs, timed by size
    epoch_end: float | None = None  # perf_counter() at the end of this process's last epoch
    said_seconds: float = 0.0  # the run's length the last pace line told the user (s)
    mixup: float = 0.0  # the alpha in use (cfg.mixup resolved for the data size)
    dtype: torch.dtype = torch.float32  # of the weights and the inputs (float64: --amp fp64)
    started: float = 0.0  # perf_counter() at which the run, earlier sessions included, began
    init: dict | None = None  # the model the run started from (train.source.Source.record)
    top: nn.Module | None = None  # with --tune-units: the part that learns, on stored trunk
    #                               outputs (train.features.TopNet); None: the whole model
    model_config: ModelConfig | None = None  # what every checkpoint records of the network
    val_sample: BatchLoader | None = None  # validation photos for epochs below the full size

    @property
    def eval_net(self) -> nn.Module:
        """What validation runs: the learning part on stored outputs, or the bare model."""
        return self.top if self.top is not None else self.model

    def plan(self, epochs: int) -> None:
        self.epochs, self.total_steps = epochs, self.steps * epochs


def build_state(cfg: TrainConfig, data: TrainData, device: torch.device, world: D.World,
                resumed: Checkpoint | None, run: Path) -> tuple[TrainState, BatchLoader, BatchLoader]:
    model, mcfg, init = _build_model(cfg, data, world, resumed, run)
    dtype = torch.float64 if cfg.amp == "fp64" else torch.float32
    model = _place(model, cfg, device, world, dtype)
    per_rank = cfg.batch_size // world.size
    passes = epoch_passes(cfg.epoch_images, len(data.train_rows))
    eval_autocast = autocast_for(device, cfg.amp)[0]
    top = None
    if cfg.tune_units:
        from imgcls.train.features import feature_loaders

        top, train_loader, val_loader, line = feature_loaders(
            model, cfg, data, per_rank, passes, world, device, eval_autocast,
            precision_for(device.type, cfg.amp))
        log(world, line)
    else:
        train_loader, val_loader = _image_loaders(cfg, data, per_rank, passes, world, device)
    net = model if top is None else top
    if world.active:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    micro = micro_batch(cfg, model, per_rank, device, world)
    steps = len(train_loader)
    autocast, scaler = autocast_for(device, cfg.amp)
    w = class_weights(cfg, data.cache.labels[data.train_rows], len(data.index.class_names))
    # A run started with one parameter group (before 0.2) resumes with the rule it had.
    decay_all = cfg.decay_1d or (resumed is not None and
                                 len(resumed.train_meta["optimizer"]["param_groups"]) == 1)
    recal_every = needs_recalibration(model, steps)
    # Epochs below the full size (train.resolution) leave statistics of smaller images too;
    # a fixed trunk's BatchNorm keeps the source's statistics (train.features).
    recal = (BatchLoader(data.cache, data.train_rows, per_rank, seed=cfg.seed + 1,
                         rank=world.rank, world_size=world.size, device=device)
             if cfg.bn_recalibrate > 0 and (recal_every or cfg.low_res) and top is None else None)
    sample = None  # the epochs below the full size validate a fixed sample (plan.VAL_SAMPLE)
    if cfg.low_res and top is None and len(data.val_rows) > VAL_SAMPLE:
        rows = np.sort(np.random.default_rng([cfg.seed, 3]).choice(data.val_rows, VAL_SAMPLE,
                                                                    replace=False))
        sample = BatchLoader(data.val_cache, rows, per_rank, shuffle=False, rank=world.rank,
                             world_size=world.size, device=device)
    state = TrainState(
        model=model, net=net, opt=make_optimizer(cfg, model, decay_all), scaler=scaler,
        autocast=autocast, aug_gen=torch.Generator(device=device),
        weights=None if w is None else w.to(device, dtype), micro=micro, steps=steps,
        total_steps=steps * cfg.epochs, warmup=int(round(cfg.warmup_epochs * steps)),
        recal_loader=recal, recal_every=recal_every, min_size=getattr(model, "min_size", 1),
        eval_autocast=eval_autocast, class_names=list(data.index.class_names),
        epochs=cfg.epochs, mixup=mixup_alpha(cfg.mixup, passes), dtype=dtype, init=init,
        top=top, model_config=mcfg, val_sample=sample)
    if resumed is not None:
        _restore(state, resumed, cfg, world)
    return state, train_loader, val_loader


def _build_model(cfg: TrainConfig, data: TrainData, world: D.World,
                 resumed: Checkpoint | None, run: Path) -> tuple[nn.Module, ModelConfig, dict | None]:
    """The network with its first weights (random, the source's, or the run's own), the
    ModelConfig every checkpoint of the run records (its input scaling included), and the
    record of the model it started from."""
    n_classes = len(data.index.class_names)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    try:
        model = create_model(ModelConfig(cfg.model, n_classes, dict(cfg.model_options)))
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    mcfg = ModelConfig(cfg.model, n_classes, {**cfg.model_options,
                                              **model.input_scale.record()})
    if cfg.image_size < getattr(model, "min_size", 1):
        raise UserError(f"image size {cfg.image_size} px is too small for {cfg.model}: "
                        f"it needs at least {model.min_size} px")
    if getattr(model, "num_logits", n_classes) == 1 and n_classes != 2:
        raise UserError(f"the single_logit option needs exactly two classes; this data has {n_classes}")
    init = None
    if resumed is not None:
        _check_resume_matches(resumed, mcfg, data.index.class_names, data.spec, run)
        model.load_state_dict(resumed.weights)
        init = resumed.meta.get("init")
    elif cfg.init:
        from imgcls.train.source import load_into, read_source

        init, line = load_into(model, read_source(cfg.init), list(data.index.class_names))
        log(world, line)
    return model, mcfg, init


def _place(model: nn.Module, cfg: TrainConfig, device: torch.device, world: D.World,
           dtype: torch.dtype) -> nn.Module:
    model.to(device, dtype)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world.active:
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log(world, "imgcls: note: --sync-bn needs CUDA (PyTorch's SyncBatchNorm); on the "
             "CPU each rank keeps its own BatchNorm statistics", file=sys.stderr)
    return model


def _image_loaders(cfg: TrainConfig, data: TrainData, per_rank: int, passes: int,
                   world: D.World, device: torch.device) -> tuple[BatchLoader, BatchLoader]:
    per_rank_images = -(-len(data.train_rows) * passes // world.size)  # DDP pads shards evenly
    train_loader = BatchLoader(data.cache, data.train_rows, per_rank, seed=cfg.seed,
                               rank=world.rank, world_size=world.size, device=device,
                               passes=passes,
                               # a last batch of one image breaks BatchNorm: drop it
                               drop_last=per_rank_images % per_rank == 1)
    val_loader = BatchLoader(data.val_cache, data.val_rows, per_rank, shuffle=False,
                             rank=world.rank, world_size=world.size, device=device)
    return train_loader, val_loader


def _restore(state: TrainState, ckpt: Checkpoint, cfg: TrainConfig, world: D.World) -> None:
    tm = ckpt.train_meta
    load_optimizer_state(state.opt, ckpt.train_tensors, tm["optimizer"])
    if state.scaler is not None and tm.get("scaler"):
        state.scaler.load_state_dict(tm["scaler"])
    state.epoch, state.step = tm["epoch"], tm["step"]
    state.partial = tm.get("partial")
    if state.step and tm.get("world_size", 1) != world.size:
        log(world, f"imgcls: note: the run stopped mid-epoch on {tm.get('world_size')} ranks; "
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
        log(world, f"imgcls: note: --epochs {cfg.epochs} (was {old_epochs}) re-times the "
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


def make_checkpoint(state: TrainState, meta_base: dict, world: D.World, device: torch.device,
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
                                                     step=step_done, steps=state.steps,
                                                     metrics=metrics),
                      train_tensors, train_meta)


def elapsed_before(ckpt: Checkpoint) -> float:
    """Seconds the run had trained when ckpt was saved (older checkpoints: the last
    epoch's clock)."""
    tm = ckpt.train_meta
    if tm.get("elapsed_s") is not None:
        return float(tm["elapsed_s"])
    history = tm.get("history") or []
    return float(history[-1].get("elapsed_s", 0.0)) if history else 0.0


def _check_resume_matches(ckpt: Checkpoint, mcfg: ModelConfig, class_names: list[str],
                          spec: PreprocessSpec, run: Path) -> None:
    m = ckpt.meta
    mine = mcfg.to_dict()
    if not {"mean", "std"} & set(m["model"].get("options", {})):  # saved before 0.3 (no
        mine["options"] = {k: v for k, v in mine["options"].items()  # scaling recorded):
                           if k not in ("mean", "std")}  # its network's own, the same
    if m["class_names"] != class_names:
        raise UserError(f"cannot resume {display(run)}: it was trained on classes "
                        f"{m['class_names']}, this data has {class_names}")
    if m["model"] != mine:
        raise UserError(f"cannot resume {display(run)}: it trained model {m['model']['name']} "
                        f"{m['model'].get('options') or ''}, not {mcfg.name} {mcfg.options or ''}")
    if PreprocessSpec.from_dict(m["preprocess"]) != spec:
        raise UserError(f"cannot resume {display(run)}: its images were prepared differently "
                        f"({m['preprocess']})")


def local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def setup_device(cfg: TrainConfig, device: torch.device, world: D.World) -> torch.device:
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
        if cfg.threads < 0:
            raise UserError(f"--threads must be 0 (all cores) or more, not {cfg.threads}")
        torch.set_num_threads(cfg.threads or max(1, cpu_threads() // max(1, local_world())))
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
