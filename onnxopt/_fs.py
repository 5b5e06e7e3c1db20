"""Bottom layer: where the files of a step's libraries go. Imports nothing from onnxopt.

Libraries that onnxopt calls write files of their own: ONNX Runtime's symbolic shape
inference saves ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` into the *current
folder* when it gives up, its quantizers write ``*-inferred.onnx`` beside their input and
use the system temp folder, onnxsim and the exporters keep temporary files too. A step
therefore runs inside :func:`scratch_env`: the current folder and every temporary folder
(Python's ``tempfile`` and ``TMPDIR`` for C++ code and subprocesses) point into the step's
own scratch folder, which the engine removes. Code of the user's (a model factory, a
calibration callable) runs in :func:`user_cwd`, back in the folder the run started from.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def _chdir(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _temp_in(folder: Path) -> Iterator[None]:
    """Python's ``tempfile`` and ``TMPDIR`` (C++ code, subprocesses) point into ``folder``."""
    saved_dir = tempfile.tempdir
    saved_env = os.environ.get("TMPDIR")
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


@contextlib.contextmanager
def scratch_env(scratch: Path) -> Iterator[Path]:
    """Run the body with its current folder and temporary files inside ``scratch``.

    Creates ``scratch/cwd`` and ``scratch/tmp``; the previous folder, ``tempfile.tempdir``
    and ``TMPDIR`` are restored on the way out, whatever happens. Paths handed to libraries
    must be absolute (the engine resolves every configured path before a step starts).
    """
    cwd, tmp = scratch / "cwd", scratch / "tmp"
    cwd.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    with _temp_in(tmp), _chdir(cwd):
        yield scratch


@contextlib.contextmanager
def process_temp() -> Iterator[Path]:
    """One temporary folder for the whole command, removed when it ends.

    Set before any library is imported: ONNX Runtime writes a telemetry session file
    (``.ses``) into the temp folder when it is imported, and commands without an output
    folder (``bench`` without ``-o``, ``inspect``) run library code outside any step.
    """
    import shutil

    folder = Path(tempfile.mkdtemp(prefix="onnxopt-"))
    try:
        with _temp_in(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def user_cwd(folder: Path) -> Iterator[None]:
    """Run the user's own code (factories, callables) in the folder the run started from.

    Such code may open files relative to where the user ran onnxopt; temporary files it
    makes still land in the step's scratch folder.
    """
    with _chdir(folder):
        yield
