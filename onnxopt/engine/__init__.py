"""The engine: runs a pipeline's steps, each as one transaction, and keeps the manifest.

``run`` has the loop, ``step`` the transaction every kind of step goes through, ``cache``
the keys and cache checks, ``manifest`` the bookkeeping, ``context`` the set-up before the
first step, ``lock`` one run per folder, ``one_step`` the ``-o`` of the step subcommands.
The engine imports steps only through :mod:`onnxopt.registry`.
"""

from onnxopt.engine.one_step import run_to_file
from onnxopt.engine.run import Pipeline, run_pipeline

__all__ = ["Pipeline", "run_pipeline", "run_to_file"]
