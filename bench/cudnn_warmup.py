"""What the first calls of each batch shape cost on a CUDA GPU, with cuDNN autotuning on and off.

    python bench/cudnn_warmup.py [--size 180] [--batch 128] [--last 80] [--steps 20]

With `torch.backends.cudnn.benchmark = True`, cuDNN times its algorithms for every new input
shape before using one. imgcls's first epoch on an H200 took 33-37 s where later ones took
1 s, and each new set of batch shapes cost another ~15 s. This times, for the seed network
(the tutorial's Xception, bf16 autocast, channels_last), in a fresh process per setting:
the first call of every shape an epoch uses (a 1-image float32 probe, a full training batch,
the last partial one, the same two in evaluation), then the steady training and evaluation
rates. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def measure(size: int, batch: int, last: int, steps: int, benchmark: bool, dev: str) -> dict:
    import torch
    import torch.nn.functional as F

    from imgcls.models import ModelConfig, create_model

    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = create_model(ModelConfig("xception", 2, {"single_logit": True})).to(dev)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 3e-4)

    def batch_of(n):
        x = (torch.rand(n, 3, size, size, device=dev) * 255).contiguous(
            memory_format=torch.channels_last)
        return x, torch.randint(0, 2, (n, 1), device=dev).float()

    def train(n):
        x, y = batch_of(n)
        model.train()
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(n, amp=True):
        x, _ = batch_of(n)
        model.eval()
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            model(x)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def timed(fn, *a, **k):
        sync()
        t = time.perf_counter()
        fn(*a, **k)
        sync()
        return round(time.perf_counter() - t, 3)

    torch.zeros(1, device=dev)  # CUDA context outside the timings
    res = {"benchmark": benchmark,
           "probe_1_fp32_s": timed(infer, 1, amp=False),
           "train_full_first_s": timed(train, batch),
           "train_full_second_s": timed(train, batch),
           "train_last_first_s": timed(train, last),
           "eval_full_first_s": timed(infer, batch),
           "eval_last_first_s": timed(infer, last)}
    res["train_img_s"] = round(batch * steps / sum(timed(train, batch) for _ in range(steps)), 1)
    res["eval_img_s"] = round(batch * steps / sum(timed(infer, batch) for _ in range(steps)), 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=180)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--last", type=int, default=80, help="the epoch's last, partial batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu only checks that the script runs")
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.size, args.batch, args.last, args.steps, args.child == "on",
                                 args.device)))
        return
    rows = []
    for setting in ("on", "off"):  # a fresh process each: cuDNN's choices live per process
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--size", str(args.size),
                              "--batch", str(args.batch), "--last", str(args.last),
                              "--steps", str(args.steps), "--device", args.device], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            sys.exit(out.returncode)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    keys = [k for k in rows[0] if k != "benchmark"]
    print(f"{'cudnn.benchmark':24}" + "".join(f"{'on' if r['benchmark'] else 'off':>10}" for r in rows))
    for k in keys:
        print(f"{k:24}" + "".join(f"{r[k]:>10}" for r in rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
