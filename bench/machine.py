"""The machine a bench script ran on, in words: every published number names its CPU."""

from __future__ import annotations

import platform
import re
import subprocess


def cpu() -> str:
    """`lscpu`'s model name and the instruction sets that decide speed and rounding."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", text)
    flags = set(re.search(r"Flags:\s*(.+)", text).group(1).split()) if "Flags:" in text else set()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model.group(1).strip() if model else platform.processor()} ({' '.join(isa)})"
