"""How far bf16 autocast moves the CPU preset's gradients from float32, layer by layer.

    .venv/bin/python bench/bf16_grads.py [--data ../shared/datasets/catsdogs/train]

Takes 128 real photos (64 per class) at 128 px, trains the cpu preset's ResNet three float32
steps (dropout off, so both passes see the same network), then computes one batch's gradient
in float32 and under `torch.autocast("cpu", torch.bfloat16)`, and prints the relative L2
error and cosine of each weight's gradient; then again with every BatchNorm kept in float32.
Why: the cpu preset trained in bf16 ended 3 points lower on catsdogs, with a higher training
loss at every epoch (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from imgcls.models.resnet import SmallResNet

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs" / "train"


class FloatBN(nn.BatchNorm2d):
    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


def keep_bn_float(mod: nn.Module) -> None:
    for name, ch in mod.named_children():
        if isinstance(ch, nn.BatchNorm2d):
            b = FloatBN(ch.num_features)
            b.load_state_dict(ch.state_dict())
            setattr(mod, name, b)
        else:
            keep_bn_float(ch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    files = [(f, c) for c, d in enumerate(sorted(p for p in Path(args.data).iterdir() if p.is_dir()))
             for f in sorted(d.glob("*.jpg"))[:64]]
    random.shuffle(files)
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((128, 128))) for f, _ in files])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
    y = torch.tensor([c for _, c in files])
    model = SmallResNet(1, dropout=0.0).to(memory_format=torch.channels_last)

    def loss_of(amp: bool):
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            z = model(x).float()
            return F.cross_entropy(torch.cat([torch.zeros_like(z), z], 1), y)

    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for _ in range(3):
        opt.zero_grad()
        loss_of(False).backward()
        opt.step()

    def grads(amp: bool) -> dict:
        model.zero_grad()
        loss_of(amp).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if n.endswith("weight")}

    for title in ("bf16 autocast vs float32", "the same with BatchNorm kept in float32"):
        if "BatchNorm" in title:
            keep_bn_float(model)
            model.to(memory_format=torch.channels_last)
        g32, g16 = grads(False), grads(True)
        print(title)
        for n, a in g32.items():
            b = g16[n]
            print(f"  {n:32s} relative error {((a - b).norm() / a.norm()).item():.3f}  "
                  f"cosine {F.cosine_similarity(a.flatten(), b.flatten(), 0).item():.4f}")


if __name__ == "__main__":
    main()
