"""runtime: precision chosen per device capability (faked where this machine lacks it), and
bf16 predictions agree with float32 ones on real photos."""

from __future__ import annotations

import images
import numpy as np
import pytest

from imgcls.runtime import cpu_native_bf16, interactive, precision_for


def test_precision_follows_the_capability():
    assert precision_for("cpu", "auto", native_bf16=True) == "bf16"
    assert precision_for("cpu", "auto", native_bf16=False) == "fp32"
    assert precision_for("cuda", "auto", cuda_bf16=True) == "bf16"
    assert precision_for("cuda", "auto", cuda_bf16=False) == "fp16"
    for dev in ("cpu", "cuda"):
        assert precision_for(dev, "off", native_bf16=True, cuda_bf16=True) == "fp32"
        assert precision_for(dev, "bf16", native_bf16=False, cuda_bf16=False) == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_trains_in_bf16_only_where_the_cpu_computes_it(native, monkeypatch, tmp_path,
                                                                  caplog):
    """The capability faked both ways (a bf16 run on a CPU without it is emulated: slow but
    correct, and tiny here); the run records the precision it trained in and says it."""
    import logging

    import imgcls
    from imgcls import runtime
    from imgcls.checkpoint import load_checkpoint

    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: native)
    data = images.two_class_tree(tmp_path / "d", 8, 32)
    caplog.set_level(logging.INFO, logger="imgcls")
    run = imgcls.fit(data, tmp_path / "run", preset="tutorial", model="xception-tiny",
                     image_size=32, batch_size=8, epochs=1, threads=1, device="cpu")
    meta = load_checkpoint(run.run_dir / "last.safetensors").meta
    assert meta["precision"] == ("bf16" if native else "fp32")
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Precision:"))
    assert said.startswith("Precision: bf16 mixed precision" if native else "Precision: float32")


def test_the_probe_agrees_with_the_os():
    """What PyTorch reports matches the CPU flags the kernel lists (x86 Linux)."""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert cpu_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


def test_bf16_predictions_agree_with_float32_on_real_photos(tmp_path, catsdogs):
    from imgcls.infer.predictor import Predictor

    data = images.two_class_tree(tmp_path / "d", 20, 48)
    run = images.train_tiny(data, tmp_path / "run", "--epochs", "3", "--seed", "1")
    photos = sorted((catsdogs / "val" / "cats").iterdir())[:12] + \
        sorted((catsdogs / "val" / "dogs").iterdir())[:12]
    fp32 = Predictor.from_checkpoint(run, amp="off").predict(photos)
    bf16 = Predictor.from_checkpoint(run, amp="bf16").predict(photos)
    a = np.array([[p.probabilities[c] for c in ("cat", "dog")] for p in fp32])
    b = np.array([[p.probabilities[c] for c in ("cat", "dog")] for p in bf16])
    # bf16 keeps 8 bits of mantissa: ~0.4% relative per operation; through a small network
    # the probabilities move by at most a few hundredths.
    assert np.abs(a - b).max() <= 0.03, np.abs(a - b).max()
    clear = np.abs(a[:, 0] - 0.5) > 0.03
    assert (a.argmax(1) == b.argmax(1))[clear].all()


def test_progress_bars_need_a_terminal_or_a_running_kernel(monkeypatch):
    """Old code showed bars whenever ipykernel had been imported: in a program or a test run
    writing to a pipe, that put tqdm's lines among the one-line errors on stderr."""
    IPython = pytest.importorskip("IPython")
    pytest.importorskip("ipykernel")  # imported, as a notebook tool's dependencies do
    assert not interactive()  # pytest's stderr is no terminal, and no kernel runs here
    kernel = type("Shell", (), {"config": {"IPKernelApp": {"connection_file": "k.json"}}})()
    monkeypatch.setattr(IPython, "get_ipython", lambda: kernel)
    assert interactive()
