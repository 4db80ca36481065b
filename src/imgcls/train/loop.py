"""fit(): scan, split, cache, then train with safe checkpoints and exact resume.

Owns the training loop. Its pieces, in the order a run meets them:
    prepare_data      scan, split (or the run's recorded split on resume), caches
    build_state       model, optimizer, loss, resumed counters: the TrainState (with
                      --tune-units, the fixed units' outputs: train.features)
    probe.plan_to_budget  the pace measured first, the epochs fitted to --time-limit
    epoch.train_epoch     one epoch of optimizer steps (micro-batches, mixed precision, mixup)
    epoch.run_validation  loss and accuracy over the validation photos, across ranks (a
                          fixed sample at the epoch's size below the full size: plan.py)
    stops             the best epoch and the stop rules (signal, divergence, time limit,
                      patience), agreed by every rank through distributed.agree
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

import os
import sys
import time
from pathlib import Path

import torch

from imgcls.checkpoint import LAST, find_resumable
from imgcls.config import TrainConfig
from imgcls.data.preprocess import PreprocessSpec
from imgcls.data.split import write_record
from imgcls.errors import UserError
from imgcls.fsutil import display
from imgcls.runtime import precision_for, resolve_device
from imgcls.train import distributed as D
from imgcls.train.bnstats import collapse_warning, recalibrate
from imgcls.train.epoch import EpochOutcome, run_validation, train_epoch
from imgcls.train.plan import plan_run, validates_fully
from imgcls.train.prepare import data_summary, prepare_data, scan_lines
from imgcls.train.probe import plan_to_budget
from imgcls.train.report import (
    cpu_hint,
    epoch_line,
    imagenet_hint,
    log,
    pace_note,
    precision_line,
    progress_bar,
    stop_everywhere,
    tensorboard,
)
from imgcls.train.resolution import SIZE_RECAL, epoch_size, ramp_line
from imgcls.train.runfolder import RunLock, RunWriter
from imgcls.train.state import (
    FitResult,
    StopFlag,
    TrainState,
    build_state,
    elapsed_before,
    gather_rng_states,
    make_checkpoint,
    seed_for,
    setup_device,
)
from imgcls.train.stops import (
    best_epoch,
    diverged_message,
    epoch_stops,
    refit_schedule,
    score_epoch,
)
from imgcls.version import __version__
from imgcls.words import count
from imgcls.words import first_line as _first_line


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
        result = _fit(cfg, run, resume, device, world, started, made_here)
        # Every rank leaves together before the process group is torn down (the abort at
        # exit this was once blamed for had another cause: see distributed.init).
        D.barrier(world)
        return result
    except (RuntimeError, OSError) as exc:
        if not world.active or not _looks_like_lost_peer(exc):
            raise
        text = str(exc).lower()
        what = (f"no answer from the other ranks within {D.timeout_s():g} s ({_first_line(exc)}):"
                " a rank died, hung, or is busy past the process group's timeout "
                "(IMGCLS_DIST_TIMEOUT, seconds)" if "timeout" in text or "timed out" in text
                else f"lost contact with the other ranks ({_first_line(exc)}): a rank probably "
                     "died")
        raise UserError(f"rank {world.rank}: {what}. The last complete checkpoint is kept: "
                        f"resume with `imgcls train --resume {display(run)}` (any number of "
                        "ranks)") from None
    finally:
        D.shutdown(world)


def _looks_like_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in ("connection closed", "connection reset", "broken pipe",
                                   "timed out", "timeout", "peer", "gloo", "nccl", "socket"))


def _fit(cfg: TrainConfig, run: Path, resume: bool, device: torch.device,
         world: D.World, started: float, made_here: bool = False) -> FitResult:
    device = setup_device(cfg, device, world)
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
            stop_everywhere(world, problem or "rank 0 could not take the run folder")
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
            log(world, f"imgcls: warning: skipping {w}", file=sys.stderr)
    elif D.agree(world, device, taken=bool(traces := writer.run_traces()) and world.main
                 )["taken"]:
        stop_everywhere(world, writer.taken_message(traces))

    data = prepare_data(cfg, world, run, resume, None if resumed is None else
                        PreprocessSpec.from_dict(resumed.meta["preprocess"]))
    index = data.index
    n_classes = len(index.class_names)
    log(world, f"Found {len(index.samples) + (len(data.split.val.samples) if cfg.val_dir else 0)}"
         f" files belonging to {n_classes} classes.\n" + "\n".join(data.split.summary_lines()))
    if cfg.max_per_class:
        log(world, f"(a seeded sample of at most {cfg.max_per_class} photos per class: "
             "--max-per-class)")
    for line in scan_lines(index, cfg) + [f"imgcls: warning: {w}" for w in data.warnings]:
        log(world, line, file=sys.stderr)
    D.check_consistent(world, {"fingerprint": index.fingerprint, "torch": torch.__version__,
                               "imgcls": __version__, "batch": cfg.batch_size,
                               "cache": str(data.cache.folder)})
    if resumed is None:
        cfg = plan_run(cfg, len(data.train_rows), world)
        if hint := imagenet_hint(cfg, len(data.train_rows)):
            log(world, hint, file=sys.stderr)
    state, train_loader, val_loader = build_state(cfg, data, device, world, resumed, run)
    state.started = started - (elapsed_before(resumed) if resumed is not None else 0.0)
    if resumed is None and cfg.time_limit and cfg.schedule != "constant" and state.top is None:
        log(world, plan_to_budget(cfg, state, train_loader, len(data.val_rows), world, device,
                                  started))
    if resumed is None and (ramp := ramp_line(cfg, state.epochs, state.min_size,
                                                   state.val_sample is not None)):
        log(world, ramp)
    log(world, f"Precision: {precision_line(device, cfg.amp)}")
    if train_loader.passes > 1:
        log(world, f"Each epoch passes {train_loader.passes} times over the "
             f"{len(data.train_rows)} training photos ({state.steps} steps; --epoch-images "
             f"{cfg.epoch_images}: a small folder needs more steps than epochs)"
             + (f", with mixup (alpha {state.mixup:g}; --mixup 0 for none)"
                if state.mixup and cfg.mixup < 0 else ""))
    if resumed is not None:
        log(world, f"Resuming {display(run)} from {display(resumed_path.name)}: epoch "
             f"{state.epoch + 1}, step {state.step}/{state.steps}")
    if world.main:
        writer.start(cfg.to_dict(), data_summary(data))
        if not resume or not data.pinned:
            write_record(run, data.split)
    meta_base = {"class_names": index.class_names, "preprocess": data.spec.to_dict(),
                 "model": state.model_config.to_dict(), "run": str(run),
                 "config": cfg.to_dict(), "data_fingerprint": index.fingerprint,
                 "precision": precision_for(device.type, cfg.amp)}
    if state.init:
        meta_base["init"] = state.init
    if cfg.time_limit and resumed is not None and \
            time.perf_counter() - state.started >= cfg.time_limit * 60:
        log(world, f"Time limit: this run has already trained for "
             f"{(time.perf_counter() - state.started) / 60:.1f} of its {cfg.time_limit:g} "
             "minutes (--time-limit is the run's total); give a larger --time-limit to train on")
        return FitResult(run, state.history, best_epoch(cfg, state.history))
    with StopFlag() as stop:
        return _epochs(cfg, run, state, train_loader, val_loader, writer, meta_base, world,
                       device, stop, state.started)


def _epochs(cfg, run, state: TrainState, train_loader, val_loader, writer: RunWriter,
            meta_base: dict, world: D.World, device: torch.device, stop: StopFlag,
            started: float) -> FitResult:
    """The epoch loop: train, validate, save, then the agreed stop rules."""
    result = FitResult(run, state.history)
    tb = tensorboard(run) if world.main else None
    first = state.epoch
    try:
        epoch = first
        while epoch < state.epochs:
            state.epoch = epoch
            mid = epoch == first and state.step > 0
            train_loader.set_epoch(epoch, state.step if mid else 0)
            _seed_epoch(state, cfg, world, device, epoch, mid)
            bar = progress_bar(world, state.steps, epoch, state.epochs, state.step if mid else 0)
            hint = ((lambda s, k: cpu_hint(cfg, state.steps, s, k))
                    if epoch == first and device.type == "cpu" and world.main else None)
            out = train_epoch(state, cfg, train_loader, world, device, stop,
                              state.step if mid else 0, bar, hint)
            state.partial, state.step = None, 0
            if bar is not None:
                bar.close()
            if out.stop.get("nonfinite"):
                stop_everywhere(world, diverged_message(
                    cfg, int(out.stop["nonfinite"]), state.steps, run,
                    state.history[-1]["epoch"] if state.history else 0))
            if out.stop.get("signal") and out.step < state.steps:
                D.all_sum(world, out.sums)  # partial sums of every rank, for the resume
                rng = gather_rng_states(state, world, device)
                if world.main:
                    s = out.sums.tolist()
                    writer.save(run / LAST, make_checkpoint(
                        state, meta_base, world, device, epoch, out.step, {},
                        partial=[s[0], s[1], s[2], out.seen * world.size, out.seconds],
                        rng=rng))
                D.barrier(world)
                log(world, f"Stopped in epoch {epoch + 1} at step {out.step}/{state.steps}. "
                     f"Resume with: imgcls train --resume {display(run)}")
                result.interrupted = True
                return result
            h = _finish_epoch(cfg, state, out, val_loader, world, device, started)
            last_saved = state.history[-1]["epoch"] if state.history else 0
            improved = score_epoch(cfg, state, h, result)
            decision = epoch_stops(cfg, state, h, stop, world, device)
            if decision["nonfinite"]:  # never save, nor call best, a model that outputs NaN
                stop_everywhere(world, diverged_message(
                    cfg, (epoch + 1) * state.steps, state.steps, run, last_saved))
            refit_schedule(cfg, state, int(-decision["fit"]), world)
            _save_epoch(cfg, state, h, improved, writer, meta_base, world, device, tb)
            line, state.said_seconds = pace_note(cfg, h, epoch == first, state.epochs,
                                                 state.pace, state.said_seconds, state.min_size)
            if line and not decision["signal"]:  # a run that stops now has no time left
                log(world, line, file=sys.stderr)
            # A signal during the last epoch's final steps leaves nothing to resume: the run
            # ended as planned and says so (it said "Resume with" a finished run).
            if decision["signal"] and epoch + 1 < state.epochs:
                result.interrupted = True
                log(world, f"Stopped after epoch {epoch + 1}. Resume with: "
                     f"imgcls train --resume {display(run)}")
                return result
            if decision["time"]:
                log(world, f"Time limit: another epoch would end past "
                     f"{count(cfg.time_limit, 'minute')}; stopping after epoch {epoch + 1}.")
                break
            if decision["patience"]:
                result.stopped_early = True
                log(world, f"Early stopping: {cfg.monitor} has not improved for {cfg.patience} "
                     f"epochs (best {state.best:.4f} at epoch {result.best_epoch}).")
                break
            D.barrier(world)
            epoch += 1
    finally:
        if tb is not None:
            tb.close()
    if not result.best_epoch:
        result.best_epoch = best_epoch(cfg, state.history)
    return result


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
        torch.manual_seed(seed_for(cfg.seed, epoch, world.rank, 0))
        state.aug_gen.manual_seed(seed_for(cfg.seed, epoch, world.rank, 1))


def _finish_epoch(cfg: TrainConfig, state: TrainState, out: EpochOutcome, val_loader,
                  world: D.World, device: torch.device, started: float) -> dict:
    """Reduce the epoch's sums, validate, and return its metrics line."""
    t_val, size = time.perf_counter(), epoch_size(cfg, state.epoch, state.epochs, state.min_size)
    D.all_sum(world, out.sums)
    full = state.val_sample is None or validates_fully(cfg, state.epoch, state.epochs,
                                                       state.min_size)
    if full and state.recal_loader is not None and (state.recal_every or size < cfg.image_size):
        state.recal_loader.set_epoch(state.epoch)
        recalibrate(state.model, state.recal_loader, cfg.bn_recalibrate if state.recal_every
                    else min(cfg.bn_recalibrate, SIZE_RECAL), state.micro, state.autocast, world)
    # The bare model, not the DDP wrapper: a rank with fewer validation batches (or none)
    # must not wait in a collective of a DDP forward that the others do not enter.
    v = run_validation(state.eval_net, val_loader if full else state.val_sample, world,
                       state.eval_autocast, len(state.class_names), None if full else size)
    s, val_s = out.sums.tolist(), time.perf_counter() - t_val
    h = {"epoch": state.epoch + 1, "loss": s[0] / max(1.0, s[2]),
         "accuracy": s[1] / max(1.0, s[2]), "val_loss": float(v.loss),
         "val_accuracy": float(v.accuracy), "lr": state.opt.param_groups[0]["lr"],
         "images_per_s": out.seen * world.size / max(out.seconds, 1e-9),
         "seconds": out.seconds + val_s,
         "val_seconds": val_s,  # validation's share (BatchNorm's re-estimation included)
         "elapsed_s": time.perf_counter() - started,
         "resolution": size,  # px the epoch trained at
         # every validation photo at the full size, or a fixed sample at the epoch's size
         "val_images": int(v.true_counts.sum()), "val_full": full}
    # The pace learns an epoch's whole share of the clock: from the end of the one before,
    # so its checkpoint writes and the loader's start count too (on a slow disk they were
    # most of a small run's epoch, and a plan timed on `seconds` alone was cut short).
    now = time.perf_counter()
    state.pace.add(size, h["seconds"] if state.epoch_end is None else now - state.epoch_end)
    state.epoch_end = now
    warning = collapse_warning(v.pred_counts, v.true_counts, v.accuracy, h["accuracy"],
                               state.class_names, state.epoch + 1, cfg.preset)
    if warning:
        h["collapsed"] = True
        if not state.warned_collapse or state.epoch + 1 == state.epochs:
            log(world, f"imgcls: warning: {warning}", file=sys.stderr)
            state.warned_collapse = True
    if world.active:
        h["rank_weight_sums"] = D.weights_checksum(world, state.model, device)
        if len(set(h["rank_weight_sums"])) != 1:
            raise RuntimeError(f"DDP ranks diverged: weight sums {h['rank_weight_sums']}")
    return h


def _save_epoch(cfg: TrainConfig, state: TrainState, h: dict, improved: bool,
                writer: RunWriter, meta_base: dict, world: D.World, device: torch.device,
                tb) -> None:
    if world.main:
        full = make_checkpoint(state, meta_base, world, device, state.epoch + 1, 0, h)
        best = make_checkpoint(state, meta_base, world, device, state.epoch + 1, 0, h,
                           full=False) if improved else None
        writer.end_epoch(state.epoch + 1, full, best, state.history)
        if tb is not None:
            for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
                      "resolution", "seconds"):
                tb.add_scalar(k, h[k], state.epoch + 1)
            tb.flush()
    log(world, epoch_line(h, state.epochs))


