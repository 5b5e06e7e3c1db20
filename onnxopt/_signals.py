"""SIGINT/SIGTERM handling, installed before the command line is even imported.

Kept free of heavy imports: the entry point (:mod:`onnxopt._entry`) installs the handler
first, so that a signal that arrives while Python is still importing Typer and the commands
is handled like any other (a clean exit 130/143) instead of killing the process outright.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from onnxopt.errors import ExitCode, Terminated

SIGNALS: dict[str, float] = {}  # the last signal acted on, when, and whether it was reported
_CLEANUP_S = 3.0
_REDELIVER_S = 0.05


def on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: unwind, removing unfinished work (exit code 130/143).

    A repeat within a few seconds is ignored, so that a double Ctrl-C, or a SIGTERM right
    after one, cannot cut the cleanup short (it takes well under a second). A later repeat
    interrupts again, in case the first was swallowed by library code; SIGKILL always works.
    """
    now = time.monotonic()
    if now - SIGNALS.get("at", -_CLEANUP_S) < _CLEANUP_S:
        return
    if _importing(frame):
        # An exception raised while an extension module initialises can leave it half
        # made: seen as "ImportError: initialization failed" and, rarely, a segmentation
        # fault. The signal is delivered again once the import is done.
        _redeliver(signum)
        return
    SIGNALS.update(at=now, signum=signum)
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _importing(frame: Any) -> bool:
    """Whether the interrupted code is inside Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    import threading

    timer = threading.Timer(_REDELIVER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def install() -> None:
    """Route SIGTERM, and SIGINT unless the parent ignores it, to :func:`on_signal`."""
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)


def stopped_early(err: KeyboardInterrupt) -> None:
    """A signal before any command ran: one line, the documented code, nothing written."""
    sys.stderr.write("error: stopped before any work started; nothing was written\n")
    sys.stderr.flush()
    os._exit(int(ExitCode.TERMINATED if isinstance(err, Terminated) else ExitCode.INTERRUPTED))
