"""The console script's and ``python -m onnxopt``'s entry: signal handlers first.

Installing them before the command line (Typer and the commands) is imported means a signal
during start-up exits 130/143 like any other instead of killing the process outright.
"""

from __future__ import annotations

from onnxopt._signals import install, stopped_early


def main() -> None:
    """Handlers first, then the command line."""
    install()
    try:
        from onnxopt.cli.app import main as cli_main
    except KeyboardInterrupt as err:
        stopped_early(err)
    cli_main()
