#!/usr/bin/env bash
# Install PyTorch into the environment of the given python, choosing the build by hardware:
#   - an NVIDIA GPU answers nvidia-smi -> PyPI's default Linux wheel, which is a CUDA build;
#   - otherwise the CPU build, from PyTorch's CPU index. Its "+cpu" local version sorts above
#     PyPI's CUDA wheel of the same release, so pip never picks the multi-GB CUDA build.
#     Where the CPU wheel lies in one of pip's find-links folders (as on our CI machine) it is
#     installed by its path and the CPU index is never asked.
# A torch that is already importable is kept as it is (a GPU user's own CUDA build, say).
# Override the release with TORCH_VERSION=..., or the whole requirement with TORCH_SPEC=...
set -euo pipefail
PY=${1:-python3}
if "$PY" -c 'import torch' 2>/dev/null; then
  echo "install_torch: keeping $("$PY" -c 'import torch; print("torch", torch.__version__)')"
  exit 0
fi
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

# The CPU wheel of TORCH_VERSION for this Python and machine in one of pip's find-links
# folders, if any. Installed by its path, pip never asks PyTorch's index: where that index
# cannot be reached (our CI machine), pip retried it for 1.5-3 minutes before it took the
# same wheel from the folder.
local_cpu_wheel() {
  local dirs tag d w
  dirs="${PIP_FIND_LINKS:-} $("$PY" -m pip config list 2>/dev/null \
    | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p")"
  tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  for d in $dirs; do
    d=${d#file://}
    for w in "$d"/torch-"$TORCH_VERSION"+cpu-"$tag"-"$tag"-*"$(uname -m)".whl; do
      if [ -f "$w" ]; then echo "$w"; return 0; fi
    done
  done
}
TORCH_SPEC=${TORCH_SPEC:-torch==$TORCH_VERSION}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install_torch: NVIDIA GPU found: installing a CUDA build ($TORCH_SPEC)"
  "$PY" -m pip install "$TORCH_SPEC"
elif [ "$TORCH_SPEC" = "torch==$TORCH_VERSION" ] && wheel=$(local_cpu_wheel) && [ -n "$wheel" ]; then
  echo "install_torch: no NVIDIA GPU: installing the CPU build from $wheel"
  "$PY" -m pip install "$wheel"
else
  echo "install_torch: no NVIDIA GPU: installing the CPU build ($TORCH_SPEC)"
  "$PY" -m pip install "$TORCH_SPEC" --extra-index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -c 'import torch; print("install_torch: torch", torch.__version__, "cuda" if torch.version.cuda else "cpu")'
