"""Facts about the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: CPU flags that decide int8 / fp16 speed (x86 names from /proc/cpuinfo, ARM features too).
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def _cpuinfo() -> tuple[str, set[str]]:
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return model, flags
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def machine_info() -> dict[str, Any]:
    """CPU model, the int8/fp16 flags it has, cores, onnxruntime version and providers."""
    import onnxruntime as ort

    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": model,
        "arch": platform.machine(),
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "int8_dot_product": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "providers": list(ort.get_available_providers()),
    }
