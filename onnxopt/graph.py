"""What is inside an ONNX graph, from the ModelProto alone (no files read or written):
subgraphs and tensors, input and output types, op histograms and summaries, node order,
opsets, Constant-node weights, external-data references."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import onnx

from onnxopt.errors import InputError

Dim = int | str


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from iter_graphs(sub)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant-node tensor, subgraphs included."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by weights (initializers and Constant tensors)."""
    total = 0
    for tensor in iter_tensors(model):
        total += _tensor_nbytes(tensor)
    return total


def _tensor_nbytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return count * itemsize


def value_info_shape(value: onnx.ValueInfoProto) -> list[Dim]:
    """Shape as ints and names; '?' for an unknown dim."""
    t = value.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in t.tensor_type.shape.dim
    ]


def value_info_dtype(value: onnx.ValueInfoProto) -> str:
    """numpy-style dtype of a tensor value; e.g. 'sequence<map<int64,float32>>' otherwise."""
    return _type_text(value.type)


def _elem_text(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _type_text(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return _elem_text(t.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"sequence<{_type_text(t.sequence_type.elem_type)}>"
    if kind == "map_type":
        key = _elem_text(t.map_type.key_type)
        return f"map<{key},{_type_text(t.map_type.value_type)}>"
    if kind == "optional_type":
        return f"optional<{_type_text(t.optional_type.elem_type)}>"
    return kind or "unknown"


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def io_table(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs with shapes and dtypes."""
    return {
        "inputs": [
            {"name": v.name, "shape": value_info_shape(v), "dtype": value_info_dtype(v)}
            for v in graph_inputs(model)
        ],
        "outputs": [
            {"name": v.name, "shape": value_info_shape(v), "dtype": value_info_dtype(v)}
            for v in model.graph.output
        ],
    }


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            counts[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Node count, op histogram, parameter count and bytes."""
    hist = op_histogram(model)
    params = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        params += count
    return {
        "nodes": sum(hist.values()),
        "ops": hist,
        "parameters": params,
        "weight_bytes": tensor_bytes(model),
    }


def outer_scope_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself: values of enclosing graphs."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for node in graph.node for o in node.output}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(node.input)
        for sub in _subgraphs(node):
            reads |= outer_scope_reads(sub)
    reads |= {o.name for o in graph.output}
    return {name for name in reads if name and name not in defined}


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder a graph's nodes so every node comes after the producers of its inputs.

    A node with subgraphs (If, Loop, Scan) also depends on the enclosing values its bodies
    read, and the bodies are sorted too. Names that no node produces (graph inputs,
    initializers, outer-scope values) count as available from the start; among ready nodes
    the original order is kept. Raises InputError on a cycle.
    """
    import heapq

    for node in graph.node:
        for sub in _subgraphs(node):
            topological_sort(sub)
    produced_by: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name:
                produced_by[name] = i
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        reads = set(node.input)
        for sub in _subgraphs(node):
            reads |= outer_scope_reads(sub)
        deps = {produced_by[n] for n in reads if n in produced_by and produced_by[n] != i}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise InputError(f"graph {graph.name!r} has a cycle; cannot order its nodes")
    nodes = [graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn ``Constant`` nodes holding tensors into initializers of their own graph (the main
    graph and every If/Loop/Scan body); return how many.

    Exporters such as Paddle's and spox keep weights in Constant nodes, which ONNX Runtime's
    quantizers do not accept ("Expected ... to be an initializer"); spox-built recurrent
    models keep them inside the bodies of an If.
    """
    moved = 0
    # deepest bodies first, each Constant deleted in place: rebuilding a graph's node list
    # copies its nodes, which would leave references to the bodies below them stale
    for graph in reversed(list(iter_graphs(model.graph))):
        found = [
            index
            for index, node in enumerate(graph.node)
            if node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and any(a.name == "value" for a in node.attribute)
        ]
        for index in reversed(found):
            node = graph.node[index]
            tensor = onnx.TensorProto()
            tensor.CopyFrom(next(a.t for a in node.attribute if a.name == "value"))
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            del graph.node[index]
        moved += len(found)
    return moved


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """A tensor's external-data entries (location, offset, length) as a dict."""
    return {e.key: e.value for e in tensor.external_data}


def external_locations(model: onnx.ModelProto) -> set[str]:
    """The external-data file names (relative locations) a model's tensors refer to."""
    return {
        entry.value
        for tensor in iter_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
