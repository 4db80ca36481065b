"""The house plan (ARCHITECTURE.md) holds: import-linter's contracts in pyproject.toml
(the layers, models importing only torch, no import circles) pass on the package as it is,
and a change that breaks them fails the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {"PYTHONPATH": str(src), "PATH": str(exe.parent)}
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_layers_hold():
    res = _lint_imports(ROOT, ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


def test_an_import_up_the_hallway_breaks_the_suite(tmp_path):
    """The same contracts on a copy where data/ imports train/: reported, exit non-zero."""
    shutil.copytree(ROOT / "src", tmp_path / "src")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    scan = tmp_path / "src" / "imgcls" / "data" / "scan.py"
    scan.write_text(scan.read_text() + "\nfrom imgcls.train import loop  # noqa\n")
    res = _lint_imports(tmp_path, tmp_path / "src")
    assert res.returncode != 0 and "imgcls.data is not allowed to import imgcls.train" in res.stdout
