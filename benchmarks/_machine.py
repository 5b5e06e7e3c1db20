"""The machine line every benchmark prints first (the figures depend on it)."""

from __future__ import annotations


def machine_line(flags: bool = False) -> str:
    """CPU, usable cores, int8 dot-product support and onnxruntime's version (and the CPU's
    SIMD flags with ``flags``)."""
    from onnxopt.bench.machine import machine_info

    info = machine_info()
    simd = f", flags {' '.join(info['cpu_flags'])}" if flags else ""
    return (
        f"machine: {info['cpu']}, {info['usable_cores']} cores{simd}, int8 dot product: "
        f"{info['int8_dot_product']}, onnxruntime {info['onnxruntime']}"
    )
