#!/usr/bin/env bash
# `make demo`: the main job on real photos. Usage: scripts/demo.sh PYTHON [DATA_DIR]
set -euo pipefail
PY=${1:-python3}
DATA=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$DATA" ]; then
  for d in "$here/data/PetImages" "$here/../shared/datasets/catsdogs/train"; do
    if [ -d "$d" ]; then DATA=$d; break; fi
  done
fi
if [ -z "$DATA" ]; then
  echo "demo: no photos found. Give a class-per-folder tree with: make demo DATA=/path/to/photos" >&2
  exit 2
fi
echo "== imgcls scan $DATA"
"$PY" -m imgcls scan "$DATA"
