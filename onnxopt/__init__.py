"""onnxopt: take a trained model to the fastest ONNX artifact that still gives the right answers.

The public API is imported lazily so that ``import onnxopt`` (and ``onnxopt --help``) stays
fast and never pulls in torch or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "OnnxoptError",
    "__version__",
    "bench",
    "distill",
    "export",
    "inspect_model",
    "prune",
    "quantize",
    "load_config",
    "optimize",
    "parse_config",
    "run_pipeline",
    "simplify",
]

_LAZY = {
    "ExitCode": "onnxopt.errors",
    "OnnxoptError": "onnxopt.errors",
    "inspect_model": "onnxopt.inspection",
    "load_config": "onnxopt.config",
    "parse_config": "onnxopt.config",
    "run_pipeline": "onnxopt.engine",
    "bench": "onnxopt.api",
    "export": "onnxopt.api",
    "simplify": "onnxopt.api",
    "quantize": "onnxopt.api",
    "prune": "onnxopt.api",
    "distill": "onnxopt.api",
    "optimize": "onnxopt.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
