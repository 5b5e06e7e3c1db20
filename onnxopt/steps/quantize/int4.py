"""4-bit weight-only quantization of MatMul weights (MatMulNBits)."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

from onnxopt.config import QuantizeStep
from onnxopt.errors import ConfigError
from onnxopt.modelio import load_model, save_model
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.backend import Backend, Recipe


def _write(
    src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext, notes: list[str]
) -> dict[str, Any]:
    from onnxopt.runtime import import_quietly

    MatMulNBitsQuantizer = import_quietly(  # noqa: N806 - a class
        "onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"
    ).MatMulNBitsQuantizer

    opts = cfg.int4
    if opts.block_size & (opts.block_size - 1):
        raise ConfigError(f"int4.block_size must be a power of 2, found {opts.block_size}")
    model = load_model(src)
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=opts.block_size,
        is_symmetric=opts.symmetric,
        accuracy_level=opts.accuracy_level,
        nodes_to_exclude=cfg.nodes_to_exclude or None,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        quantizer.process()
    save_model(quantizer.model.model, out, external_data=ctx.config.external_data)
    return {
        "block_size": opts.block_size,
        "symmetric": opts.symmetric,
        "accuracy_level": opts.accuracy_level,
    }


def _unfit(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    return None if ops["MatMul"] + ops["Gemm"] > 0 else "the model has no MatMul or Gemm"


BACKEND = Backend(
    mode="int4",
    write=_write,
    producer="ONNX Runtime's MatMulNBitsQuantizer",
    why_nothing="no MatMul has a constant 2-D float weight (K and N at least the block size)",
    tolerance=(float("inf"), float("inf"), 0.98),
    recipes=(Recipe("int4", {"mode": "int4"}, _unfit),),
)
