"""The imgcls command line run inside the test's own process, reported as a finished process
would be (return code, stdout, stderr).

Each `python -m imgcls` pays 2-4 s of interpreter and PyTorch start-up on a 2-core CPU:
most of what a one-line-error test costs, and a third of the suite on the slowest CPU seen.
The CLI's `main` is made to be called more than once (it installs and removes its terminal
handler and warning printer each time); what it leaves behind, PyTorch's thread count, is
put back here. Tests that need a real process (a kill, a signal, a fresh interpreter for
bit-identical results, a second run beside a first) use subprocess themselves.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

import torch

from imgcls.cli import main


def run(*args) -> subprocess.CompletedProcess:
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # --help, --version
                code = exc.code if isinstance(exc.code, int) else 0
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["imgcls", *argv], code, out.getvalue(), err.getvalue())
