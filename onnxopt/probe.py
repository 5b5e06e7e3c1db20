"""Load and run a freshly written model once in a child process, where a crash of the
runtime cannot take onnxopt with it.

ONNX Runtime can die with a signal (a segmentation fault inside ``InferenceSession.run``)
on a model its own quantizer wrote: in this process the user would get no message and no
model. :func:`first_run_in_child` runs the model's first inference in a child; a child
killed by a signal becomes a :class:`~onnxopt.errors.StepError` naming the candidate and
the signal, so a search records it as that candidate's failure and goes on. Any other
failure of the child is left to the in-process run that follows, which reports it with
its usual message.

``python -m onnxopt.probe MODEL INPUTS.npz TARGET_JSON`` is the child.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from onnxopt.config import Target
from onnxopt.errors import StepError
from onnxopt.verify import Inputs

#: seconds the child may take to load the model and run it once
PROBE_TIMEOUT = 900.0


def _command(model: Path, feeds: Path, target: Target) -> list[str]:
    """The child's command line."""
    return [
        sys.executable,
        "-m",
        "onnxopt.probe",
        str(model),
        str(feeds),
        target.model_dump_json(),
    ]


def signal_name(code: int) -> str:
    """``signal 11 (SIGSEGV)`` for a child's negative return code."""
    number = -code
    try:
        return f"signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"signal {number}"


def first_run_in_child(
    model: Path, feeds: Inputs, target: Target, what: str, scratch: Path | None
) -> None:
    """Load ``model`` and run it once on ``feeds`` in a child process.

    Raises:
        StepError: the child was killed by a signal (``ONNX Runtime crashed running WHAT
            (signal 11 (SIGSEGV))``) or did not finish within :data:`PROBE_TIMEOUT`.
    """
    from onnxopt.verify import save_inputs

    with tempfile.TemporaryDirectory(prefix="probe-", dir=scratch) as tmp:
        path = Path(tmp) / "feeds.npz"
        save_inputs(path, feeds)
        try:
            proc = subprocess.run(
                _command(model, path, target),
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                cwd=tmp,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepError(
                f"ONNX Runtime did not finish loading and running {what} once in "
                f"{PROBE_TIMEOUT:g} s",
                hint="this is not a problem with your input; please report it",
            ) from None
    if proc.returncode < 0:
        raise StepError(
            f"ONNX Runtime crashed running {what} ({signal_name(proc.returncode)})",
            hint="the runtime cannot run what was written; this is not a problem with your "
            "input (other candidates or modes may work)",
        )


def _main(argv: list[str]) -> int:
    from onnxopt.runtime import make_session, run_session
    from onnxopt.verify import load_inputs

    model, feeds, target = Path(argv[0]), Path(argv[1]), Target(**json.loads(argv[2]))
    session = make_session(model, target)
    run_session(session, load_inputs(feeds), model.name)
    return 0


if __name__ == "__main__":  # pragma: no cover - the child
    sys.exit(_main(sys.argv[1:]))
