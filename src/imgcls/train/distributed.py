"""torchrun / DistributedDataParallel set-up and the few rank-aware helpers training needs.

Owns the process group. Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment)
it joins the group with NCCL on CUDA and Gloo on the CPU; alone it is a no-op world of one.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from imgcls.errors import PeerError, UserError
from imgcls.words import first_line

T = TypeVar("T")
# Seconds every collective may wait for the slowest rank (PyTorch's default is 600 too);
# IMGCLS_DIST_TIMEOUT overrides it. Rank 0's set-up (scan and caches) is not bound by it.
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return bool(self.backend)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_s() -> float:
    """The process group's timeout, seconds: IMGCLS_DIST_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    try:
        return float(os.environ.get("IMGCLS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise UserError(f"IMGCLS_DIST_TIMEOUT must be seconds, not "
                        f"{os.environ['IMGCLS_DIST_TIMEOUT']!r}") from None


def init(device_kind: str) -> World:
    """Join the process group if launched by torchrun; otherwise a world of one."""
    if not launched_by_torchrun():
        return World()
    size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if size == 1 and not os.environ.get("IMGCLS_FORCE_PROCESS_GROUP"):
        return World(rank, size, local)  # nothing to synchronise; skip the process group
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if not dist.is_initialized():
        # DDP's constructor imports torch._dynamo, and an import of it made while a process
        # group exists keeps references to that group for good: destroy_process_group then
        # cannot free it, its Gloo threads outlive the run, and the group is torn down during
        # interpreter exit, where it sometimes aborts the rank ("terminate called without an
        # active exception", exit -6, after a complete run). Imported first, it holds none.
        import torch._dynamo  # noqa: F401

        kwargs = {}
        if backend == "nccl":
            torch.cuda.set_device(local)
            kwargs["device_id"] = torch.device("cuda", local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()),
                                **kwargs)
    return World(rank, size, local, backend)


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(world: World, t: torch.Tensor) -> torch.Tensor:
    if world.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(world: World, device: torch.device | str = "cpu", **flags: float) -> dict[str, float]:
    """Each named flag combined across ranks by max: every rank gets the same decision.

    The one place where a rank's local view (a signal it received, its clock against a time
    limit, a non-finite loss it saw, a run folder rank 0 found occupied) becomes a decision
    that ends or skips work. Every such decision goes through here, at points every rank
    reaches, so no rank waits in a collective that the others will not enter.
    """
    if not world.active:
        return {k: float(v) for k, v in flags.items()}
    t = torch.tensor([float(v) for v in flags.values()], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return dict(zip(flags, t.tolist()))


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


SETUP_KEY = "imgcls/rank0-setup"
POLL_S = 30  # seconds between a waiting rank's looks at rank 0's progress


def main_first(world: World, work: Callable[[], T]) -> T:
    """Rank 0 runs `work` (a scan and the caches: minutes or hours for a large set), then the
    other ranks run theirs (opening what rank 0 built). The others wait on the process
    group's store, not in a collective, so the wait is not bounded by the process group's
    timeout; they hear rank 0's failure as such rather than as a timeout. A rank 0 that dies
    ends the job through torchrun, which stops the others."""
    if not world.active:
        return work()
    store = dist.distributed_c10d._get_default_store()
    if world.main:
        try:
            out = work()
        except BaseException as exc:
            store.set(SETUP_KEY, f"failed: {first_line(exc)}")
            raise
        store.set(SETUP_KEY, "done")
    else:
        waited = 0
        while True:
            try:
                store.wait([SETUP_KEY], datetime.timedelta(seconds=POLL_S))
                break
            except (RuntimeError, dist.DistStoreError) as exc:
                if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
                    raise
                waited += POLL_S
                if waited % 600 == 0:
                    logging.getLogger(__name__).info(
                        f"rank {world.rank}: still waiting for rank 0's scan and caches "
                        f"({waited // 60} min)")
        status = store.get(SETUP_KEY).decode()
        if status != "done":
            raise PeerError(f"rank 0 could not prepare the data ({status})")
        out = work()
    barrier(world)  # every rank has opened the caches
    return out


def check_consistent(world: World, items: dict) -> None:
    """Every rank must agree on `items` (versions, data fingerprint, batch size...)."""
    if not world.active:
        return
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, items)
    for rank, other in enumerate(gathered):
        diff = sorted(k for k in items if other.get(k) != gathered[0].get(k))
        if diff:
            k = diff[0]
            raise UserError(f"inconsistent launch: rank {rank} has {k}={other.get(k)!r} but rank 0 "
                            f"has {gathered[0].get(k)!r} (same data, cache and versions on every node?)")


def weights_checksum(world: World, model: torch.nn.Module, device: torch.device) -> list[float]:
    """Each rank's sum of all weights; DDP keeps them identical, so a difference is a bug."""
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for p in model.parameters():
        total += p.detach().double().sum()
    if not world.active:
        return [total.item()]
    out = [torch.zeros_like(total) for _ in range(world.size)]
    torch.distributed.all_gather(out, total)
    return [t.item() for t in out]
