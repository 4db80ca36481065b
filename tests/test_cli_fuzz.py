"""cli, fuzzed: random values of random types for every option of every command, and random
config files, end in exit 0 (or 1 where a photo failed) or in exactly one `imgcls: error:`
line with exit 2, never in a traceback; `train` trains for real (a run folder with a
validated model, or nothing). Bounded: a few hundred examples in all."""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
import images  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from imgcls.cli import build_parser, main  # noqa: E402

# serve blocks, download reaches the network: their options are fuzzed through the parser
# and the limit checks only (test_serve and test_download run them for real).
RUN_FOR_REAL = ("scan", "split", "summary", "train", "predict", "evaluate", "plot", "show")

# Options that name a file or folder to write or read: fuzzed with paths inside the test's
# folder only (a random string could be an absolute path the suite must not touch).
PATHS = {"cache_dir", "out_dir", "output", "out", "quarantine", "val_dir", "data", "dest",
         "check_images", "resume", "config"}

values = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "0", "1", "-1", "2", "auto", "true", "nan", "1e309", "x", "--", "-"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12))


def _options(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions
            if a.option_strings and a.dest not in ("help",)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    data = images.two_class_tree(base / "data", 6, 40)
    run = images.train_tiny(data, base / "run", "--epochs", "1")
    return base, data, run


# `train` trains for real, on a sample small enough for a second or two: these flags come
# after the fuzzed ones and win (argparse keeps the last), while each fuzzed value is still
# parsed and checked. Each example trains into a folder of its own.
SMALL = ["--epochs", "1", "--image-size", "32", "--model", "xception-tiny", "--batch-size", "4",
         "--max-per-class", "4", "--epoch-images", "0", "--low-res", "0", "--threads", "1",
         "--no-compile", "--time-limit", "0", "--amp", "off"]
RUNS = itertools.count()


def _argv(command: str, draw, base, data, run) -> list[str]:
    positional = {"scan": [data], "split": [data], "summary": [], "plot": [run],
                  "train": [data],
                  "predict": [run, data / "cat" / "cat.0.jpg"], "evaluate": [run],
                  "show": [data], "serve": [run], "download": []}[command]
    argv = [command, *map(str, positional)]
    for action in draw(st.lists(st.sampled_from(_options(command)), max_size=4, unique=True)):
        flag = action.option_strings[-1]
        if action.nargs == 0:
            argv.append(flag)
        elif action.dest in PATHS:  # somewhere inside the test's folder, never / or the project
            argv += [flag, str(base / "fuzz-paths" / draw(st.sampled_from(["a", "b/c", ""])))]
        else:
            argv += [flag, draw(values)]
    if command in ("train", "evaluate", "show", "plot", "summary"):
        # figures and run folders go into the test's own folder, never the project
        argv += {"train": [*SMALL, "--out", str(base / f"fuzz-run-{next(RUNS)}")],
                 "evaluate": ["--no-figures"],
                 "show": ["-o", str(base / "s.png")], "plot": ["-o", str(base / "c.png")],
                 "summary": []}[command]
    return argv


def _check(argv, capsys) -> int:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # --help / --version
        rc = exc.code or 0
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith("imgcls: error:")]
    assert rc in (0, 1, 2), (argv, rc, err)
    if rc == 2:
        assert len(errors) == 1 or (argv[0] == "predict" and errors), (argv, err)
    if argv[0] == "train" and "--out" in argv and "--help" not in argv:
        out = Path(argv[len(argv) - argv[::-1].index("--out")])  # the last --out's value
        # Trained: a validated model and its metrics; refused: nothing left behind.
        assert (rc == 0) == (out / "best.safetensors").is_file(), (argv, rc, err)
        assert rc == 0 or not out.exists(), (argv, err)
    return rc


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("command", RUN_FOR_REAL)
def test_random_options_end_in_one_line_or_success(command, world, data, capsys, monkeypatch):
    base, folder, run = world
    monkeypatch.chdir(base)  # a random --cache-dir or -o is relative: never the project's folder
    argv = _argv(command, data.draw, base, folder, run)
    if command == "predict" and "--help" not in argv:
        argv.append("--no-tta") if "--tta" not in argv else None
    _check(argv, capsys)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("command", ("serve", "download"))
def test_options_of_commands_that_block_are_checked_before_they_start(command, world, data,
                                                                     capsys, monkeypatch):
    base, folder, run = world
    monkeypatch.chdir(base)
    argv = _argv(command, data.draw, base, folder, run)
    capsys.readouterr()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)
        err = capsys.readouterr().err
        assert exc.code == 0 or err.count("imgcls: error:") == 1, err
        return
    if command == "serve":
        from imgcls.infer.serve import ServeLimits

        ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_files=args.max_files, max_pixels=args.max_pixels)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3), max_leaves=6)
KEYS = ["epochs", "lr", "batch_size", "image_size", "flip", "tta", "seed", "mixup", "model",
        "weight_decay", "val_split", "schedule", "model_options", "time_limit", "amp", "nonsense"]


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
                     json_values))
def test_random_config_files_end_in_one_line(doc, world, capsys, monkeypatch):
    base, folder, run = world
    monkeypatch.chdir(base)
    f = base / "fuzz.json"
    try:
        f.write_text(json.dumps(doc))
    except ValueError:
        return
    _check(["train", str(folder), "--config", str(f), *SMALL, "--out",
            str(base / f"fuzz-run-{next(RUNS)}")], capsys)
