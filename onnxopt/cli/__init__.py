"""The ``onnxopt`` command: a thin layer over the Python API.

``app`` holds the Typer app, the error funnel (the only place that prints errors and exits)
and the entry point; ``options`` the options every step subcommand shares, declared once;
``steps`` ``run`` and the step subcommands (``distill`` and ``optimize`` in their own
modules); ``measure``
bench, report merge, inspect, schema.
"""

# isort: off
# the order of these imports is the order of the commands in --help
from onnxopt.cli import steps
from onnxopt.cli import distill
from onnxopt.cli import measure
from onnxopt.cli import optimize
from onnxopt.cli.app import app, main

# isort: on

__all__ = ["app", "distill", "main", "measure", "optimize", "steps"]
