"""Bottom layer: file hashing, atomic writes, and where the files of a step's libraries go.

Imports nothing from onnxopt but :mod:`onnxopt.errors`.

Writes go to a temporary file beside the target and are renamed into place, so a reader
never sees a half-written file.

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
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxopt.errors import InputError


def now() -> str:
    """The time as manifests and reports write it (UTC, seconds, ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


_CHUNK = 1 << 20


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
    """Python's ``tempfile`` and ``TMPDIR`` (C++ code, subprocesses) point into ``folder``.

    On the way out the environment forgets every path into ``folder`` that the body put
    there: a library that keeps its cache folder in a variable (torch's inductor sets
    ``TORCHINDUCTOR_CACHE_DIR`` from the temp folder on first use) would otherwise write
    into this removed folder again in a later call of the same process.
    """
    saved_dir = tempfile.tempdir
    before = dict(os.environ)
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved_dir
        inside = str(folder)
        for key, value in list(os.environ.items()):
            if key == "TMPDIR" or (inside in value and before.get(key) != value):
                if key in before:
                    os.environ[key] = before[key]
                else:
                    os.environ.pop(key, None)


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


def sha256_file(path: Path, digest: Any = None) -> str:
    """sha256 of a file's bytes, read in chunks (also feeds ``digest`` when given)."""
    own = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            own.update(chunk)
            if digest is not None:
                digest.update(chunk)
    return own.hexdigest()


def stable_json(value: Any) -> str:
    """Canonical JSON text used for hashing configs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest_of(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    return hashlib.sha256(stable_json(list(parts)).encode()).hexdigest()


def _temp_beside(final: Path, suffix: str) -> Path:
    """Create an empty temporary file beside ``final`` (making its folder); clear error if not."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as err:
        raise InputError(
            f"cannot write {final} ({err.strerror})", hint="choose a writable folder"
        ) from None
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success."""
    tmp = _temp_beside(final, ".tmp")
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_writable(final: Path) -> None:
    """Fail now, with a clear error, if ``final`` could not be written later.

    Used before long measurements so that an unwritable report path is found in a second,
    not after minutes of benchmarking. Creates the parent folder if needed.
    """
    if final.is_dir():
        raise InputError(f"{final} is a folder; give a file path")
    _temp_beside(final, ".probe").unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def file_mode() -> int:
    """Mode for new files, honouring the umask (temp files start as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
