"""The library's voice: every module reports through `logging.getLogger(__name__)` (under
"imgcls") and `warnings.warn`, never print; the CLI installs `TerminalHandler`, which
prints what the commands have always printed, and a notebook or program decides for itself
(`logging.basicConfig(level=logging.INFO)` shows a run's progress; nothing is shown by
default but warnings).

Three kinds of message: INFO is a command's output (the recipe, the epoch lines: stdout);
INFO with extra=NOTE is a remark on stderr ("imgcls: note: ..."); WARNING and above are
"imgcls: warning: ..." on stderr.
"""

from __future__ import annotations

import logging
import sys

NOTE = {"imgcls_note": True}  # extra= of an INFO record that is a remark, not output


class TerminalHandler(logging.Handler):
    """What the CLI shows: output on stdout, notes and warnings on stderr, one line each.
    Streams are looked up at each record, so a redirected sys.stdout (tests) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                print(f"imgcls: warning: {msg}", file=sys.stderr, flush=True)
            elif getattr(record, "imgcls_note", False):
                print(f"imgcls: note: {msg}", file=sys.stderr, flush=True)
            else:
                print(msg, file=sys.stdout, flush=True)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def install_terminal() -> tuple[logging.Logger, TerminalHandler, tuple]:
    """Attach TerminalHandler to the "imgcls" logger at INFO; returns what to undo."""
    logger = logging.getLogger("imgcls")
    handler = TerminalHandler()
    before = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler, before


def uninstall_terminal(logger: logging.Logger, handler: TerminalHandler, before: tuple) -> None:
    logger.removeHandler(handler)
    logger.setLevel(before[0])
    logger.propagate = before[1]
