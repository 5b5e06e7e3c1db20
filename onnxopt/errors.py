"""Error hierarchy and exit codes.

Library code raises :class:`OnnxoptError` subclasses; only the CLI turns them into an
``error: ...`` line on stderr and an exit code. Exit codes are part of the interface.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes of the ``onnxopt`` command (documented in the README)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    VERIFICATION = 3
    GATE = 4
    INTERRUPTED = 130
    TERMINATED = 143


def first_line(err: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (its type name when empty), cut at ``limit``."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if limit is None else line[:limit]


def described(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (just the type when the message is empty)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {first_line(err, limit)}" if text else type(err).__name__


def failure_reason(err: BaseException, scratch: Any = None) -> str:
    """One line on a candidate's failure for a search's report: an onnxopt error's message,
    anything else as an internal error to report; ``scratch`` (a folder) never named."""
    if isinstance(err, OnnxoptError):
        text = err.message
    else:
        text = f"internal error: {described(err)}; please report it"
    return without_folder(text, scratch)


def without_folder(text: str, folder: Any) -> str:
    """``text`` without the path of ``folder`` (a scratch or work folder) in it."""
    if folder is None:
        return text
    where = str(folder).rstrip("/")
    return text.replace(where + "/", "").replace(where, "the work folder")


class OnnxoptError(Exception):
    """Base class: a message for the user and the exit code it maps to."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        #: The manifest of the pipeline run that failed, when there was one.
        self.manifest: dict[str, Any] | None = None
        super().__init__(message if hint is None else f"{message}; {hint}")


class ConfigError(OnnxoptError):
    """The pipeline file or command-line options are invalid (exit 2)."""

    exit_code = ExitCode.USAGE


class InputError(OnnxoptError):
    """A file or value given by the user cannot be used: missing, corrupt, mismatched (exit 2)."""

    exit_code = ExitCode.USAGE


class MissingDependencyError(OnnxoptError):
    """An optional dependency is not installed (exit 2); the message names the extra."""

    exit_code = ExitCode.USAGE


class StepError(OnnxoptError):
    """A step failed while doing its work (exit 1)."""

    exit_code = ExitCode.FAILURE


class VerificationError(OnnxoptError):
    """A produced artifact failed its check against its parent (exit 3)."""

    exit_code = ExitCode.VERIFICATION


class GateError(OnnxoptError):
    """A benchmark gate (regression or latency budget) failed (exit 4)."""

    exit_code = ExitCode.GATE


class Terminated(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler: cleaned up like Ctrl-C, exits 143."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def require(module: str, extra: str = "torch") -> None:
    """Fail with a clear message when an optional dependency is missing.

    Args:
        module: importable module name, e.g. ``"torch"``.
        extra: the pip extra that brings it.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"this step needs the Python package '{module}', which cannot be imported ({err})",
            hint=f"install the extra: pip install 'onnxopt[{extra}]' -c constraints.txt",
        ) from None
