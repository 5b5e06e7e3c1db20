"""Quantization: INT8 dynamic and static, fp16, int4 weight-only (ONNX Runtime's tooling).

Every mode counts what it really quantized; a run that quantized nothing fails with the
reason. The engine then verifies the result against its parent with the mode's tolerance
(cosine, optional top-1 agreement) and times it against its parent on the target.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt._fs import user_cwd
from onnxopt.config import QuantizeStep
from onnxopt.errors import ConfigError, InputError, StepError, first_line
from onnxopt.modelio import (
    constants_to_initializers,
    external_locations,
    iter_graphs,
    load_model,
    save_model,
    topological_sort,
)
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.verify import Inputs, Verification, load_inputs, make_inputs

log = logging.getLogger("onnxopt")

#: Ops whose presence shows that INT8 / INT4 quantization happened.
QUANT_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "MatMulNBits",
)
#: Ops that do the heavy work; the report says how many stayed float.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedMatMul", "FusedGemm", "FusedConv")
DYNAMIC_DEFAULT_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
FP16_MAX = 65504.0


def name_nodes(model: onnx.ModelProto) -> int:
    """Give unnamed top-level nodes a stable name (``<op>_<index>``) so they can be excluded."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def op_counts(model: onnx.ModelProto) -> dict[str, Any]:
    """Quantized op counts and the compute ops that stayed float.

    In QDQ models a compute op keeps its float type but reads DequantizeLinear outputs;
    ONNX Runtime runs it as an int8 kernel, so it counts as quantized, not float.
    """
    counts: Counter[str] = Counter()
    float_compute: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        for node in graph.node:
            counts[node.op_type] += 1
            if node.op_type in COMPUTE_OPS and not any(i in dq_outputs for i in node.input[:2]):
                float_compute[node.op_type] += 1
    quantized = {op: counts[op] for op in QUANT_OPS if counts[op]}
    return {
        "quantized_ops": quantized,
        "quantized_total": sum(quantized.values()),
        "float_compute_ops": dict(float_compute),
    }


def fp16_tensor_count(model: onnx.ModelProto) -> int:
    """Initializers stored as float16."""
    return sum(
        1
        for graph in iter_graphs(model.graph)
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT16
    )


def cpu_int8_note(provider: str) -> str | None:
    """A warning when int8 is known not to pay on this target, else None."""
    from onnxopt.bench.machine import machine_info

    if provider.lower() not in ("cpu", "cpuexecutionprovider"):
        if provider.lower() in ("cuda", "cudaexecutionprovider"):
            return (
                "the CUDA provider has few quantized kernels: int8 nodes may fall back to the "
                "CPU with memory copies; check with 'onnxopt bench --placement'"
            )
        return None
    info = machine_info()
    if not info["int8_dot_product"]:
        return (
            f"this CPU ({info['cpu']}) has no int8 dot-product instructions (AVX-512 VNNI, "
            "AVX-VNNI, AMX or ARM dot product): int8 kernels may not be faster than float32 "
            "here; the measured speed-up is in the report"
        )
    return None


# ---------------------------------------------------------------- calibration data


def calibration_samples(cfg: QuantizeStep, ctx: StepContext) -> list[Inputs]:
    """Calibration feeds, kept apart from the verification inputs."""
    cal = cfg.static.calibration
    if cal.source == "synthetic":
        if not cfg.static.allow_synthetic_calibration:
            raise ConfigError(
                "static quantization would calibrate on synthetic (random) data, which can "
                "pass a cosine check on noise and still break the task on real input",
                hint="give static.calibration {source: npz, path: ...}, or set "
                "static.allow_synthetic_calibration: true if random data is representative",
            )
        return [make_inputs(ctx.specs, ctx.dims, cal.seed + i) for i in range(cal.samples)]
    if cal.source == "callable":
        return _checked(_callable_samples(cal.callable, cal.samples, ctx), "callable")
    if not cal.path:
        raise ConfigError(f"static.calibration.source {cal.source} needs static.calibration.path")
    path = Path(cal.path)
    path = path if path.is_absolute() else ctx.base_dir / path
    if cal.source == "images":
        return _checked(_image_samples(path, cal, ctx), str(path))
    names = [s.name for s in ctx.specs]
    ranks = {s.name: len(s.shape) for s in ctx.specs}
    samples: list[Inputs] = []
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"calibration folder {path} holds no .npz files")
        samples = [load_inputs(f) for f in files[: cal.samples]]
    else:
        arrays = load_inputs(path)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(
                f"calibration file {path.name} has no arrays {missing}; it has {sorted(arrays)}"
            )
        first = arrays[names[0]]
        if first.ndim == ranks[names[0]] + 1:
            count = min(cal.samples, first.shape[0])
            samples = [{n: arrays[n][i] for n in names} for i in range(count)]
        else:
            samples = [{n: arrays[n] for n in names}]
    return _checked(samples, str(path))


def _checked(samples: list[Inputs], where: str) -> list[Inputs]:
    if not samples:
        raise InputError(f"calibration data from {where} is empty")
    for i, sample in enumerate(samples):
        for name, arr in sample.items():
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise InputError(f"calibration sample {i}: input {name!r} has NaN or Inf")
    return samples


def _callable_samples(spec: str | None, limit: int, ctx: StepContext) -> list[Inputs]:
    if not spec:
        raise ConfigError("static.calibration.source callable needs static.calibration.callable")
    with user_cwd(ctx.invocation_dir):  # the callable is the user's code
        return _collect_samples(spec, limit, ctx)


def _collect_samples(spec: str, limit: int, ctx: StepContext) -> list[Inputs]:
    from onnxopt.factory import load_factory

    fn = load_factory(spec, ctx.base_dir)
    names = {s.name for s in ctx.specs}
    samples: list[Inputs] = []
    try:
        for item in fn():
            if not isinstance(item, dict) or set(item) != names:
                got = sorted(item) if isinstance(item, dict) else type(item).__name__
                raise InputError(
                    f"calibration callable {spec!r} yielded {got}; expected dicts with the "
                    f"inputs {sorted(names)}"
                )
            samples.append({k: np.asarray(v) for k, v in item.items()})
            if len(samples) >= limit:
                break
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"calibration callable {spec!r} raised {type(err).__name__}: {first_line(err)}"
        ) from None
    return samples


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _image_samples(folder: Path, cal: Any, ctx: StepContext) -> list[Inputs]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        from onnxopt.errors import MissingDependencyError

        raise MissingDependencyError(
            "image calibration needs Pillow, which is not installed",
            hint="pip install 'onnxopt[plot]' -c constraints.txt (brings Pillow)",
        ) from None
    pre = cal.preprocessing
    if not folder.is_dir():
        raise InputError(f"calibration image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    spec = next((s for s in ctx.specs if s.name == (pre.input or ctx.specs[0].name)), None)
    if spec is None:
        raise ConfigError(f"preprocessing.input {pre.input!r} is not a model input")
    others = [s for s in ctx.specs if s.name != spec.name]
    samples = []
    for i, file in enumerate(files[: cal.samples]):
        try:
            with Image.open(file) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"cannot decode image {file.name}: {first_line(err)}") from None
        if pre.resize:
            w, h = rgb.size
            ratio = pre.resize / min(w, h)
            rgb = rgb.resize((max(1, round(w * ratio)), max(1, round(h * ratio))))
        ch, cw = pre.crop
        w, h = rgb.size
        if w < cw or h < ch:
            raise InputError(f"image {file.name} is {w}x{h} after resizing, smaller than the crop")
        left, top = (w - cw) // 2, (h - ch) // 2
        arr = np.asarray(rgb.crop((left, top, left + cw, top + ch)), dtype=np.float32)
        arr = (arr * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if pre.channels == "bgr":
            arr = arr[..., ::-1]
        if pre.layout == "nchw":
            arr = arr.transpose(2, 0, 1)
        arr = arr[None].astype(spec.dtype)
        want = [d if isinstance(d, int) else None for d in spec.shape]
        if len(want) != arr.ndim or any(
            w is not None and w != g for w, g in zip(want, arr.shape, strict=False)
        ):
            raise InputError(
                f"image preprocessing gives shape {list(arr.shape)} but input {spec.name!r} "
                f"expects {spec.shape}",
                hint="set preprocessing crop (and layout) to the model's input size",
            )
        sample = {spec.name: np.ascontiguousarray(arr)}
        if others:
            sample.update(make_inputs(others, ctx.dims, cal.seed + i))
        samples.append(sample)
    return samples


class _Reader:
    """CalibrationDataReader over a list of feeds."""

    def __init__(self, samples: list[Inputs]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - used by some calibrators
        pass


# ---------------------------------------------------------------- modes


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
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


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _dynamic(src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext) -> dict[str, Any]:
    from onnxruntime.quantization import quantize_dynamic

    opts = cfg.dynamic
    ops = cfg.op_types_to_quantize or DYNAMIC_DEFAULT_OPS
    quantize_dynamic(
        str(src),
        str(out),
        op_types_to_quantize=ops,
        per_channel=opts.per_channel,
        reduce_range=opts.reduce_range,
        weight_type=_quant_type(opts.weight_type),
        nodes_to_exclude=cfg.nodes_to_exclude or None,
        use_external_data_format=_big(src),
        # after transformer fusions (com.microsoft ops) ONNX shape inference cannot type every
        # tensor; the values there are float activations
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {"engine": "onnxruntime", "op_types_to_quantize": ops, "per_channel": opts.per_channel}


def _streams(cfg: QuantizeStep, model: onnx.ModelProto, notes: list[str]) -> bool:
    """Dynamic mode on weights held in external data: use the streaming quantizer?"""
    from onnxopt.steps.quantize_stream import unsupported

    if cfg.mode != "dynamic" or not external_locations(model):
        return False
    reason = unsupported(
        model, cfg.op_types_to_quantize or DYNAMIC_DEFAULT_OPS, cfg.nodes_to_exclude
    )
    if reason:
        notes.append(
            f"weights are external data, but {reason}: ONNX Runtime's quantizer is used "
            "(it holds about 3x the model size in memory)"
        )
    return reason is None


def _dynamic_streaming(
    model: onnx.ModelProto, folder: Path, out: Path, cfg: QuantizeStep
) -> dict[str, Any]:
    from onnxopt.steps.quantize_stream import quantize_dynamic_streaming

    opts = cfg.dynamic
    ops = cfg.op_types_to_quantize or DYNAMIC_DEFAULT_OPS
    facts = quantize_dynamic_streaming(
        model,
        folder,
        out,
        ops=ops,
        exclude=cfg.nodes_to_exclude,
        per_channel=opts.per_channel,
        reduce_range=opts.reduce_range,
        weight_type=opts.weight_type,
    )
    return {**facts, "op_types_to_quantize": ops, "per_channel": opts.per_channel}


def _static(src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    opts = cfg.static
    samples = calibration_samples(cfg, ctx)
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
    quantize_static(
        str(src),
        str(out),
        _Reader(samples),
        quant_format=QuantFormat.QDQ if opts.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=cfg.op_types_to_quantize,
        per_channel=opts.per_channel,
        reduce_range=opts.reduce_range,
        activation_type=_quant_type(opts.activation_type),
        weight_type=_quant_type(opts.weight_type),
        nodes_to_exclude=cfg.nodes_to_exclude or None,
        calibrate_method=methods[opts.method],
        use_external_data_format=_big(src),
        extra_options=extra,
    )
    return {
        "format": opts.format,
        "activation_type": opts.activation_type,
        "weight_type": opts.weight_type,
        "per_channel": opts.per_channel,
        "calibration": {
            "method": opts.method,
            "source": opts.calibration.source,
            "samples": len(samples),
            **({"percentile": opts.percentile} if opts.method == "percentile" else {}),
            **({"num_bins": opts.num_bins} if opts.num_bins is not None else {}),
        },
    }


def fp16_overflow_nodes(src: Path, ctx: StepContext) -> dict[str, str]:
    """Nodes that read or write values beyond the float16 range (or inf/NaN) on the inputs.

    Consumers are blocked too: a value that overflows float16 must not be cast back to it.
    """
    from onnxopt.runtime import run_exposing

    model = load_model(src)
    producers: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.output:
            producers[name] = node.name or f"{node.op_type}:{name}"
        for name in node.input:
            consumers.setdefault(name, []).append(node.name or f"{node.op_type}:{node.output[0]}")
    feeds_list = [f for f in (ctx.inputs, ctx.second_inputs) if f is not None]
    names = [n for n in producers if n]
    found: dict[str, str] = {}
    for values in run_exposing(model, names, feeds_list, where=src.name):
        for name, value in values.items():
            if value.dtype.kind != "f" or value.size == 0:
                continue
            finite = np.isfinite(value)
            peak = float(np.abs(value[finite]).max()) if finite.any() else 0.0
            if not finite.all():
                reason = "inf/NaN in float32"
            elif peak > FP16_MAX:
                reason = f"|value| up to {peak:.3g} > {FP16_MAX:g}"
            else:
                continue
            found.setdefault(producers[name], f"output {reason}")
            for user in consumers.get(name, []):
                found.setdefault(user, f"input {reason}")
    return found


def remove_cast_round_trips(graph: onnx.GraphProto) -> int:
    """Drop Cast(float16) -> Cast(float32) pairs; consumers read the float32 value directly.

    The float16 converter casts the output of every blocked node to float16 and back, even
    between two blocked nodes: a value that overflows float16 then turns into inf anyway.
    """

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((int(a.i) for a in node.attribute if a.name == "to"), None)

    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT or not node.input:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        src_producer = producer.get(first.input[0])
        if src_producer is not None and cast_to(src_producer) == onnx.TensorProto.FLOAT16:
            continue
        if node.output[0] in graph_outputs:
            continue
        rename[node.output[0]] = first.input[0]
        drop.add(id(node))
    if not rename:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    still_used = {name for node in graph.node if id(node) not in drop for name in node.input}
    still_used |= graph_outputs
    keep = []
    for node in graph.node:
        if id(node) in drop:
            continue
        if cast_to(node) == onnx.TensorProto.FLOAT16 and node.output[0] not in still_used:
            continue
        keep.append(node)
    copies = []
    for node in keep:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)
    return len(rename)


def _fp16(src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    opts = cfg.fp16
    auto = fp16_overflow_nodes(src, ctx) if opts.auto_block else {}
    node_block = sorted(set(opts.node_block_list) | set(auto))
    model = load_model(src)
    with contextlib.redirect_stdout(io.StringIO()):
        converted = convert_float_to_float16(
            model,
            keep_io_types=opts.keep_io_types,
            op_block_list=opts.op_block_list or None,
            node_block_list=node_block or None,
        )
    round_trips = remove_cast_round_trips(converted.graph) if node_block else 0
    topological_sort(converted.graph)  # the converter appends its I/O casts at the end
    save_model(converted, out, external_data=ctx.config.external_data)
    return {
        "keep_io_types": opts.keep_io_types,
        "blocked_nodes": {n: auto.get(n, "node_block_list") for n in node_block},
        "blocked_op_types": opts.op_block_list,
        "cast_round_trips_removed": round_trips,
        "fp16_initializers": fp16_tensor_count(converted),
    }


def _int4(src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext) -> dict[str, Any]:
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


def _save_prepared(model: onnx.ModelProto, src: Path, prepared: Path) -> None:
    """Save the renamed graph beside links to ``src``'s external data files.

    The weights of a model over 2 GB are never read into this process: the graph is saved
    with its external references unchanged and the .data files are copied (disk to disk)
    next to it, so the quantizer reads them itself.
    """
    for location in sorted(external_locations(model)):
        target = prepared.parent / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / location, target)  # onnx refuses hard and soft links
    onnx.save_model(model, str(prepared))


def _big(path: Path) -> bool:
    from onnxopt.modelio import model_size

    return model_size(path) >= 2**31 - 2**26


MODES = {"dynamic": _dynamic, "static": _static, "fp16": _fp16, "int4": _int4}

#: (atol, rtol, min_cosine) per mode: reduced precision is judged by cosine, not elementwise
TOLERANCE = {
    "fp16": (math.inf, math.inf, 0.999),
    "dynamic": (math.inf, math.inf, 0.99),
    "static": (math.inf, math.inf, 0.99),
    "int4": (math.inf, math.inf, 0.98),
}


def default_tolerance(cfg: QuantizeStep, mode: str | None = None) -> tuple[float, float, float]:
    """The default bounds of a quantize step (``mode``: a candidate's, for auto)."""
    return TOLERANCE[mode or cfg.mode]


WHY_NOTHING = {
    "dynamic": "no node of the op types to quantize has float weights as initializers",
    "static": "no node of the op types to quantize was found or all were excluded",
    "int4": "no MatMul has a constant 2-D float weight (K and N at least the block size)",
    "fp16": "the model has no float32 tensors to convert",
}


#: the oldest default-domain opset each mode works from (QuantizeLinear/DequantizeLinear
#: need 10; ONNX Runtime's quantizers upgrade older graphs only from there)
MIN_OPSET = {"dynamic": 10, "static": 10, "int4": 10, "fp16": 7}


def _preflight(cfg: QuantizeStep, provider: str, model: onnx.ModelProto) -> list[str]:
    from onnxopt.modelio import opset_of

    opset = opset_of(model)
    if model.ir_version < 4 or opset < MIN_OPSET.get(cfg.mode, 10):
        raise InputError(
            f"{cfg.mode} quantization needs ONNX IR version >= 4 and opset >= "
            f"{MIN_OPSET.get(cfg.mode, 10)}; the model has IR version {model.ir_version} and "
            f"opset {opset}",
            hint="upgrade it (onnx.version_converter.convert_version(model, 17)) or re-export "
            "with a newer opset",
        )
    warnings = []
    if cfg.mode in ("dynamic", "static"):
        note = cpu_int8_note(provider)
        if note:
            warnings.append(note)
    if cfg.mode == "fp16" and provider.lower() in ("cpu", "cpuexecutionprovider"):
        warnings.append(
            "float16 on the CPU provider is usually slower than float32 (few fp16 kernels, "
            "inserted casts); fp16 pays on GPU providers"
        )
    in_subgraphs = sum(
        1
        for graph in list(iter_graphs(model.graph))[1:]
        for node in graph.node
        if node.op_type in COMPUTE_OPS
    )
    if in_subgraphs:
        warnings.append(
            f"{in_subgraphs} compute nodes sit inside control-flow subgraphs (If/Loop/Scan); "
            "ONNX Runtime's quantizers leave them float"
        )
    return warnings


#: who writes each mode's model, for messages about what it wrote
PRODUCERS = {
    "dynamic": "ONNX Runtime's dynamic quantizer (quantize_dynamic)",
    "static": "ONNX Runtime's static quantizer (quantize_static)",
    "int4": "ONNX Runtime's MatMulNBitsQuantizer",
    "fp16": "onnxruntime.transformers' float16 converter",
}
#: per-channel QuantizeLinear/DequantizeLinear take an ``axis`` from this opset on
PER_CHANNEL_OPSET = 13


def _producer(cfg: QuantizeStep, streaming: bool) -> str:
    return "onnxopt's streaming dynamic quantizer" if streaming else PRODUCERS[cfg.mode]


def _upgrade_for_per_channel(
    model: onnx.ModelProto, cfg: QuantizeStep, notes: list[str]
) -> onnx.ModelProto:
    """Per-channel int8 below opset 13: convert the model to opset 13 first.

    ONNX Runtime's quantizers write per-channel DequantizeLinear nodes with an ``axis``
    attribute, which exists only from opset 13, whatever the model's opset; older models
    (Paddle, older exporters: opset 11-12) came out invalid. The verification against the
    parent (still at its own opset) proves the conversion changed nothing.
    """
    from onnxopt.modelio import opset_of

    per_channel = (cfg.mode == "static" and cfg.static.per_channel) or (
        cfg.mode == "dynamic" and cfg.dynamic.per_channel
    )
    opset = opset_of(model)
    if not per_channel or opset >= PER_CHANNEL_OPSET:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET)
    except Exception as err:
        notes.append(
            f"opset {opset}: per-channel quantization needs opset {PER_CHANNEL_OPSET}, and "
            f"onnx.version_converter could not convert the model ({first_line(err, 120)}); "
            "quantizing at its own opset"
        )
        return model
    notes.append(
        f"converted from opset {opset} to {PER_CHANNEL_OPSET} with onnx.version_converter "
        "first (per-channel DequantizeLinear needs its axis attribute, new in opset 13)"
    )
    return converted


def _load_produced(raw: Path, producer: str, notes: list[str]) -> onnx.ModelProto:
    """Load the quantizer's output; repair it when only its node order is wrong.

    ONNX Runtime's quantizers append the nodes they create in their own order and do not
    see what If/Loop bodies read from the enclosing graph, so a body can come to read a
    value produced after it ("Nodes in a graph must be topologically sorted"). A
    topological sort that counts those reads repairs it; anything else is that library's
    failure (exit 1), named as such.
    """
    from onnxopt.errors import StepError

    try:
        return load_model(raw, produced_by=producer)
    except StepError as err:
        if "topologically sorted" not in err.message:
            raise
    graph_only = onnx.load(str(raw), load_external_data=False)
    try:
        topological_sort(graph_only.graph)
    except InputError:
        raise StepError(f"{producer} wrote a graph with a cycle") from None
    onnx.save_model(graph_only, str(raw))
    del graph_only
    model = load_model(raw, produced_by=producer)
    notes.append(
        f"{producer} wrote its nodes out of order (a control-flow body reads a value made "
        "after it); onnxopt re-sorted the graph topologically"
    )
    return model


def quantize_once(src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` with one concrete mode; return the report."""
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="quantize-", dir=dst.parent))
    try:
        prepared = work / "prepared.onnx"
        model = load_model(src, load_weights=False)  # external weights stay on disk
        before = op_counts(model)
        warnings = _preflight(cfg, ctx.target.provider, model)
        moved = constants_to_initializers(model)
        name_nodes(model)
        if moved:
            notes.append(f"{moved} Constant-node weights turned into initializers")
        model = _upgrade_for_per_channel(model, cfg, notes)
        raw = work / "quantized.onnx"
        streaming = _streams(cfg, model, notes)
        if not streaming:
            _save_prepared(model, src, prepared)
            del model
        current = prepared
        if cfg.mode == "static" and cfg.static.preprocess:
            current = _preprocess(prepared, work / "preprocessed.onnx", notes)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ONNX Runtime's quantizers log advice on the root logger
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if streaming:
                    facts = _dynamic_streaming(model, src.parent, raw, cfg)
                    del model
                else:
                    facts = MODES[cfg.mode](current, raw, cfg, ctx)
        except (ConfigError, InputError):
            raise
        except Exception as err:
            raise StepError(
                f"{cfg.mode} quantization failed: {first_line(err)}",
                hint="exclude the failing nodes with nodes_to_exclude, or try another mode",
            ) from None
        finally:
            root.setLevel(level)
        result = _load_produced(raw, _producer(cfg, streaming), notes)
        counts = op_counts(result)
        counts["new_quantized_ops"] = {
            op: n - before["quantized_ops"].get(op, 0)
            for op, n in counts["quantized_ops"].items()
            if n > before["quantized_ops"].get(op, 0)
        }
        if cfg.mode == "fp16":
            if facts["fp16_initializers"] == 0:
                raise StepError(f"fp16 conversion converted nothing: {WHY_NOTHING['fp16']}")
        elif not counts["new_quantized_ops"]:
            raise StepError(
                f"{cfg.mode} quantization quantized nothing: {WHY_NOTHING[cfg.mode]}",
                hint="check op_types_to_quantize and nodes_to_exclude against 'onnxopt inspect'",
            )
        save_model(result, dst, external_data=ctx.config.external_data)
        del result
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"mode": cfg.mode, **facts, **counts, "notes": notes, "warnings": warnings}


def run(src: Path | None, dst: Path, cfg: QuantizeStep, ctx: StepContext) -> StepResult:
    """Quantize ``src`` into ``dst`` with ``cfg.mode`` (``auto``: see :mod:`quantize_auto`)."""
    assert src is not None
    from onnxopt.bench.machine import machine_info

    info = machine_info()
    cpu = {
        "cpu": info["cpu"],
        "int8_dot_product": info["int8_dot_product"],
        "flags": info["cpu_flags"],
        "provider": ctx.target.provider,
    }
    if cfg.mode == "auto":
        from onnxopt.steps.quantize_auto import run_auto

        result = run_auto(src, dst, cfg, ctx)
        result.report["target"] = cpu
        return result
    report = quantize_once(src, dst, cfg, ctx)
    warnings = report.pop("warnings")
    report["target"] = cpu
    verification = None
    if cfg.diagnose and cfg.mode in ("static", "dynamic", "int4"):
        report["diagnosis"], verification = _diagnose_if_needed(src, dst, cfg, ctx)
        if report["diagnosis"].get("nodes_to_exclude"):
            report.update(op_counts(load_model(dst, load_weights=False)))
    return StepResult(report=report, warnings=warnings, verification=verification)


def _diagnose_if_needed(
    src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext
) -> tuple[dict[str, Any], Verification | None]:
    """Check the budget; when it fails, find and exclude the sensitive nodes.

    Returns the diagnosis report and the verification of the model left at ``dst`` (the
    engine does not verify it again).
    """
    from onnxopt.errors import VerificationError
    from onnxopt.steps.quantize_diagnose import diagnose
    from onnxopt.verify import resolve_tolerance

    reference = ctx.reference(src)
    tol = resolve_tolerance(cfg)
    first = ctx.verify(dst, reference, tol)
    if first.passed:
        return {"needed": False}, first
    failure = first.first_failure()
    result, verification = diagnose(src, dst, cfg, ctx, reference)
    result.update(needed=True, initial_failure=failure)
    if not result["passed"]:
        raise VerificationError(
            f"quantize: {failure}; diagnosis excluded {len(result['nodes_to_exclude'])} "
            "node(s) without meeting the budget",
            hint="widen the budget, give representative calibration data, or try another mode",
        )
    log.warning(
        "quantize: budget met after excluding %d node(s); paste into the step: %s",
        len(result["nodes_to_exclude"]),
        result["yaml"],
    )
    return result, verification
