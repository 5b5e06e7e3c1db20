"""INT8 dynamic quantization: int8 weights, activations quantized at run time (MatMul,
Gemm, Attention, LSTM, GRU by default; dynamic Conv measured 4-5x slower).

Weights held in external data (models over 2 GB) go through onnxopt's streaming quantizer,
which writes ONNX Runtime's graph with ONNX Runtime's arithmetic one weight at a time.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import QuantizeStep
from onnxopt.graph import external_locations
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.backend import Backend, Recipe
from onnxopt.steps.quantize.core import big, resolve_reduce_range

DYNAMIC_DEFAULT_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]


def quant_type(name: str) -> Any:
    """ONNX Runtime's QuantType for "uint8" / "int8"."""
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _write(
    src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext, notes: list[str]
) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    opts = cfg.dynamic
    ops = cfg.op_types_to_quantize or DYNAMIC_DEFAULT_OPS
    reduce_range, why = resolve_reduce_range(
        opts.reduce_range, opts.weight_type, ctx.target.provider
    )
    facts: dict[str, Any] = {}
    if opts.fuse:
        from onnxopt.steps.simplify import fuse_transformer

        fused = src.with_name("fused.onnx")
        facts = fuse_transformer(src, fused, "bert", 0, 0, "auto")
        notes.append(f"fused first with onnxruntime.transformers: {facts['fused'] or 'nothing'}")
        src = fused
    quantize_dynamic(
        str(src),
        str(out),
        op_types_to_quantize=ops,
        per_channel=opts.per_channel,
        reduce_range=reduce_range,
        weight_type=quant_type(opts.weight_type),
        nodes_to_exclude=cfg.nodes_to_exclude or None,
        use_external_data_format=big(src),
        # after transformer fusions (com.microsoft ops) ONNX shape inference cannot type every
        # tensor; the values there are float activations
        extra_options={
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            # into If/Loop/Scan bodies too (recurrent models keep their LSTM and convolutions
            # there); off by default in ONNX Runtime, a no-op without bodies
            "EnableSubgraph": True,
        },
    )
    return {
        "engine": "onnxruntime",
        "op_types_to_quantize": ops,
        "per_channel": opts.per_channel,
        "weight_type": opts.weight_type,
        "reduce_range": reduce_range,
        "reduce_range_why": why,
        **({"fused": facts["fused"]} if opts.fuse else {}),
    }


def _stream(
    model: onnx.ModelProto,
    folder: Path,
    out: Path,
    cfg: QuantizeStep,
    ctx: StepContext,
    notes: list[str],
) -> dict[str, Any] | None:
    """Weights in external data: quantize them one at a time (None: not this graph)."""
    from onnxopt.steps.quantize.streaming import quantize_dynamic_streaming, unsupported

    if not external_locations(model) or cfg.dynamic.fuse:
        return None
    ops = cfg.op_types_to_quantize or DYNAMIC_DEFAULT_OPS
    reason = unsupported(model, ops, cfg.nodes_to_exclude)
    if reason:
        notes.append(
            f"weights are external data, but {reason}: ONNX Runtime's quantizer is used "
            "(it holds about 3x the model size in memory)"
        )
        return None
    opts = cfg.dynamic
    reduce_range, why = resolve_reduce_range(
        opts.reduce_range, opts.weight_type, ctx.target.provider
    )
    facts = quantize_dynamic_streaming(
        model,
        folder,
        out,
        ops=ops,
        exclude=cfg.nodes_to_exclude,
        per_channel=opts.per_channel,
        reduce_range=reduce_range,
        weight_type=opts.weight_type,
    )
    return {
        **facts,
        "op_types_to_quantize": ops,
        "per_channel": opts.per_channel,
        "weight_type": opts.weight_type,
        "reduce_range": reduce_range,
        "reduce_range_why": why,
    }


#: the plain recipes use all 8 bits of int8 weights (auto adds 7-bit ones where that matters)
EIGHT_BIT = {"weight_type": "int8", "reduce_range": False}


def _unfit(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    """Whether the default op types are there (in control-flow bodies too: the dynamic
    quantizer reaches them)."""
    if any(ops[op] for op in DYNAMIC_DEFAULT_OPS):
        return None
    conv = " (its convolutions: dynamic_conv)" if ops["Conv"] else ""
    return f"the model has no {', '.join(DYNAMIC_DEFAULT_OPS)}: it would quantize nothing{conv}"


def _unfit_conv(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    """Convolutions too (ConvInteger): measured, not assumed slower (a conv classifier ran
    1.95x faster with dynamic int8 on a VNNI CPU, a ResNet 0.19x on another)."""
    return None if ops["Conv"] else "the model has no Conv (the same as dynamic)"


def _unfit_fused(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    if not ops["Softmax"] or not (ops["LayerNormalization"] + ops["ReduceMean"] + ops["Erf"]):
        return "not a transformer (no Softmax with LayerNorm or GELU to fuse)"
    return _unfit(ops, cfg, provider, data)


def _unfit_no_rnn(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    if ops["LSTM"] + ops["GRU"] == 0:
        return "the model has no LSTM or GRU (the same as dynamic)"
    if ops["MatMul"] + ops["Gemm"] + ops["Attention"] == 0:
        return "the model has no MatMul, Gemm or Attention beside its LSTM/GRU (nothing to do)"
    return None


BACKEND = Backend(
    mode="dynamic",
    write=_write,
    producer="ONNX Runtime's dynamic quantizer (quantize_dynamic)",
    why_nothing="no node of the op types to quantize has float weights as initializers",
    tolerance=(float("inf"), float("inf"), 0.99),
    int8=True,
    per_channel=lambda cfg: cfg.dynamic.per_channel,
    stream=_stream,
    stream_producer="onnxopt's streaming dynamic quantizer",
    recipes=(
        Recipe("dynamic", {"mode": "dynamic", "dynamic": EIGHT_BIT}, _unfit),
        # convolutions as well, at the weight range that suits the target's kernel
        Recipe(
            "dynamic_conv",
            {"mode": "dynamic", "op_types_to_quantize": [*DYNAMIC_DEFAULT_OPS, "Conv"]},
            _unfit_conv,
        ),
        # transformer fusions first: measured 2.9-3.1x against 2.65-2.8x unfused on MiniLM
        Recipe(
            "dynamic_fused",
            {"mode": "dynamic", "dynamic": {**EIGHT_BIT, "fuse": True}},
            _unfit_fused,
        ),
        # a quantized LSTM/GRU measured slower than the float one on recurrent audio models
        Recipe(
            "dynamic_no_rnn",
            {
                "mode": "dynamic",
                "dynamic": EIGHT_BIT,
                "op_types_to_quantize": ["MatMul", "Gemm", "Attention"],
            },
            _unfit_no_rnn,
        ),
        # where the U8S8 kernel saturates (x86-64 without VNNI): 7-bit weights keep its
        # speed, uint8 weights take the U8U8 kernel, which does not saturate
        Recipe(
            "dynamic_7bit",
            {"mode": "dynamic", "dynamic": {"reduce_range": True}},
            _unfit,
            saturating_only=True,
        ),
        Recipe(
            "dynamic_fused_7bit",
            {"mode": "dynamic", "dynamic": {"reduce_range": True, "fuse": True}},
            _unfit_fused,
            saturating_only=True,
        ),
        Recipe(
            "dynamic_u8u8",
            {"mode": "dynamic", "dynamic": {"weight_type": "uint8", "reduce_range": False}},
            _unfit,
            saturating_only=True,
        ),
    ),
)
