"""Training and inference speed of the seed network (the tutorial's Xception).

    python bench/train_speed.py [--size 180] [--batch 32] [--steps 4] [--device cpu|cuda]

Times full optimizer steps (forward, backward, Adam) and no-grad forward passes on random
0-255 input, after a warm-up step, and prints a table and a final JSON line with
train_img_s, infer_img_s, precision, peak_rss_mb, device: imgcls's rates are what its
defaults do (`--amp auto`: bf16 where the CPU computes it natively, else float32), and the
line says which precision was timed. On the CPU it also times PyTorch's defaults
(no channels_last, glibc returning freed memory) to show what each setting buys. If
TensorFlow/Keras is importable, the same network in Keras is timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from imgcls.models import ModelConfig, create_model
from imgcls.runtime import cpu_threads, keep_freed_memory, precision_for


def torch_rates(size: int, batch: int, steps: int, device: str, channels_last: bool,
                amp: bool = False, compile: bool = False) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(ModelConfig("xception", 2, {"single_logit": True})).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if compile else model
    x = (torch.rand(batch, 3, size, size, device=device) * 255).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch, 1), device=device).float()
    opt = torch.optim.Adam(model.parameters(), 3e-4)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if amp else torch.enable_grad
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with ctx():
            loss = F.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(2 if compile or device == "cuda" else 1):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train = batch * steps / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad(), (torch.autocast(device, dtype=torch.bfloat16) if amp else torch.no_grad()):
        net(x)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            net(x)
        sync()
        infer = batch * steps / (time.perf_counter() - t)
    return train, infer


def keras_rates(size: int, batch: int, steps: int):
    """The tutorial's make_model in Keras, timed the same way; None if not importable."""
    code = f"""
import os, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras
from keras import layers
def make_model(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(128, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous_block_activation = x
    for size in [256, 512, 728]:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous_block_activation)
        x = layers.add([x, residual])
        previous_block_activation = x
    x = layers.SeparableConv2D(1024, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(1, activation=None)(x)
    return keras.Model(inputs, outputs)
m = make_model(({size}, {size}, 3), 2)
m.compile(optimizer=keras.optimizers.Adam(3e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True))
x = np.random.rand({batch}, {size}, {size}, 3).astype("float32") * 255
y = np.random.randint(0, 2, ({batch}, 1)).astype("float32")
m.train_on_batch(x, y)
t = time.perf_counter()
for _ in range({steps}): m.train_on_batch(x, y)
train = {batch} * {steps} / (time.perf_counter() - t)
m.predict_on_batch(x)
t = time.perf_counter()
for _ in range({steps}): m.predict_on_batch(x)
infer = {batch} * {steps} / (time.perf_counter() - t)
import tensorflow as tf
print(json.dumps({{"keras_train_img_s": train, "keras_infer_img_s": infer, "keras": keras.__version__, "tensorflow": tf.__version__, "params": m.count_params()}}))
"""
    try:
        import keras  # noqa: F401
    except ImportError:
        return None
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=180)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--bf16", action="store_true",
                    help="also time bf16 autocast on the CPU (imgcls's inference there when the "
                         "CPU computes bf16 natively; training with --amp bf16)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the PyTorch-defaults rows")
    args = ap.parse_args()
    torch.set_num_threads(cpu_threads())
    rows = []
    # Keras first: it runs in a child process, so it does not share this one's allocator.
    keras = None if args.no_keras or args.device != "cpu" else keras_rates(args.size, args.batch,
                                                                          args.steps)
    if args.device == "cpu" and not args.no_baseline:
        rows.append(("pytorch defaults (NCHW)", *torch_rates(args.size, args.batch, args.steps,
                                                             "cpu", False)))
        rows.append(("+ channels_last", *torch_rates(args.size, args.batch, args.steps, "cpu", True)))
    # What `imgcls train` and `predict` do by default (--amp auto) is what is reported.
    precision = precision_for(args.device, "auto")
    if args.device == "cpu":
        keep_freed_memory()  # what `imgcls train` does on the CPU
        fp32 = torch_rates(args.size, args.batch, args.steps, "cpu", True)
        rows.append(("+ reuse freed memory, float32", *fp32))
        best = fp32
        if precision == "bf16" or args.bf16:
            bf = torch_rates(args.size, args.batch, args.steps, "cpu", True, amp=True)
            rows.append(("+ bf16 autocast" + (" (imgcls's default here)"
                                              if precision == "bf16" else ""), *bf))
            best = bf if precision == "bf16" else fp32
    else:
        best = torch_rates(args.size, args.batch, args.steps, "cuda", True, amp=True)
        rows.append(("cuda bf16 channels_last", *best))
    if args.compile:
        comp = torch_rates(args.size, args.batch, args.steps, args.device, True,
                           amp=args.device == "cuda", compile=True)
        rows.append(("+ torch.compile", *comp))
        best = max(best, comp)
    if keras:
        rows.append((f"keras {keras['keras']} (tensorflow {keras['tensorflow']})",
                     keras["keras_train_img_s"], keras["keras_infer_img_s"]))
    print(f"xception {args.size}x{args.size}, batch {args.batch}, {args.device}, "
          f"{cpu_threads()} threads, torch {torch.__version__}")
    print(f"{'setting':44}{'train img/s':>12}{'infer img/s':>12}")
    for name, tr, inf in rows:
        print(f"{name:44}{tr:>12.2f}{inf:>12.2f}")
    res = {"train_img_s": round(best[0], 3), "infer_img_s": round(best[1], 3),
           "precision": precision,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
           "size": args.size, "batch": args.batch, "torch": torch.__version__,
           "threads": cpu_threads(), "python": platform.python_version(),
           "machine": platform.machine()}
    if args.device == "cuda":
        res["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if keras:
        res.update(keras)
        res["train_vs_keras"] = round(best[0] / keras["keras_train_img_s"], 2)
        res["infer_vs_keras"] = round(best[1] / keras["keras_infer_img_s"], 2)
        print(f"vs keras: train {res['train_vs_keras']}x, inference {res['infer_vs_keras']}x")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
