#!/usr/bin/env bash
# The recipes on one CUDA GPU, in one short run (about 6 minutes on an H200):
#   1. `imgcls train` with its defaults on catsdogs (train/ + val/), then `imgcls evaluate` and
#      `imgcls predict` through the CLI: the CUDA path end to end, and the recipe it picks;
#   2. the tutorial's recipe (what `--preset auto` picks on a GPU) on small real folders,
#      120 and 240 photos per class, 25 epochs, BatchNorm re-estimation on and off, then
#      with small sets passed over several times an epoch (bench/small_folders.py);
#   3. seed-network training speed (bench/train_speed.py);
#   4. `torchrun -m imgcls train` with NCCL at world size 1 (bench/ddp_nccl.py);
#   5. the speed again with torch.compile (last: compiling may take minutes).
# Usage, from the repository root:
#   bash bench/gpu_recipes.sh DATA_DIR [LOG_DIR]
# DATA_DIR holds train/ and val/ with one sub-folder per class (catsdogs). SMOKE=1 runs every
# step for one epoch on a few photos (to check the script on a CPU before spending GPU time).
set -uo pipefail
DATA=${1:?DATA_DIR}
LOG=${2:-bench/out/gpu}
PY=${PY:-python3}
mkdir -p "$LOG"
WORK=$(mktemp -d)
if [ "${SMOKE:-0}" = 1 ]; then
    SIZES="8"; EPOCHS="--epochs 1"; SMALL_EPOCHS="--epochs 1"; STEPS=2; IMAGES=64
else
    SIZES="120 240"; EPOCHS=""; SMALL_EPOCHS=""; STEPS=30; IMAGES=4000
fi
step() { echo; echo "== $* ($(date +%T))"; }

step environment
"$PY" -c 'import sys, torch, PIL, numpy; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "", "Pillow", PIL.__version__, "numpy", numpy.__version__)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"

step "1. imgcls train with its defaults on $DATA, then evaluate and predict"
timeout 150 "$PY" -m imgcls train "$DATA/train" --val-dir "$DATA/val" --out "$WORK/run" \
    --cache-dir "$WORK/cache" $EPOCHS 2>&1 | tee "$LOG/train.log"
timeout 60 "$PY" -m imgcls evaluate "$WORK/run" "$DATA/val" --no-figures --cache-dir "$WORK/cache" \
    2>&1 | tee "$LOG/evaluate.log"
one=$(find "$DATA/val" -type f | sort | head -1)
timeout 60 "$PY" -m imgcls predict "$WORK/run" "$one" 2>&1 | tee -a "$LOG/evaluate.log"
cp "$WORK/run/metrics.jsonl" "$LOG/train_metrics.jsonl"

step "2. tutorial recipe on small folders"
timeout 200 "$PY" bench/small_folders.py --data "$DATA" --sizes $SIZES --presets tutorial \
    $SMALL_EPOCHS --recal on off 2>&1 | tee "$LOG/small_folders.log"
# what `--preset auto` adds on a GPU: small sets passed over several times an epoch
timeout 120 "$PY" bench/small_folders.py --data "$DATA" --sizes $SIZES --presets tutorial \
    $SMALL_EPOCHS --recal on --set epoch_images=2048 2>&1 | tee -a "$LOG/small_folders.log"

DEV=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
step "3. seed-network speed, eager"
timeout 60 "$PY" bench/train_speed.py --device "$DEV" --batch 128 --steps $STEPS --no-keras \
    --no-baseline 2>&1 | tee "$LOG/train_speed.log"

step "4. torchrun + NCCL, world size 1"
timeout 90 "$PY" bench/ddp_nccl.py --images $IMAGES --epochs 2 2>&1 | tee "$LOG/ddp.log"

step "5. seed-network speed, eager and compiled"
timeout 120 "$PY" bench/train_speed.py --device "$DEV" --batch 128 --steps $STEPS --compile \
    --no-keras --no-baseline 2>&1 | tee "$LOG/train_speed_compile.log"
step done
rm -rf "$WORK"
