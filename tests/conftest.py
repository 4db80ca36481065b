"""Shared fixtures: every test gets its own imgcls cache folder, so nothing leaks between
tests or into the user's real cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "catsdogs"


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path_factory.mktemp("imgcls-cache")))


@pytest.fixture
def catsdogs() -> Path:
    if not (SHARED / "train").is_dir():
        pytest.skip("../shared/datasets/catsdogs is not here")
    return SHARED
