"""Does `torch.compile` (inductor) pay for itself on a CPU? Eager against compiled.

    .venv/bin/python bench/compile_probe.py [--model resnet-cpu] [--size 128] [--batch 64]

For the given network (default: the cpu preset's), measures training steps (AdamW, channels
last, float32, as `imgcls train` runs them on a CPU) and inference batches of 32 (float32 and
bf16 autocast where the CPU has native bf16): images/s eager, images/s compiled, and the
seconds the first compiled call took (the compile). Prints the break-even: how many images a
run must see before compiling saves time. Needs a C++ compiler for inductor.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from imgcls.models import ModelConfig, create_model
from imgcls.runtime import cpu_native_bf16, keep_freed_memory


def measure(step, images: int, seconds: float = 8.0) -> tuple[float, float]:
    t0 = time.perf_counter()
    step()  # first call: compiles when compiled
    first = time.perf_counter() - t0
    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += images
    return n / (time.perf_counter() - t0), first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet-cpu")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    out = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = create_model(ModelConfig(args.model, 2)).to(memory_format=torch.channels_last)
        net = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.rand(args.batch, 3, args.size, args.size).mul(255).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 2, (args.batch,))

        def train_step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x).float(), y).backward()
            opt.step()

        model.train()
        tag = "compiled" if compiled else "eager"
        out[f"train_{tag}"] = measure(train_step, args.batch)
        model.eval()
        xb = x[:32]
        for prec in ("fp32", "bf16"):
            if prec == "bf16" and not cpu_native_bf16():
                continue
            ctx = (lambda: torch.autocast("cpu", torch.bfloat16)) if prec == "bf16" else nullcontext

            def infer():
                with torch.inference_mode(), ctx():
                    net(xb)

            out[f"infer_{prec}_{tag}"] = measure(infer, 32)
        torch._dynamo.reset()
    for kind in sorted({k.rsplit("_", 1)[0] for k in out}):
        (e, _), (c, first) = out[f"{kind}_eager"], out[f"{kind}_compiled"]
        gain = 1 / e - 1 / c  # seconds saved per image
        even = (first - 1 / e) / gain if gain > 0 else float("inf")
        print(f"{kind:<12} eager {e:7.1f} img/s  compiled {c:7.1f} img/s ({c / e:.2f}x)  "
              f"first compiled call {first:.0f} s  break-even after "
              f"{'never' if even == float('inf') else f'{even:,.0f} images'}")
    print(json.dumps({k: [round(v[0], 1), round(v[1], 1)] for k, v in out.items()} |
                     {"model": args.model, "size": args.size, "batch": args.batch,
                      "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
    main()
