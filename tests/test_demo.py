"""scripts/demo.sh (`make demo`): a seeded sample, a time budget said up front, a confident
prediction on a real photo, and the command for the full job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import images

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_a_bounded_job_and_ends_on_an_answer(tmp_path):
    data = images.two_class_tree(tmp_path / "photos", 30, 48)
    env = dict(os.environ, DEMO_PER_CLASS="20", DEMO_MINUTES="0.15", DEMO_RUNS=str(tmp_path / "runs"))
    res = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), sys.executable, str(data)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    said = out.index("at most 20 photos per class, 12 epochs, at most 0.15 minutes of training")
    assert said < out.index("Epoch 1/")  # the budget is said before training starts
    assert "Found 40 files" in out  # 20 of each class's 30
    assert "This image is " in out.split("== imgcls predict", 1)[1]
    assert f"-m imgcls train {data} --out runs/full" in out
    assert len(list((tmp_path / "runs").glob("demo-*/best.safetensors"))) == 1
