"""The explicit table of steps: name -> (config class, runner), both imported lazily."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

#: step type -> "module:function" of its runner.
STEPS: dict[str, str] = {
    "export": "onnxopt.steps.export:run",
    "simplify": "onnxopt.steps.simplify:run",
    "bench": "onnxopt.steps.bench:run",
    "quantize": "onnxopt.steps.quantize:run",
    "prune": "onnxopt.steps.prune:run",
    "package": "onnxopt.steps.package:run",
}


def runner(step_type: str) -> Callable[..., Any]:
    """Import and return the runner of a step type."""
    module, _, func = STEPS[step_type].partition(":")
    return getattr(importlib.import_module(module), func)  # type: ignore[no-any-return]
