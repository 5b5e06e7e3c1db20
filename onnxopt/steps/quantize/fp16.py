"""float16 conversion with an automatic block list: nodes that read or write values beyond
the float16 range (or inf/NaN) on the verification inputs stay float32."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.config import QuantizeStep
from onnxopt.graph import iter_graphs, topological_sort
from onnxopt.modelio import load_model, save_model
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.backend import Backend, Recipe

FP16_MAX = 65504.0
GPU_PROVIDERS = ("cuda", "tensorrt", "rocm", "dml", "migraphx")


def fp16_tensor_count(model: onnx.ModelProto) -> int:
    """Initializers stored as float16."""
    return sum(
        1
        for graph in iter_graphs(model.graph)
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT16
    )


#: samples the float16 overflow scan runs on (held-out ones first)
OVERFLOW_SAMPLES = 64


def fp16_overflow_nodes(src: Path, ctx: StepContext) -> dict[str, str]:
    """Nodes that read or write values beyond the float16 range (or inf/NaN) on the inputs.

    Consumers are blocked too: a value that overflows float16 must not be cast back to it.
    """
    from onnxopt.runtime import iter_exposing

    model = load_model(src)
    producers: dict[str, str] = {}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.output:
            producers[name] = node.name or f"{node.op_type}:{name}"
        for name in node.input:
            consumers.setdefault(name, []).append(node.name or f"{node.op_type}:{node.output[0]}")
    # one sample's activations at a time (every tensor of 256 samples of a CTC recogniser
    # took 50 GB at once), on at most OVERFLOW_SAMPLES of the held-out and calibration ones
    feeds_list = (ctx.input_set.sets() + (ctx.calibration or []))[:OVERFLOW_SAMPLES]
    names = [n for n in producers if n]
    found: dict[str, str] = {}
    for values in iter_exposing(model, names, feeds_list, where=src.name):
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


def _write(
    src: Path, out: Path, cfg: QuantizeStep, ctx: StepContext, notes: list[str]
) -> dict[str, Any]:
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


def _cpu_note(provider: str) -> str | None:
    if provider.lower() in ("cpu", "cpuexecutionprovider"):
        return (
            "float16 on the CPU provider is usually slower than float32 (few fp16 kernels, "
            "inserted casts); fp16 pays on GPU providers"
        )
    return None


def _unfit(ops: Counter[str], cfg: QuantizeStep, provider: str, data: bool) -> str | None:
    """Always tried (last on the CPU provider, where it usually loses: measured, not
    assumed, on each model)."""
    return None


BACKEND = Backend(
    mode="fp16",
    write=_write,
    producer="onnxruntime.transformers' float16 converter",
    why_nothing="the model has no float32 tensors to convert",
    tolerance=(float("inf"), float("inf"), 0.999),
    min_opset=7,
    diagnosable=False,
    did_nothing=lambda facts, counts: facts["fp16_initializers"] == 0,
    nothing_text="conversion converted nothing",
    target_note=_cpu_note,
    recipes=(Recipe("fp16", {"mode": "fp16"}, _unfit),),
)
