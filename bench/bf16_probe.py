"""bf16 autocast against float32 on this CPU: training and inference images/s.

    .venv/bin/python bench/bf16_probe.py

The tutorial's Xception at 180 px and the CPU preset's ResNet at 128 px, batch 32,
channels_last, 2 threads, random 0-255 input; one warm-up pass, then 3 inference batches and
2 training steps (Adam) timed. Without glibc's freed-memory setting (see train_speed.py for
that), so the absolute rates are lower than imgcls's own; the bf16/float32 ratio is the point.
Prints one line per (network, precision) and the CPU's bf16 capability as PyTorch sees it.
"""

from __future__ import annotations

import time

import torch

from imgcls.models import ModelConfig, create_model
from imgcls.runtime import cpu_native_bf16


def main() -> None:
    torch.set_num_threads(2)
    print(f"native bf16 (AVX-512 BF16 / AMX): {cpu_native_bf16()}; torch {torch.__version__}")
    for name, size in (("xception", 180), ("resnet-cpu", 128)):
        model = create_model(ModelConfig(name, 2)).to(memory_format=torch.channels_last)
        x = (torch.rand(32, 3, size, size) * 255).contiguous(memory_format=torch.channels_last)
        for mode in ("fp32", "bf16"):
            ctx = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "bf16"
                   else (lambda: torch.autocast("cpu", enabled=False)))
            model.eval()
            with torch.inference_mode(), ctx():
                model(x)
                t = time.perf_counter()
                for _ in range(3):
                    model(x)
                infer = 32 * 3 / (time.perf_counter() - t)
            model.train()
            opt = torch.optim.Adam(model.parameters())
            for i in range(3):
                if i == 1:
                    t = time.perf_counter()
                with ctx():
                    loss = model(x).float().logsumexp(1).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
            train = 32 * 2 / (time.perf_counter() - t)
            print(f"{name} {size}px {mode}: inference {infer:.1f} img/s, training {train:.1f} img/s",
                  flush=True)


if __name__ == "__main__":
    main()
