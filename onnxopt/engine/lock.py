"""One run per output folder: an exclusive advisory lock on OUT/.onnxopt.lock."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxopt.errors import InputError

log = logging.getLogger("onnxopt")

LOCK_NAME = ".onnxopt.lock"


@contextlib.contextmanager
def folder_lock(out_dir: Path, *, wait: bool, emit: Callable[..., None]) -> Any:
    """One run per output folder: an exclusive advisory lock on OUT/.onnxopt.lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = out_dir / LOCK_NAME
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise InputError(
                    f"output folder {out_dir} is in use by another onnxopt run ({holder})",
                    hint="wait for it, drop --no-wait, or use another output folder",
                ) from None
            log.warning("output folder %s is in use (%s); waiting for it", out_dir, holder)
            emit("waiting", holder=holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
