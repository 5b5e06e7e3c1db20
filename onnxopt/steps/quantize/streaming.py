"""Dynamic INT8 quantization of MatMul weights held in external data, one tensor in memory.

ONNX Runtime's ``quantize_dynamic`` loads every weight, reloads the model for shape
inference and keeps float and int8 copies side by side: on a 2.25 GiB model its process
peaks at about 3.2x the model size. This quantizer writes the graph ONNX Runtime would write
for MatMuls with a constant 2-D float32 weight (``DynamicQuantizeLinear`` on the activation,
``MatMulInteger``, ``Cast``, scale ``Mul``s; names as ONNX Runtime gives them) with the same
arithmetic (symmetric int8 or asymmetric uint8, per column or per tensor, optional 7-bit
range), but reads each weight from the source .data file, quantizes it in row blocks and
appends it to the new .data file before reading the next. ``tests/test_quantize_stream.py``
checks weights and outputs against ``quantize_dynamic`` itself.

Graphs with anything else ONNX Runtime's dynamic quantizer would rewrite (Gemm, Attention,
LSTM, Conv when asked, nodes inside If/Loop bodies) are left to ONNX Runtime: ``unsupported``
says why.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxopt.graph import iter_graphs, iter_tensors, opset_of
from onnxopt.modelio import ExternalWriter, read_tensor

#: rows quantized at once: bounds the float temporaries to ROWS x N x 4 bytes x 3
ROWS = 1024
#: ops ONNX Runtime's dynamic quantizer rewrites besides MatMul (Gemm always: it turns
#: Gemm into MatMul + Add before quantizing)
_REWRITTEN = {"Gemm"}


def _qrange(weight_type: str, reduce_range: bool) -> tuple[int, int]:
    """ONNX Runtime's weight ranges: symmetric int8, full uint8, 7 bits with reduce_range."""
    if weight_type == "int8":
        return (-64, 64) if reduce_range else (-127, 127)
    return (0, 127) if reduce_range else (0, 255)


def unsupported(model: onnx.ModelProto, ops: list[str], exclude: list[str]) -> str | None:
    """Why this graph needs ONNX Runtime's quantizer, or None when streaming does it all."""
    if opset_of(model) < 11:
        return f"opset {opset_of(model)} < 11 (no DynamicQuantizeLinear)"
    skipped = set(exclude)
    wanted = set(ops) | _REWRITTEN
    others = Counter(
        n.op_type
        for n in model.graph.node
        if n.op_type in wanted - {"MatMul"} and n.name not in skipped
    )
    if others:
        return "it has " + ", ".join(f"{k} {v}" for k, v in sorted(others.items())) + " node(s)"
    nested = sum(
        1
        for graph in list(iter_graphs(model.graph))[1:]
        for node in graph.node
        if node.op_type in wanted
    )
    if nested:
        return f"{nested} node(s) to quantize sit inside If/Loop/Scan bodies"
    inits = {t.name: t for t in model.graph.initializer}
    for node in _targets(model, ops, exclude):
        weight = inits[node.input[1]]
        if weight.data_type != TensorProto.FLOAT:
            return f"weight {weight.name!r} is {TensorProto.DataType.Name(weight.data_type)}"
        if node.input[0] in inits:
            return f"MatMul {node.name!r} has a constant first input"
    return None


def _targets(model: onnx.ModelProto, ops: list[str], exclude: list[str]) -> list[onnx.NodeProto]:
    """MatMuls ONNX Runtime would quantize: constant 2-D B, not excluded (MatMulConstBOnly)."""
    if "MatMul" not in ops:
        return []
    graph_inputs = {i.name for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer if t.name not in graph_inputs}
    skipped = set(exclude)
    return [
        n
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.domain in ("", "ai.onnx")
        and n.name not in skipped
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
    ]


def _quantize_weight(
    w: np.ndarray, weight_type: str, per_channel: bool, reduce_range: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized, scale, zero point) with ONNX Runtime's arithmetic (quant_utils)."""
    qmin, qmax = _qrange(weight_type, reduce_range)
    dtype = np.int8 if weight_type == "int8" else np.uint8
    full = np.iinfo(dtype)
    axis = 0 if per_channel else None
    zero = np.float32(0)
    rmin = np.minimum(w.min(axis=axis), zero).astype(np.float32)
    rmax = np.maximum(w.max(axis=axis), zero).astype(np.float32)
    if weight_type == "int8":  # symmetric
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale64 = (rmax.astype(np.float64) - rmin.astype(np.float64)) / float(qmax - qmin)
    tiny = scale64 < np.finfo(np.float32).tiny
    if weight_type == "int8":
        zp = np.zeros(scale64.shape, dtype=dtype)  # round((qmin + qmax) / 2) = 0
    else:
        zp = np.round(qmin - rmin.astype(np.float64) / np.where(tiny, 1.0, scale64)).astype(dtype)
    scale = np.where(tiny, 1.0, scale64).astype(np.float32)
    zp = np.where(tiny, 0, zp).astype(dtype)
    q = np.empty(w.shape, dtype=dtype)
    for start in range(0, w.shape[0], ROWS):
        block = w[start : start + ROWS] / scale
        block = block.round()
        block += zp.astype(np.float32)
        np.clip(block, full.min, full.max, out=block)
        q[start : start + ROWS] = block.astype(dtype)
    return q, scale, zp


def _integer_matmul(
    node: onnx.NodeProto, a: str, weight: tuple[str, str, str]
) -> list[onnx.NodeProto]:
    """ONNX Runtime's nodes for one dynamically quantized MatMul: MatMulInteger of the
    quantized activation ``a`` and weight, cast to float, times both scales."""
    qb, sb, zb = weight
    y = node.output[0]
    name = node.name + "_quant"
    integer = y + "_output_quantized"
    cast = integer + "_cast_output"
    scales = name + "_scales_mul"
    return [
        helper.make_node(
            "MatMulInteger", [a + "_quantized", qb, a + "_zero_point", zb], [integer], name
        ),
        helper.make_node("Cast", [integer], [cast], integer + "_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [a + "_scale", sb], [scales + ":0"], scales),
        helper.make_node("Mul", [cast, scales + ":0"], [y], name + "_output_scale_mul"),
    ]


def quantize_dynamic_streaming(
    model: onnx.ModelProto,
    folder: Path,
    dst: Path,
    *,
    ops: list[str],
    exclude: list[str],
    per_channel: bool,
    reduce_range: bool,
    weight_type: str,
) -> dict[str, Any]:
    """Quantize ``model`` (weights external in ``folder``) into ``dst`` and its .data file.

    ``model`` (loaded without weights, nodes named) is rewritten in place.
    """
    graph = model.graph
    targets = _targets(model, ops, exclude)
    inits = {t.name: t for t in graph.initializer}
    qtype = TensorProto.INT8 if weight_type == "int8" else TensorProto.UINT8
    new_inits: list[onnx.TensorProto] = []
    done: dict[str, tuple[str, str, str]] = {}  # float weight -> quantized, scale, zero point
    activations: set[str] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}

    with ExternalWriter(dst.parent, dst.name + ".data") as out:
        for node in targets:
            a, b = node.input[0], node.input[1]
            before: list[onnx.NodeProto] = []
            if a not in activations:
                activations.add(a)
                before.append(
                    helper.make_node(
                        "DynamicQuantizeLinear",
                        [a],
                        [a + "_quantized", a + "_scale", a + "_zero_point"],
                        a + "_QuantizeLinear",
                    )
                )
            if b not in done:
                q, scale, zp = _quantize_weight(
                    read_tensor(inits[b], folder), weight_type, per_channel, reduce_range
                )
                shape = list(scale.shape)
                qt = TensorProto(name=b + "_quantized", data_type=qtype, dims=q.shape)
                out.place(qt, q.tobytes())
                del q
                new_inits += [
                    qt,
                    helper.make_tensor(b + "_scale", TensorProto.FLOAT, shape, scale.ravel()),
                    helper.make_tensor(b + "_zero_point", qtype, shape, zp.ravel().tolist()),
                ]
                done[b] = (b + "_quantized", b + "_scale", b + "_zero_point")
            replaced[id(node)] = [*before, *_integer_matmul(node, a, done[b])]
        nodes = [m for n in graph.node for m in replaced.get(id(n), [n])]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for g in iter_graphs(graph) for n in g.node for i in n.input}
        used |= {v.name for v in [*graph.output, *graph.input]}
        # like ONNX Runtime: other readers of a quantized weight get it dequantized
        for w in reversed([w for w in done if w in used]):
            node = helper.make_node("DequantizeLinear", list(done[w]), [w], w + "_DequantizeLinear")
            if per_channel:
                node.attribute.append(helper.make_attribute("axis", -1))
            graph.node.insert(0, node)
        used -= set(done)
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept + new_inits)
        quantized = {t.name for t in new_inits}
        for tensor in iter_tensors(model):
            if tensor.data_location == TensorProto.EXTERNAL and tensor.name not in quantized:
                out.copy(tensor, folder)
    onnx.save_model(model, str(dst))
    return {"engine": "streaming", "weights_quantized": len(done)}
