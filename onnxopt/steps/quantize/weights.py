"""Weights where ONNX Runtime's quantizers look for them.

The quantizers (``quantize_dynamic``, ``quantize_static``) take a weight only when it is an
initializer of the very graph its consumer sits in: ``LSTM`` reads ``W``/``R`` with
``get_initializer``, a quantized ``Conv`` looks its weight up again to add the bias. Real
exports keep weights elsewhere: in ``Constant`` nodes (Paddle, spox), behind a chain of layout
ops on a constant (``Unsqueeze``/``Transpose``/``Reshape`` of the stored tensor, e.g. an LSTM's
weights in a spox-built recurrent model), or in an enclosing graph of the If/Loop/Scan body
that uses them. Each is moved, exactly, to where the quantizers see it:

- ``constants_to_initializers``: Constant nodes become initializers of their own graph;
- :func:`fold_constant_chains`: a node from :data:`FOLDABLE` whose inputs are all constants is
  evaluated once (ONNX's reference evaluator) and replaced by its value;
- :func:`sink_initializers`: an initializer read by exactly one body (and not by its own
  graph) moves into that body, level by level, down to its readers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.graph import constants_to_initializers, outer_scope_reads

# ops that only lay out, convert or combine stored values: folded when every input is constant
FOLDABLE = frozenset(
    {
        "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Flatten", "Cast", "Identity",
        "Concat", "Slice", "Gather", "Split", "Mul", "Add", "Sub", "Div", "Neg", "Sqrt",
    }
)  # fmt: skip
# a folded value may not grow beyond this many times its largest input (no Expand-like blowup)
MAX_GROWTH = 2


def prepare_weights(model: onnx.ModelProto) -> list[str]:
    """Move every weight where the quantizers see it; return notes of what moved (in place)."""
    notes = []
    moved = constants_to_initializers(model)
    if moved:
        notes.append(f"{moved} Constant-node weights turned into initializers")
    folded = fold_constant_chains(model)
    if folded:
        notes.append(f"{folded} nodes computing weights from constants folded into initializers")
    sunk = sink_initializers(model)
    if sunk:
        notes.append(f"{sunk} initializers moved into the If/Loop/Scan bodies that read them")
    return notes


def _visible(
    model: onnx.ModelProto,
) -> Iterator[tuple[onnx.GraphProto, dict[str, onnx.TensorProto]]]:
    """Each graph (deepest first) with the constant initializers its nodes can read."""
    order: list[tuple[onnx.GraphProto, dict[str, onnx.TensorProto]]] = []

    def walk(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> None:
        overridable = {i.name for i in graph.input}
        scope = {k: v for k, v in outer.items() if k not in overridable}
        scope.update({t.name: t for t in graph.initializer if t.name not in overridable})
        order.append((graph, scope))
        for node in graph.node:
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    walk(sub, scope)

    walk(model.graph, {})
    return reversed(order)


def fold_constant_chains(model: onnx.ModelProto) -> int:
    """Replace :data:`FOLDABLE` nodes whose inputs are all constants by their values; count.

    One pass per graph in node order (a chain folds link by link), repeated while a graph's
    fold gives a body new constants to fold. External-data weights are left alone (their
    values are not loaded).
    """
    folded = 0
    for _ in range(4):
        here = sum(
            _fold_graph(graph, scope, list(model.opset_import)) for graph, scope in _visible(model)
        )
        folded += here
        if not here:
            break
    return folded


def _fold_graph(graph: onnx.GraphProto, scope: dict[str, onnx.TensorProto], opsets: list) -> int:
    from onnx.reference import ReferenceEvaluator

    outputs = {o.name for o in graph.output}
    done = []
    for index, node in enumerate(graph.node):
        ins = [name for name in node.input if name]
        if (
            node.op_type not in FOLDABLE
            or node.domain not in ("", "ai.onnx")
            or not ins
            or any(name not in scope or _external(scope[name]) for name in ins)
            or any(o in outputs for o in node.output)
        ):
            continue
        values = _evaluate(ReferenceEvaluator, node, [scope[n] for n in ins], opsets)
        largest = max(max(int(np.prod(scope[n].dims)), 1) for n in ins)
        if values is None or any(v.size > MAX_GROWTH * largest for v in values):
            continue
        for name, value in zip(node.output, values, strict=True):
            tensor = numpy_helper.from_array(value, name)
            graph.initializer.append(tensor)
            scope[name] = tensor
        done.append(index)
    for index in reversed(done):
        del graph.node[index]
    if done:
        _drop_unread(graph)
    return len(done)


def _external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _evaluate(
    evaluator: type, node: onnx.NodeProto, inputs: list[onnx.TensorProto], opsets: list
) -> list[np.ndarray] | None:
    """The node's outputs on these constant inputs, or None when it cannot be evaluated."""
    names = [name for name in node.input if name]
    feeds = {name: numpy_helper.to_array(t) for name, t in zip(names, inputs, strict=True)}
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [
            onnx.helper.make_tensor_value_info(n, inputs[i].data_type, None)
            for i, n in enumerate(names)
        ],
        [
            onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
            for o in node.output
        ],
    )
    try:
        result = evaluator(onnx.helper.make_model(graph, opset_imports=opsets)).run(None, feeds)
    except Exception:  # an op the reference cannot evaluate stays a node
        return None
    return [np.asarray(v) for v in result]


def _drop_unread(graph: onnx.GraphProto) -> None:
    """Remove initializers nothing in the graph (or its bodies) reads any more."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                read |= outer_scope_reads(sub)
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name not in read:
            del graph.initializer[index]


def sink_initializers(model: onnx.ModelProto) -> int:
    """Move each initializer read only inside one body into that body, recursively; count."""
    sunk = 0
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        direct = {o.name for o in graph.output} | {i.name for i in graph.input}
        readers: dict[str, list[onnx.GraphProto]] = {}
        for node in graph.node:
            direct.update(node.input)
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for sub in subs:
                    pending.append(sub)
                    for name in outer_scope_reads(sub):
                        readers.setdefault(name, []).append(sub)
        for index in reversed(range(len(graph.initializer))):
            tensor = graph.initializer[index]
            bodies = readers.get(tensor.name, [])
            if tensor.name in direct or len(bodies) != 1:
                continue
            bodies[0].initializer.append(tensor)
            del graph.initializer[index]
            sunk += 1
    return sunk


__all__ = ["FOLDABLE", "fold_constant_chains", "prepare_weights", "sink_initializers"]
