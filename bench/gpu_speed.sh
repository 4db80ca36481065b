#!/usr/bin/env bash
# Seed-network training speed on one CUDA GPU: 180x180, batch 128, bf16 autocast +
# channels_last, without and with torch.compile; then the DDP/NCCL path at world size 1.
# Runs in a few minutes. Usage (from the repository root, after `make setup`):
#   bash bench/gpu_speed.sh [PYTHON]
# An H100/H200-class GPU should train one PetImages epoch (18,728 images) in <= 5 s,
# i.e. >= 3,750 images/s.
set -euo pipefail
PY=${1:-.venv/bin/python}
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== eager and compiled (bench/train_speed.py)"
"$PY" bench/train_speed.py --device cuda --batch 128 --steps 30 --compile
echo "== one epoch of 18,728 synthetic-cache images through imgcls train (NCCL, world size 1)"
"$PY" bench/ddp_nccl.py --images 18728 --epochs 2
