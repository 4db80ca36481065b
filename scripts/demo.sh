#!/usr/bin/env bash
# `make demo`: the main job on real photos, end to end, in a predictable few minutes.
#   scan -> train (the default recipe: the CPU preset without a GPU, the tutorial's with one)
#   on a seeded sample of at most 1,000 photos per class, for at most 6 minutes of training
#   -> evaluate (figures) -> a confident prediction on a real validation photo
#   -> the one command that trains on everything.
# Usage: scripts/demo.sh PYTHON [DATA_DIR]
# Data: DATA_DIR if given; else data/PetImages (downloaded before, or now if the network
# answers within seconds); else ../shared/datasets/catsdogs; else a clear message.
set -euo pipefail
PY=${1:-python3}
DATA=${2:-}
PER_CLASS=${DEMO_PER_CLASS:-1000}  # photos per class in the demo's sample
EPOCHS=${DEMO_EPOCHS:-12}          # a whole (short) learning-rate schedule...
MINUTES=${DEMO_MINUTES:-6}         # ...within this budget: the last epoch that ends within it
here=$(cd "$(dirname "$0")/.." && pwd)
imgcls() { "$PY" -m imgcls "$@"; }
VAL=""
if [ -z "$DATA" ]; then
  if [ -d "$here/data/PetImages" ]; then
    DATA="$here/data/PetImages"
  elif [ -d "$here/../shared/datasets/catsdogs/train" ]; then
    DATA="$here/../shared/datasets/catsdogs/train"
    VAL="$here/../shared/datasets/catsdogs/val"
  elif imgcls download --dest "$here/data" --timeout 5 >/dev/null 2>&1 && [ -d "$here/data/PetImages" ]; then
    DATA="$here/data/PetImages"
  else
    echo "demo: no photos here and the download did not answer." >&2
    echo "demo: give a folder with one sub-folder per class: make demo DATA=/path/to/photos" >&2
    echo "demo: or fetch Cats vs Dogs first: .venv/bin/imgcls download --dest data" >&2
    exit 2
  fi
fi
RUN="${DEMO_RUNS:-$here/runs}/demo-$(date +%Y%m%d-%H%M%S)"
echo "== imgcls scan $DATA"
imgcls scan "$DATA" | head -n 12
TRAIN=(--max-per-class "$PER_CLASS" --epochs "$EPOCHS" --time-limit "$MINUTES")
if [ -n "$VAL" ]; then TRAIN+=(--val-dir "$VAL"); fi
echo "== imgcls train: at most $PER_CLASS photos per class, $EPOCHS epochs, at most $MINUTES minutes of training"
echo "   (plus the scan and a one-time decode of the sample: at most about $((MINUTES + 2)) minutes in all)"
imgcls train "$DATA" --out "$RUN" "${TRAIN[@]}"
echo "== imgcls evaluate $RUN"
imgcls evaluate "$RUN"
# A photo the model is sure about, from its own validation set: the demo ends on an answer
# that shows what a trained model says, not on whichever file sorts first.
PHOTO=$("$PY" - "$RUN" <<'PYEOF'
import sys
from imgcls.infer.evaluate import run_validation_items
from imgcls.infer.predictor import Predictor
from pathlib import Path
run = Path(sys.argv[1])
p = Predictor.from_checkpoint(run)
items, _, _ = run_validation_items(run, p.class_names)
items = items[::max(1, len(items) // 64)][:64]
preds = p.predict([f for f, _ in items])
best = max((q.probabilities[q.class_name], f) for q, (f, label) in zip(preds, items)
           if q.class_name == p.class_names[label])
print(best[1])
PYEOF
)
echo "== imgcls predict $RUN $PHOTO"
imgcls predict "$RUN" "$PHOTO"
echo "Run folder: $RUN"
echo "Figures: $RUN/curves.png $RUN/confusion_matrix.png $RUN/top_losses.png"
echo "The full job, every photo, the default recipe to its end:"
echo "  $PY -m imgcls train $DATA${VAL:+ --val-dir $VAL} --out runs/full"
