"""The Typer app, the error funnel and the entry point: the only place that prints errors
and exits.

Heavy libraries (onnx, onnxruntime, torch) are imported inside the commands, so that
``onnxopt --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from onnxopt import __version__
from onnxopt._signals import SIGNALS, install, stopped_early
from onnxopt.errors import ExitCode, OnnxoptError, Terminated, described

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="onnxopt",
    help="Take a trained model to the fastest ONNX artifact that still gives the right "
    "answers, and prove both. Exit codes: 0 ok, 1 failure, 2 usage/config/input error, "
    "3 verification failed, 4 benchmark gate failed, 130 interrupted, 143 terminated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
report_app = typer.Typer(
    help="Work with stored bench reports.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(report_app, name="report")

log = logging.getLogger("onnxopt")


def stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def stdout(width: int) -> Console:
    """A console for tables on stdout: the terminal's width, or ``width`` when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


class _LazyRichHandler(logging.Handler):
    """Renders records with rich's handler, imported on the first record (rich.logging pulls
    in rich.traceback and pygments: most runs log nothing and need not pay for them)."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._rich is None:
            from rich.logging import RichHandler

            self._rich = RichHandler(
                console=stderr(), show_time=False, show_path=self.debug, markup=False
            )
        self._rich.handle(record)


def setup_logging(debug: bool) -> None:
    """Warnings (debug: everything) of onnxopt's loggers on stderr."""
    root = logging.getLogger("onnxopt")
    root.handlers[:] = [_LazyRichHandler(debug)]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    root.propagate = False


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def funnel(debug: bool) -> Iterator[None]:
    """Turn every failure into one 'error:' line and a documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as err:
        _interrupted(isinstance(err, Terminated))
    except Exception as err:
        if debug:
            traceback.print_exc()
        if "signum" in SIGNALS:
            # The signal landed inside library code, which turned it into another error
            # (an extension module being imported reports "ImportError: initialization
            # failed"): the run was stopped, it did not fail.
            import signal

            _interrupted(SIGNALS["signum"] == signal.SIGTERM)
        if isinstance(err, OnnxoptError):
            _error(str(err))
            raise typer.Exit(int(err.exit_code)) from None
        _error(
            f"internal error: {described(err)} "
            "(rerun with --debug for the traceback, and please report it)"
        )
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _interrupted(terminated: bool) -> None:
    _error(f"{'terminated' if terminated else 'interrupted'}; no unfinished artifact was kept")
    SIGNALS["reported"] = 1
    code = ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    raise typer.Exit(int(code)) from None


def _version(value: bool) -> None:
    if value:
        print(f"onnxopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """onnxopt: export, simplify and inspect ONNX models, proving every artifact."""


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code.

    ``argv`` given (``["quantize", "m.onnx", "-o", "q.onnx", "-m", "dynamic"]``): in this
    process, printing what the command prints, with no ``sys.exit``: the way tests and
    other Python programs drive it. ``argv`` None: the console script (``sys.argv``;
    SIGTERM handled like Ctrl-C with exit code 143; the process exits with the code).
    """
    if argv is not None:
        return _invoke(argv)
    _console()
    return 0


def _invoke(argv: list[str]) -> int:
    """The command line in this process: its exit code, usage errors shown as click does."""
    from onnxopt._fs import process_temp

    with process_temp():
        try:
            code = app(args=list(argv), prog_name="onnxopt", standalone_mode=False)
        except typer.Abort:
            _error("stopped")
            return int(ExitCode.INTERRUPTED)
        except typer.TyperException as err:  # usage errors: shown as the console shows them
            err.show()  # type: ignore[attr-defined]
            return int(err.exit_code)  # type: ignore[attr-defined]
    return int(code) if isinstance(code, int) else 0


def _console() -> None:
    """Console-script entry point (SIGTERM is handled like Ctrl-C, with exit code 143)."""
    import signal

    from onnxopt._fs import process_temp

    install()
    temp = contextlib.ExitStack()  # closed before every exit, os._exit included
    try:
        temp.enter_context(process_temp())  # every library's temporary files, removed at exit
        app()
    except KeyboardInterrupt as err:  # while Typer was still building the command line
        temp.close()
        stopped_early(err)
    except SystemExit as done:
        if done.code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            # The cleanup is done. Exit now: if the interrupt landed while an extension
            # module was evaluating Python code, CPython has flagged it "unhandled" and
            # would otherwise end the process by SIGINT, hiding the documented exit code.
            code = int(done.code)
            if "signum" in SIGNALS:  # typer reports any interrupt before a command as 130
                code = int(
                    ExitCode.TERMINATED
                    if SIGNALS["signum"] == signal.SIGTERM
                    else ExitCode.INTERRUPTED
                )
            if not SIGNALS.get("reported"):
                _error("stopped before any work started; nothing was written")
            temp.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
    finally:
        temp.close()
