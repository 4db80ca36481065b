#!/usr/bin/env bash
# A folder of about a hundred classes for the benchmarks (issue 34/35): Caltech-101, 101
# object categories, 8,677 photos of 40-800 per class (BACKGROUND_Google, a clutter class,
# left out as is usual), as one public repository holds it. Nothing is stored in this project:
#   1. fetch github:MachineLearning2020/Homework2-Caltech101 (the search tool's `fetch`)
#   2. bash bench/get_caltech101.sh GITDIR [DEST]      (DEST: $HOME/datasets/caltech101)
# Extracts 101_ObjectCategories/<class>/*.jpg at commit cb7946ed into DEST/<class>/, checks
# the counts, and does nothing when they are already there. Never writes into GITDIR.
set -euo pipefail
git_dir=${1:?usage: get_caltech101.sh GITDIR [DEST]}
dest=${2:-$HOME/datasets/caltech101}
commit=cb7946ed907cfc19c9b1daf5bb2a0aefcbd8abb3
count() { find "$1" -mindepth 2 -maxdepth 2 -name '*.jpg' 2>/dev/null | wc -l; }
classes() { find "$1" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l; }
if [ "$(count "$dest")" -eq 8677 ] && [ "$(classes "$dest")" -eq 101 ]; then
  echo "$dest: already complete"; exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$(dirname "$dest")/.caltech101.XXXX")
git --git-dir "$git_dir" archive "$commit" 101_ObjectCategories | tar -x -C "$tmp"
rm -rf "$tmp/101_ObjectCategories/BACKGROUND_Google"
find "$tmp/101_ObjectCategories" -type f ! -name '*.jpg' -delete
n=$(count "$tmp/101_ObjectCategories"); k=$(classes "$tmp/101_ObjectCategories")
[ "$n" -eq 8677 ] && [ "$k" -eq 101 ] || { echo "got $n photos in $k classes, expected 8677 in 101" >&2; rm -rf "$tmp"; exit 1; }
rm -rf "$dest" && mv "$tmp/101_ObjectCategories" "$dest" && rm -rf "$tmp"
echo "$dest: $n photos in $k classes"
