"""INT8 static quantization, calibrated: QDQ (default) or QOperator; uint8 activations with
int8 per-channel weights by default (the recipe measured fastest on ONNX Runtime's CPU)."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.config import QuantizeStep
from onnxopt.errors import first_line
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.backend import Backend, Recipe
from onnxopt.steps.quantize.calibration import Reader, calibration_samples
from onnxopt.steps.quantize.core import big, resolve_reduce_range
from onnxopt.steps.quantize.dynamic import quant_type


def preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(src), str(dst))
        return dst
    except Exception as err:
        notes.append(
            f"symbolic shape inference failed ({first_line(err)}); "
            "pre-processed with ONNX shape inference only"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as err:
        notes.append(f"pre-processing skipped: {first_line(err)}")
        return src


def _write(
    src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext, notes: list[str]
) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    opts = cfg.static
    reduce_range, why = resolve_reduce_range(
        opts.reduce_range, opts.weight_type, ctx.target.provider
    )
    if opts.preprocess:
        src = preprocess(src, src.with_name("preprocessed.onnx"), notes)
    samples = fit_in_memory(src, calibration_samples(cfg, ctx), ctx, notes)
    kept_float = mixed_range_joins(src, samples[:RANGE_SAMPLES], cfg, ctx)
    for name, why in kept_float.items():
        notes.append(f"kept in float: {name} ({why})")
    excluded = [*cfg.nodes_to_exclude, *(n for n in kept_float if n not in cfg.nodes_to_exclude)]
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "distribution": CalibrationMethod.Distribution,
    }
    extra: dict[str, Any] = {
        "ActivationSymmetric": opts.symmetric_activations,
        "WeightSymmetric": opts.symmetric_weights,
    }
    if opts.method == "percentile":
        extra["CalibPercentile"] = opts.percentile
    if opts.num_bins is not None:
        extra["CalibNumBins"] = opts.num_bins

    def run(options: dict[str, Any]) -> None:
        quantize_static(
            str(src),
            str(out),
            Reader(samples),
            quant_format=QuantFormat.QDQ if opts.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=cfg.op_types_to_quantize,
            per_channel=opts.per_channel,
            reduce_range=reduce_range,
            activation_type=quant_type(opts.activation_type),
            weight_type=quant_type(opts.weight_type),
            nodes_to_exclude=excluded or None,
            calibrate_method=methods[opts.method],
            use_external_data_format=big(src),
            extra_options=options,
        )

    try:
        run(extra)
    except Exception as err:
        if opts.format != "qdq" or not _in_bias_adjustment(err):
            raise
        # ONNX Runtime's int32-bias weight-scale adjustment crashes on some biases (a Gemm
        # bias of shape [1, N]: "truth value of an array ... is ambiguous"); without it
        # the biases are quantized with the plain input_scale * weight_scale
        notes.append(
            f"ONNX Runtime's int32-bias weight adjustment failed ({first_line(err)}); "
            "quantized with QDQDisableWeightAdjustForInt32Bias"
        )
        run({**extra, "QDQDisableWeightAdjustForInt32Bias": True})
    return {
        "format": opts.format,
        "activation_type": opts.activation_type,
        "weight_type": opts.weight_type,
        "per_channel": opts.per_channel,
        "reduce_range": reduce_range,
        "reduce_range_why": why,
        **({"kept_float": kept_float} if kept_float else {}),
        "calibration": {
            "method": opts.method,
            "source": opts.calibration.source,
            "samples": len(samples),
            **({"percentile": opts.percentile} if opts.method == "percentile" else {}),
            **({"num_bins": opts.num_bins} if opts.num_bins is not None else {}),
        },
    }


#: ONNX Runtime's calibrators hold every activation of every calibration sample until the
#: end (its CalibMaxIntermediateOutputs, meant to merge ranges as it goes, discards them
#: instead in onnxruntime 1.32: "No data is collected"); the samples are held to this much
CALIBRATION_MEMORY = 3 << 30
#: calibration keeps at least this many samples whatever their size
MIN_CALIBRATION = 16
#: the op types of the compute-only recipes
COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: the recipes' type pairs (all 8 bits of int8 weights; auto adds 7-bit ones where it matters)
U8S8 = {
    "activation_type": "uint8",
    "weight_type": "int8",
    "per_channel": True,
    "reduce_range": False,
}
S8S8 = {**U8S8, "activation_type": "int8"}


def fit_in_memory(src: Path, samples: list[Any], ctx: StepContext, notes: list[str]) -> list[Any]:
    """The calibration samples whose activations fit in CALIBRATION_MEMORY, evenly spread
    over ``samples`` (every one when they fit), measured on the first sample: at 736x736 a
    text detector's activations for 192 samples outgrow a 24 GiB machine."""
    import onnx

    from onnxopt.runtime import run_exposing

    if len(samples) <= MIN_CALIBRATION:
        return samples
    model = onnx.load(str(src))
    names = [o for node in model.graph.node for o in node.output if o]
    first = run_exposing(model, names, samples[:1], target=ctx.target, work_dir=ctx.scratch)
    per_sample = sum(int(np.asarray(v).nbytes) for v in first[0].values())
    keep = max(MIN_CALIBRATION, CALIBRATION_MEMORY // max(per_sample, 1))
    if keep >= len(samples):
        return samples
    picked = np.linspace(0, len(samples) - 1, keep).round().astype(int)
    notes.append(
        f"calibrated on {keep} of the {len(samples)} calibration samples: their activations "
        f"take {per_sample / 2**20:.0f} MiB a sample, held to {CALIBRATION_MEMORY >> 30} GiB"
    )
    return [samples[i] for i in picked]


#: calibration samples the inputs of joins (Concat) are measured on
RANGE_SAMPLES = 8
#: inputs of one Concat whose peaks differ by more than this share no int8 scale
MIXED_RANGE = 32.0


def mixed_range_joins(
    src: Path, samples: list[Any], cfg: QuantizeStep, ctx: StepContext
) -> dict[str, str]:
    """Concat nodes whose inputs differ in range by more than MIXED_RANGE x, measured on
    calibration samples: name -> why. One int8 scale for such a join (QDQ gives a Concat
    one) erases the small-range part: a detector's class scores (0..1) concatenated to its
    boxes (0..320) all became 0 or one quantization step while the output's cosine stayed
    0.994. They are left in float."""
    import onnx

    from onnxopt.runtime import run_exposing

    types = cfg.op_types_to_quantize
    if not samples or (types is not None and "Concat" not in types):
        return {}
    model = onnx.load(str(src))
    joins = [
        n
        for n in model.graph.node
        if n.op_type == "Concat" and len(n.input) > 1 and n.name not in cfg.nodes_to_exclude
    ]
    if not joins:
        return {}
    names = sorted({i for n in joins for i in n.input if i})
    values = run_exposing(model, names, samples, target=ctx.target, work_dir=ctx.scratch)
    peaks = {
        name: max(float(np.max(np.abs(v[name]), initial=0.0)) for v in values) for name in names
    }
    found = {}
    for node in joins:
        tops = [peaks[i] for i in node.input if i and i in peaks]
        low, high = min(tops, default=0.0), max(tops, default=0.0)
        if low > 0 and high / low > MIXED_RANGE:
            found[node.name] = (
                f"a Concat whose inputs peak at {low:.3g} and {high:.3g}: one int8 scale "
                "would erase the smaller part"
            )
    return found


def _in_bias_adjustment(err: BaseException) -> bool:
    """Whether ``err`` was raised inside ONNX Runtime's int32-bias weight adjustment."""
    frame = err.__traceback__
    while frame is not None:
        if "int32_bias" in frame.tb_frame.f_code.co_name:
            return True
        frame = frame.tb_next
    return False


def _unfit(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    every = sum(ops[op] for op in COMPUTE)
    if every == 0:
        return "the model has no Conv, ConvTranspose, MatMul or Gemm"
    main = getattr(ops, "main", ops)
    if not any(main[op] for op in COMPUTE) and cfg.static.format == "qdq":
        return (
            f"it would quantize nothing: all {every} compute nodes sit inside If/Loop/Scan "
            "bodies, which static QDQ leaves in float (the dynamic recipes reach them)"
        )
    synthetic = cfg.static.calibration.source == "synthetic" and not data
    if synthetic and not cfg.static.allow_synthetic_calibration:
        return (
            "no representative calibration data: static recipes need --data (or "
            "static.calibration {source: npz, ...}, or allow_synthetic_calibration)"
        )
    return None


BACKEND = Backend(
    mode="static",
    write=_write,
    producer="ONNX Runtime's static quantizer (quantize_static)",
    why_nothing="no node of the op types to quantize was found or all were excluded",
    tolerance=(float("inf"), float("inf"), 0.99),
    int8=True,
    per_channel=lambda cfg: cfg.static.per_channel,
    recipes=(
        # only the compute ops in int8, the elementwise ones (Add, Mul, Concat, Softmax,
        # LayerNorm, ...) left in float: the winner where quantizing every op broke the task
        Recipe(
            "static_u8s8_compute",
            {"mode": "static", "op_types_to_quantize": list(COMPUTE), "static": U8S8},
            _unfit,
        ),
        Recipe("static_u8s8", {"mode": "static", "static": U8S8}, _unfit),
        Recipe(
            "static_s8s8_compute",
            {"mode": "static", "op_types_to_quantize": list(COMPUTE), "static": S8S8},
            _unfit,
        ),
        Recipe("static_s8s8", {"mode": "static", "static": S8S8}, _unfit),
        # where the U8S8 kernel saturates (x86-64 without VNNI): 7-bit weights, or uint8
        # weights (the U8U8 kernel, which does not saturate)
        Recipe(
            "static_u8s8_compute_7bit",
            {
                "mode": "static",
                "op_types_to_quantize": list(COMPUTE),
                "static": {**U8S8, "reduce_range": True},
            },
            _unfit,
            saturating_only=True,
        ),
        Recipe(
            "static_u8u8_compute",
            {
                "mode": "static",
                "op_types_to_quantize": list(COMPUTE),
                "static": {**U8S8, "weight_type": "uint8"},
            },
            _unfit,
            saturating_only=True,
        ),
    ),
)
