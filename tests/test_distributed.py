"""DDP on the CPU with Gloo: torchrun with 2 ranks completes, ranks stay identical, one
checkpoint per epoch, same result as one process with the same global batch, a killed rank
ends the run with a clear message and a checkpoint that resumes on 1 rank."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import images
import pytest
import torch
from clirun import run as cli

from imgcls.checkpoint import load_checkpoint

# No augmentation, no dropout and GroupNorm (PyTorch's SyncBatchNorm is CUDA-only): then 2
# ranks x 4 images and 1 process x 8 images compute the same global-batch gradient, and the
# only difference is the order of floating-point sums (DDP averages two half-batch means).
# Plain SGD keeps that difference at rounding size (Adam divides by the gradient's own scale
# and so turns rounding noise in near-zero gradients into lr-sized steps). Both run in
# float64 (--amp fp64), where that rounding is far below images.FLOAT64_REL of each weight's
# move on any CPU's kernels; a wrong gradient is off by the whole step.
SETTINGS = {"model": "xception-tiny", "model_options": {"dropout": 0.0, "norm": "group"},
            "image_size": 32, "batch_size": 8, "optimizer": "sgd", "lr": 0.05, "flip": False,
            "rotation": 0.0, "seed": 5, "threads": 1, "amp": "fp64"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    # 15 a class: 24 training images, 12 a rank, 3 full steps of 4 (no one-image remainder)
    data = images.two_class_tree(base / "data", 15, 40)
    cfg = base / "cfg.json"
    cfg.write_text(json.dumps(SETTINGS))
    return data, cfg


def torchrun(n: int, *args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "imgcls", "train", "--preset", "tutorial", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


def popen_ranks(*args):
    """torchrun with 2 CPU ranks in the background (for tests that signal or time it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "imgcls", "train", "--preset", "tutorial", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


def torchrun_script(tmp_path: Path, source: str, *args, **env):
    """A script of the test's own (its text: `source`) on 2 CPU ranks under torchrun."""
    script = tmp_path / "ranks.py"
    script.write_text(source)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **env))


def single(*args):
    """One process: this one (clirun)."""
    return cli("train", "--preset", "tutorial", *args)


def test_two_ranks_match_one_process(setup, tmp_path):
    data, cfg = setup
    ddp, one = tmp_path / "ddp", tmp_path / "one"
    r = torchrun(2, data, "--out", ddp, "--config", cfg, "--epochs", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("Epoch 2/2") == 1  # only rank 0 prints
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == [
        "epoch_001.safetensors", "epoch_002.safetensors"]
    assert not [p for p in ddp.rglob("*") if ".tmp-" in p.name]
    history = [json.loads(x) for x in (ddp / "metrics.jsonl").read_text().splitlines()]
    for h in history:  # both ranks held identical weights after every epoch
        assert len(h["rank_weight_sums"]) == 2 and h["rank_weight_sums"][0] == h["rank_weight_sums"][1]
    r = single(data, "--out", one, "--config", cfg, "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_checkpoint(ddp / "last.safetensors").weights
    b = load_checkpoint(one / "last.safetensors").weights
    from imgcls.models import ModelConfig, create_model

    torch.manual_seed(SETTINGS["seed"])  # fit() draws the initial weights the same way
    init = create_model(ModelConfig("xception-tiny", 2, SETTINGS["model_options"])).state_dict()
    assert images.close_after_training(a, b, init) == []
    # Validation is over the whole split, reduced across ranks: the same images are counted.
    # The weights agree to rounding, so at most one near-tie image may flip.
    n_val = json.loads((ddp / "data.json").read_text())["val_images"]
    va = history[-1]["val_accuracy"]
    vb = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])["val_accuracy"]
    assert abs(va - vb) * n_val <= 1 + 1e-9


def test_batch_not_divisible_is_a_clear_error(setup, tmp_path):
    data, cfg = setup
    r = torchrun(2, data, "--out", tmp_path / "r", "--config", cfg, "--batch-size", "7")
    assert r.returncode != 0
    assert "not divisible by the 2 ranks" in r.stderr


def test_killed_rank_ends_the_run_and_it_resumes_on_one_rank(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    proc = popen_ranks(data, "--out", run, "--config", cfg, "--epochs", "40", "--batch-size", "2")
    _signal_rank_1_after_epoch_1(proc, run, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    text = out + err
    assert "failed" in text.lower() or "lost contact" in text
    last = load_checkpoint(run / "last.safetensors")
    assert last.resumable and 1 <= last.meta["epoch"] < 40
    r = single("--resume", run, "--epochs", str(last.meta["epoch"] + 1))
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(run / "last.safetensors").meta["epoch"] == last.meta["epoch"] + 1


def _signal_rank_1_after_epoch_1(proc, run: Path, sig: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "epoch_001.safetensors").exists():
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, 1)
    assert victim, "rank 1 not found"
    os.kill(victim, sig)


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of a torchrun worker with RANK=rank among root's descendants."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += children.get(pid, [])
    for pid in seen:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


def _ranks_exit_within(proc, seconds: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"a rank hung for {seconds} s:\n{out[-1500:]}\n{err[-3000:]}")


def test_time_limit_stops_every_rank_together(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    t0 = time.time()
    r = torchrun(2, data, "--out", run, "--config", cfg, "--epochs", "50", "--time-limit", "0.0001")
    said = r.stdout[-2000:] + r.stderr[-3000:]
    assert r.returncode == 0, said
    assert r.stdout.count("Time limit") == 1 and time.time() - t0 < 120, (time.time() - t0, said)
    assert load_checkpoint(run / "last.safetensors").meta["epoch"] == 1, said


def test_a_run_folder_that_holds_a_run_stops_every_rank(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    assert single(data, "--out", run, "--config", cfg, "--epochs", "1").returncode == 0
    proc = popen_ranks(data, "--out", run, "--config", cfg)
    out, err = _ranks_exit_within(proc, 120)
    assert proc.returncode != 0
    # torchrun adds its own report of the failed workers; ours is rank 0's one line.
    errs = [line for line in err.splitlines() if line.startswith("imgcls: error:")]
    assert len(errs) == 1 and "already holds a run" in errs[0]  # rank 0's line, once
    assert load_checkpoint(run / "last.safetensors").meta["epoch"] == 1  # untouched


def test_sigterm_to_one_rank_stops_all_with_a_resumable_checkpoint(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    proc = popen_ranks(data, "--out", run, "--config", cfg, "--epochs", "200", "--batch-size", "4")
    _signal_rank_1_after_epoch_1(proc, run, signal.SIGTERM)
    # Exiting at all is what matters (a rank left in a collective waits forever); 120 s
    # holds on a busy slow CPU, where 30 s once did not.
    out, err = _ranks_exit_within(proc, 120)
    assert out.count("Resume with: imgcls train --resume") == 1, out[-2000:] + err[-2000:]
    last = load_checkpoint(run / "last.safetensors")
    assert last.resumable and last.meta["epoch"] >= 1


def test_a_mid_epoch_stop_keeps_each_ranks_own_random_streams(setup, tmp_path):
    """Old main saved rank 0's generators only, so a resumed rank 1 replayed rank 0's
    augmentation and dropout draws. Each rank's streams are saved, and they differ."""
    data, cfg = setup
    run = tmp_path / "run"
    # ~50 steps an epoch: the agreed stop lands inside epoch 2, not at its end
    proc = popen_ranks(data, "--out", run, "--config", cfg, "--epochs", "50",
                       "--batch-size", "4", "--epoch-images", "400")
    _signal_rank_1_after_epoch_1(proc, run, signal.SIGINT)
    out, err = _ranks_exit_within(proc, 60)
    assert "Stopped in epoch" in out, out[-2000:] + err[-2000:]
    last = load_checkpoint(run / "last.safetensors")
    assert last.meta["step"] > 0
    t = last.train_tensors
    for key in ("rng.cpu", "rng.aug"):
        assert f"{key}.0" in t and f"{key}.1" in t
        assert not torch.equal(t[f"{key}.0"], t[f"{key}.1"]), key
    r = torchrun(2, "--resume", run, "--epochs", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Epoch 2/2" in r.stdout


SLOW_SETUP = """
import sys, time, torch
from imgcls.train import distributed as D
world = D.init("cpu")
def work():
    if world.main:
        time.sleep(float(sys.argv[1]))  # a scan and cache build longer than the timeout
    return world.rank
got = D.main_first(world, work)
t = torch.ones(1)
D.all_sum(world, t)
print(f"rank {got} ok {int(t.item())}", flush=True)
D.shutdown(world)
"""


def test_rank_0s_set_up_may_outlast_the_process_groups_timeout(tmp_path):
    """Old main: the other ranks waited for rank 0's scan and caches in a barrier bound by
    the process group's timeout (600 s), so a large set died with "a rank probably died".
    Here the timeout is 2 s and rank 0's set-up takes 6 s."""
    res = torchrun_script(tmp_path, SLOW_SETUP, "6", IMGCLS_DIST_TIMEOUT="2")
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    # The ranks print at once: their lines may interleave in the shared stdout.
    said = sorted(re.findall(r"rank \d ok \d", res.stdout))
    assert said == ["rank 0 ok 2", "rank 1 ok 2"], res.stdout[-1500:]


def test_a_failed_set_up_on_rank_0_is_said_by_rank_0_alone(tmp_path):
    """Rank 0's failure reaches the others as such, not as a timeout hours later."""
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    images.jpeg(data / "cat" / "a.jpg")  # one class: rank 0's scan refuses it
    proc = popen_ranks(data, "--out", tmp_path / "run")
    out, err = _ranks_exit_within(proc, 120)
    errs = [line for line in err.splitlines() if line.startswith("imgcls: error:")]
    assert proc.returncode != 0 and len(errs) == 1 and "one class" in errs[0], err[-3000:]


ENDS_CLEAN = """
import os, sys
from imgcls.cli import main
code = main(sys.argv[1:])
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
left = [name for name in threads if "gloo" in name]
print(f"rank {os.environ['RANK']} exit {code}, Gloo threads left: {left}", flush=True)
sys.exit(code or (3 if left else 0))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads in Linux's /proc")
def test_a_finished_rank_has_torn_its_process_group_down(setup, tmp_path):
    """Old main: DDP's constructor imported torch._dynamo while the process group existed,
    and that import kept the group alive past destroy_process_group; its Gloo threads lived
    on into interpreter exit, where tearing the group down now and then aborted a rank after
    a complete run (CI: exit -6, "terminate called without an active exception"). Whether
    the threads are gone when `train` returns is deterministic; the abort is not."""
    data, cfg = setup
    res = torchrun_script(tmp_path, ENDS_CLEAN, "train", "--preset", "tutorial", data,
                          "--out", tmp_path / "run", "--config", cfg, "--epochs", "1")
    said = sorted(re.findall(r"rank \d exit \d+, Gloo threads left: .*", res.stdout))
    assert said == [f"rank {r} exit 0, Gloo threads left: []" for r in (0, 1)], \
        res.stdout[-1500:] + res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
