#!/usr/bin/env bash
# `make demo`: the main job on real photos, end to end.
#   scan -> train (CPU preset, a few minutes, where there is no GPU; the tutorial on a GPU)
#   -> evaluate (figures) -> predict one photo.
# Usage: scripts/demo.sh PYTHON [DATA_DIR]
# Data: DATA_DIR if given; else data/PetImages (downloaded before, or now if the network
# answers within seconds); else ../shared/datasets/catsdogs; else a clear message.
set -euo pipefail
PY=${1:-python3}
DATA=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
imgcls() { "$PY" -m imgcls "$@"; }
VAL=""
if [ -z "$DATA" ]; then
  if [ -d "$here/data/PetImages" ]; then
    DATA="$here/data/PetImages"
  elif imgcls download --dest "$here/data" --timeout 5 >/dev/null 2>&1 && [ -d "$here/data/PetImages" ]; then
    DATA="$here/data/PetImages"
  elif [ -d "$here/../shared/datasets/catsdogs/train" ]; then
    DATA="$here/../shared/datasets/catsdogs/train"
    VAL="$here/../shared/datasets/catsdogs/val"
  else
    echo "demo: no photos here and the download did not answer." >&2
    echo "demo: give a folder with one sub-folder per class: make demo DATA=/path/to/photos" >&2
    echo "demo: or fetch Cats vs Dogs first: .venv/bin/imgcls download --dest data" >&2
    exit 2
  fi
fi
RUN="$here/runs/demo-$(date +%Y%m%d-%H%M%S)"
echo "== imgcls scan $DATA"
imgcls scan "$DATA"
if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "== imgcls train (GPU: the Keras tutorial's recipe)"
  TRAIN=(--epochs 25)
else
  echo "== imgcls train (CPU: --preset cpu, 14 epochs, about 6 minutes on 2 cores)"
  TRAIN=(--preset cpu --epochs 14)
fi
if [ -n "$VAL" ]; then TRAIN+=(--val-dir "$VAL"); fi
imgcls train "$DATA" --out "$RUN" "${TRAIN[@]}"
echo "== imgcls evaluate $RUN"
imgcls evaluate "$RUN"
PHOTO=$(find "${VAL:-$DATA}" -type f -iname '*.jpg' | sort | head -n 1 || true)
echo "== imgcls predict $RUN $PHOTO"
imgcls predict "$RUN" "$PHOTO"
echo "Run folder: $RUN"
echo "Figures: $RUN/curves.png $RUN/confusion_matrix.png $RUN/top_losses.png"
