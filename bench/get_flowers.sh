#!/usr/bin/env bash
# The fine-tune benchmark's photos (bench/finetune.py): 4,317 labelled flower photos in five
# classes (daisy, dandelion, rose, sunflower, tulip: Kaggle's "Flowers Recognition" set), as
# one public repository holds them. Nothing is stored in this project:
#   1. fetch github:martinwestin/flower_classification (the search tool's `fetch`: a git dir)
#   2. bash bench/get_flowers.sh GITDIR [DEST]       (DEST: $HOME/datasets/flowers5)
# Extracts flowers/<class>/*.jpg at commit c169e7e4 into DEST/<class>/, checks the counts,
# and does nothing when they are already there. Never writes into GITDIR.
set -euo pipefail
git_dir=${1:?usage: get_flowers.sh GITDIR [DEST]}
dest=${2:-$HOME/datasets/flowers5}
commit=c169e7e4038bc0e0e2fe80090b6dc8919539816f
declare -A want=([daisy]=764 [dandelion]=1052 [rose]=784 [sunflower]=733 [tulip]=984)
ok=1
for c in "${!want[@]}"; do
  n=$( (find "$dest/$c" -maxdepth 1 -name "*.jpg" 2>/dev/null || true) | wc -l)
  [ "$n" -eq "${want[$c]}" ] || ok=0
done
if [ "$ok" -eq 1 ]; then echo "$dest: already complete"; exit 0; fi
tmp=$(mktemp -d "$(dirname "$dest")/.flowers5.XXXX" 2>/dev/null || { mkdir -p "$(dirname "$dest")"; mktemp -d "$(dirname "$dest")/.flowers5.XXXX"; })
git --git-dir "$git_dir" archive "$commit" flowers | tar -x -C "$tmp"
for c in "${!want[@]}"; do
  n=$(find "$tmp/flowers/$c" -maxdepth 1 -name '*.jpg' | wc -l)
  [ "$n" -eq "${want[$c]}" ] || { echo "$c: $n photos, expected ${want[$c]}" >&2; rm -rf "$tmp"; exit 1; }
done
find "$tmp/flowers" -type f ! -name '*.jpg' -delete
rm -rf "$dest" && mv "$tmp/flowers" "$dest" && rm -rf "$tmp"
echo "$dest: $(find "$dest" -name '*.jpg' | wc -l) photos in 5 classes"
