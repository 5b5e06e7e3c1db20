"""Facts about the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

from onnxopt.cpu import DOT_PRODUCT_FLAGS, INTERESTING_FLAGS, cpu_features


def machine_info() -> dict[str, Any]:
    """CPU model, the int8/fp16 flags it has, cores, onnxruntime version and providers."""
    import onnxruntime as ort

    model, flags, _ = cpu_features()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "int8_dot_product": bool(flags & DOT_PRODUCT_FLAGS),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "providers": list(ort.get_available_providers()),
    }
