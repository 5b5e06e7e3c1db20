"""What is inside a model: I/O, ops, parameters, MACs/FLOPs, provider placement."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import InputSpec
from onnxopt.errors import InputError, OnnxoptError, first_line
from onnxopt.graph import graph_inputs, io_table, iter_graphs, opset_of, summary, value_info_shape
from onnxopt.modelio import load_model, model_size
from onnxopt.verify import Fit, Inputs, fit_inputs, make_inputs, specs_from_model

log = logging.getLogger("onnxopt")

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ONNX Runtime contrib ops (com.microsoft) counted like their standard twins.
CONTRIB_MAC_OPS = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul"}


def _mac_kind(node: onnx.NodeProto) -> str | None:
    if node.domain in ("", "ai.onnx") and node.op_type in MAC_OPS:
        return node.op_type
    if node.domain == "com.microsoft":
        return CONTRIB_MAC_OPS.get(node.op_type)
    if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv":
        return "NchwcConv"  # blocked layout: listed as not counted, never guessed
    return None


def _fixed_copy(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A weight-less copy whose symbolic input dims are set to concrete values.

    Large initializers become typed stubs (dims and type, data marked external), so shape
    inference sees everything it needs without a second copy of a model's weights; small
    ones (shape tensors, axes) keep their values for data propagation.
    """
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    g, c = model.graph, copy.graph
    c.name = g.name
    c.node.extend(g.node)
    c.input.extend(g.input)
    c.output.extend(g.output)
    c.value_info.extend(g.value_info)
    c.sparse_initializer.extend(g.sparse_initializer)
    for t in g.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) > 1 << 16:
            stub = c.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            entry = stub.external_data.add()
            entry.key, entry.value = "location", "not-loaded"
        else:
            c.initializer.append(t)
    specs = specs_from_model(model)
    for value, spec in zip(graph_inputs(copy), specs, strict=True):
        for dim, want in zip(value.type.tensor_type.shape.dim, spec.shape, strict=False):
            if isinstance(want, str):
                dim.Clear()
                dim.dim_value = dims[want]
    return copy


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # shape inference raises several types
        log.info("shape inference failed: %s", err)
        inferred = model
    shapes: dict[str, list[int]] = {}
    for graph in iter_graphs(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            shape = value_info_shape(value)
            if shape and all(isinstance(d, int) and d > 0 for d in shape):
                shapes[value.name] = [int(d) for d in shape]
        for init in graph.initializer:
            shapes[init.name] = list(init.dims)
    return shapes


def static_shapes(model: onnx.ModelProto, dims: dict[str, int]) -> dict[str, list[int]]:
    """Concrete shapes of the model's values (and initializers) with its dims set to ``dims``,
    from ONNX shape inference on a weight-less copy; values it cannot tell are left out."""
    return _shapes(_fixed_copy(model, dims))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_macs(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    """Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul node, None if unknown."""
    kind = _mac_kind(node)
    get = shapes.get
    if kind == "Conv":
        out, w = get(node.output[0]), get(node.input[1])
        if out is None or w is None:
            return None
        return math.prod(out) * math.prod(w[1:])
    if kind == "ConvTranspose":
        x, w = get(node.input[0]), get(node.input[1])
        if x is None or w is None:
            return None
        return math.prod(x) * math.prod(w[1:])
    if kind == "Gemm":
        a, b = get(node.input[0]), get(node.input[1])
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return None
        m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
        n = b[0] if _attr(node, "transB", 0) else b[1]
        return m * k * n
    if kind == "MatMul":
        a, out = get(node.input[0]), get(node.output[0])
        if a is None or out is None:
            return None
        return math.prod(out) * a[-1]
    return None


def _runtime_shapes(path: Path, names: list[str], inputs: Inputs) -> dict[str, list[int]]:
    """Shapes of named intermediate values, read by running the model once in ONNX Runtime."""
    from onnxopt.runtime import run_exposing

    model = load_model(path)
    (values,) = run_exposing(model, names, [inputs], where=path.name)
    return {n: list(v.shape) for n, v in values.items()}


def compute_macs(
    model: onnx.ModelProto,
    dims: dict[str, int],
    path: Path | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """MACs and FLOPs (2 x MACs) for Conv, ConvTranspose, Gemm and MatMul (and fused twins).

    Shapes come from ONNX shape inference; where it cannot tell (contrib ops, data-dependent
    reshapes) and ``path`` is given, from one run of the model in ONNX Runtime on ``inputs``
    (default: generated at ``dims``).
    """
    shapes = static_shapes(model, dims)
    mac_nodes = [
        node for graph in iter_graphs(model.graph) for node in graph.node if _mac_kind(node)
    ]
    # values an ONNX Runtime run can expose: those of the main graph, not of If/Loop bodies
    top_level = {o for node in model.graph.node for o in node.output}
    top_level |= {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    missing = {
        name
        for node in mac_nodes
        if node_macs(node, shapes) is None
        for name in (*node.input[:2], node.output[0])
        if name and name not in shapes and name in top_level
    }
    source = "shape inference"
    if missing and path is not None:
        try:
            feeds = inputs if inputs is not None else make_inputs(specs_from_model(model), dims, 0)
            shapes.update(_runtime_shapes(path, sorted(missing), feeds))
            source = "shape inference + one ONNX Runtime run"
        except OnnxoptError as err:
            log.info("runtime shapes unavailable: %s", err)
    per_op: Counter[str] = Counter()
    unknown: list[str] = []
    for node in mac_nodes:
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        else:
            per_op[str(_mac_kind(node))] += macs
    total = sum(per_op.values())
    return {
        "dims": dims,
        "macs": total,
        "flops": 2 * total,
        "macs_by_op": dict(per_op),
        "shapes_from": source,
        "nodes_not_counted": unknown,
    }


def placement(path: Path, provider: str, inputs: Inputs) -> dict[str, Any]:
    """Which provider runs each node, read from an ONNX Runtime profile of one run on
    ``inputs``."""
    from onnxopt.config import Target
    from onnxopt.runtime import provider_id, run_session, session_options

    target = Target(provider=provider)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(target)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        from onnxopt.runtime import make_session

        session = make_session(path, target, options=opts)
        run_session(session, inputs, path.name)
        profile = Path(session.end_profiling())
        events = json.loads(profile.read_text())
    nodes: dict[str, dict[str, str]] = {}
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") == "Node" and "provider" in args:
            name = str(ev.get("name", "")).removesuffix("_kernel_time")
            nodes[name] = {"op": args.get("op_name", "?"), "provider": args["provider"]}
    chosen = provider_id(provider)
    counts = Counter(n["provider"] for n in nodes.values())
    off = {name: n for name, n in nodes.items() if n["provider"] != chosen}
    copies = sum(1 for n in nodes.values() if n["op"] in ("MemcpyToHost", "MemcpyFromHost"))
    return {
        "provider": chosen,
        "executed_nodes": len(nodes),
        "by_provider": dict(counts),
        "not_on_provider": off,
        "memory_copies": copies,
        "note": "nodes after ONNX Runtime graph optimization, as executed",
    }


def _fit(file: Path, specs: list[InputSpec], dims: dict[str, int]) -> Fit:
    """Generated inputs that fit the model (verify.fit); when the model runs at no tried
    value, the first guesses, with the reason in the defaulted dims (inspect still reports
    what it can)."""
    try:
        return fit_inputs(file, specs, dims)
    except InputError as err:
        fit = fit_inputs(None, specs, dims)
        log.warning("%s", err.message)
        fit.defaulted = {
            k: f"{v} (the model did not run on generated inputs)" for k, v in fit.defaulted.items()
        }
        return fit


def inspect_model(
    path: str | Path,
    *,
    dims: dict[str, int] | None = None,
    provider: str | None = None,
) -> dict[str, Any]:
    """Describe an ONNX model.

    Args:
        path: the .onnx file.
        dims: values for symbolic dims (MACs and placement need concrete shapes; default 1).
        provider: also report node placement on this execution provider.
    """
    file = Path(path)
    model = load_model(file, load_weights=False)
    info: dict[str, Any] = {
        "path": str(file),
        "size_bytes": model_size(file),
        "ir_version": model.ir_version,
        "opset": opset_of(model),
        "opsets": {e.domain or "ai.onnx": e.version for e in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        **io_table(model),
        **summary(model),
    }
    fit = _fit(file, specs_from_model(model), dims or {})
    inputs = make_inputs(fit.specs, fit.dims, seed=0)
    info["compute"] = compute_macs(model, fit.dims, file, inputs)
    info["compute"]["defaulted_dims"] = fit.defaulted
    info["compute"]["ranges"] = fit.ranges
    if provider:
        try:
            info["placement"] = placement(file, provider, inputs)
        except OnnxoptError:
            raise
        except Exception as err:  # report, do not crash the whole inspection
            with contextlib.suppress(Exception):
                log.debug("placement failed", exc_info=True)
            info["placement"] = {"error": first_line(err, 200)}
    return info
