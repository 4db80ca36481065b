"""Process-level settings for speed: the CPU thread count and glibc's allocator.

Owns the few knobs that belong to a whole process rather than to a module, applied once by
a command's entry point (train, predict, evaluate, serve, the benches), never on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc reuse freed large blocks instead of returning them to the OS.

    By default every tensor over 32 MB is a fresh mmap and each of its pages is faulted in
    again on every use: on this 2-core machine `uint8 batch -> float` ran at 4,000 images/s
    that way and at 28,000 images/s with this setting (bench/loader.py). Training allocates
    activations of that size every step, so it gains too. No effect on other allocators.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def interactive() -> bool:
    """Whether progress bars help: a terminal, or a Jupyter kernel (its stderr is no tty).
    Logs and CI get plain lines. A kernel is asked for, not guessed from an imported module:
    a program (or a test run) that imported ipykernel without running in one writes to a
    pipe or a file, where bars are noise."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def cpu_threads() -> int:
    """Cores this process may use (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_map(fn, items: list, workers: int = 0, desc: str = "", unit: str = "file",
               progress: bool | None = None) -> list:
    """[fn(x) for x in items] on a pool of threads, in order, with a progress bar on a tty.

    Threads, not processes: Pillow releases the GIL while it decodes and resizes and hashlib
    while it hashes, so threads use every core (measured: 2 threads decode+resize catsdogs at
    1,079 img/s vs 1,010 for 2 spawned processes, which also pay ~0.4 s to start and would
    re-import the caller's __main__).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm  # widgets in Jupyter, text elsewhere

    workers = workers or cpu_threads()
    show = interactive() if progress is None else progress
    # Chunks amortise the per-task cost of futures and of the progress bar.
    chunk = max(1, min(32, len(items) // (workers * 8) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    out: list = []
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not show, leave=False) as bar:
        if workers == 1 or len(chunks) < 2:
            for c in chunks:
                out += [fn(x) for x in c]
                bar.update(len(c))
            return out
        with ThreadPoolExecutor(workers, thread_name_prefix="imgcls") as ex:
            for res in ex.map(lambda c: [fn(x) for x in c], chunks):
                out += res
                bar.update(len(res))
    return out


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), as PyTorch sees it.

    PyTorch's own probes first (what its oneDNN kernels will use); the OS's CPU flags where
    a PyTorch build lacks them. Without native bf16, autocast to bf16 emulates it and runs
    slower than float32, so it is only chosen automatically here.
    """
    try:
        import torch

        probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported",
                                                         "_is_amx_tile_supported")]
        if any(p is not None for p in probes):
            return any(bool(p()) for p in probes if p is not None)
    except Exception:  # a PyTorch without these probes: ask the OS
        pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def precision_for(device_type: str, amp: str, native_bf16: bool | None = None,
                  cuda_bf16: bool | None = None) -> str:
    """The precision `amp` means on this device: "bf16", "fp16" or "fp32".

    auto: bf16 on a GPU that has it (else fp16); bf16 on a CPU that computes it natively
    (AVX-512 BF16 or AMX), for training as for inference; float32 on other CPUs, where bf16
    is emulated and slower. bf16 training keeps float32's accuracy: the CPU preset on
    catsdogs, three seeds each on an AMX Xeon, 0.867 in bf16 against 0.868 in float32 (seed
    spread 1.5 points), at 1.8x the images per second (BENCHMARKS.md; an earlier one-seed
    comparison that put bf16 3 points lower was seed noise).
    `native_bf16` / `cuda_bf16` override the probes (tests fake a capability).
    """
    if amp == "off":
        return "fp32"
    if amp in ("bf16", "fp16", "fp64"):
        return amp
    if device_type == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp16"
    if device_type == "cpu":
        return "bf16" if (cpu_native_bf16() if native_bf16 is None else native_bf16) else "fp32"
    return "fp32"


def autocast_for(device, amp: str, native_bf16: bool | None = None):
    """(a no-argument autocast context factory, a GradScaler or None): the same precision for
    training and inference (precision_for)."""
    from contextlib import nullcontext

    import torch

    precision = precision_for(device.type, amp, native_bf16)
    if precision in ("fp32", "fp64"):  # fp64: the model itself is float64 (train.build_state)
        return nullcontext, None
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def resolve_device(name: str):
    """--device as a torch.device: auto (CUDA if PyTorch sees a GPU), cpu, cuda or cuda:N.
    Anything else, or CUDA without a GPU, is a UserError in one line."""
    import torch

    from imgcls.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: not a device imgcls can use; choose auto, cpu, "
                        "cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available to PyTorch "
                        f"(torch {torch.__version__} is a "
                        f"{'CUDA' if torch.version.cuda else 'CPU-only'} build)")
    return dev
