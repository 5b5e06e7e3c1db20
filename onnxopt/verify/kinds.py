"""What each output of a model is, read from the graph, so it is judged by a rule that fits.

- ``classes``: class scores: the output of a Softmax/LogSoftmax, or logits a Softmax reads.
  Judged by the top-1 agreement over the class axis on the held-out samples and by how far
  the reference's top class's probability moved (a whole-tensor cosine of probabilities is
  too strict: it refuses candidates that keep every label).
- ``decisions``: the output of a Sigmoid: yes/no decisions at 0.5, judged by the share that
  flip (a cosine of 1.0000 can hide changed word boundaries).
- ``values``: anything else (boxes, embeddings, regressions): the whole-tensor cosine and
  the worst slice along the small axes (see :mod:`onnxopt.verify.compare`). Where a values
  output concatenates Sigmoid scores with other parts (a detector's [N, 4 + classes,
  anchors]), the Sigmoid parts are decisions (``parts``): judged by their flips, not by
  the relative error of scores near 0 that never fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

Kind = Literal["classes", "decisions", "values"]
#: ops an output may pass through unchanged in kind
PASS_THROUGH = ("Identity", "Cast")
#: ops that only reshape or broadcast a sum back over the classes
SHAPE_ONLY = ("Identity", "Reshape", "Expand", "Unsqueeze", "Squeeze")


@dataclass(frozen=True)
class OutputKind:
    """What an output is: its kind, its class axis (classes) and how it was recognised."""

    kind: Kind
    axis: int = -1
    #: "probabilities", "log-probabilities" or "logits" (classes)
    scores: str = "probabilities"
    #: the Softmax flattens from ``axis`` (opset < 13): only a last axis is a class axis
    coerced: bool = False
    how: str = ""
    #: values: [start, stop) ranges along ``axis`` that are Sigmoid decisions (a Concat's)
    parts: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        """The rule's name for reports."""
        if self.kind == "classes":
            return f"class scores ({self.how}, axis {self.axis})"
        if self.kind == "decisions":
            return f"decisions at 0.5 ({self.how})"
        if self.parts:
            lead = ", ".join([":"] * self.axis)
            ranges = ", ".join(f"[{lead}, {a}:{b}]" for a, b in self.parts)
            return f"values; decisions at 0.5 in {ranges} ({self.how})"
        return "values"


def _softmax_kind(node: onnx.NodeProto, opset: int, scores: str, how: str) -> OutputKind:
    default = -1 if opset >= 13 else 1
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return OutputKind("classes", int(axis), scores, coerced=opset < 13, how=how)


def kinds_of(model: onnx.ModelProto) -> dict[str, OutputKind]:
    """Output name -> its kind, for the outputs that are not plain values."""
    from onnxopt.graph import opset_of

    opset = opset_of(model)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    kinds: dict[str, OutputKind] = {}
    for output in graph.output:
        node = _source(output.name, producers)
        if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
            log = node.op_type == "LogSoftmax"
            scores = "log-probabilities" if log else "probabilities"
            kinds[output.name] = _softmax_kind(node, opset, scores, node.op_type)
            continue
        axis = _decomposed_softmax(node, producers, graph)
        if axis is not None:
            how = "Exp / ReduceSum(Exp): a Softmax written out"
            kinds[output.name] = OutputKind("classes", axis, "probabilities", how=how)
            continue
        if node is not None and node.op_type == "Sigmoid":
            kinds[output.name] = OutputKind("decisions", how="Sigmoid")
            continue
        if node is not None and node.op_type == "Concat":
            parted = _sigmoid_parts(model, node, producers)
            if parted is not None:
                kinds[output.name] = parted
                continue
        reader = next(
            (
                n
                for n in consumers.get(output.name, [])
                if n.op_type == "Softmax" and n.input[0] == output.name
            ),
            None,
        )
        if reader is not None:
            kinds[output.name] = _softmax_kind(reader, opset, "logits", "logits read by Softmax")
    return kinds


def _source(name: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node that computes ``name``, looking through ops that keep its kind."""
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    return node


def _sigmoid_parts(
    model: onnx.ModelProto, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]
) -> OutputKind | None:
    """The Sigmoid inputs of a Concat output as decision ranges along its axis (their sizes
    on it from shape inference), or None when there is none or a size is not known."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    sigmoid = []
    for name in node.input:
        producer = _source(name, producers)
        sigmoid.append(producer is not None and producer.op_type == "Sigmoid")
    if not any(sigmoid) or all(sigmoid):
        return None
    dims = _dims_on(model, list(node.input), axis)
    if dims is None or axis < 0:
        return None
    parts, start = [], 0
    for size, is_decision in zip(dims, sigmoid, strict=True):
        if is_decision:
            parts.append((start, start + size))
        start += size
    return OutputKind("values", axis=axis, parts=tuple(parts), how="Sigmoid scores in a Concat")


def _dims_on(model: onnx.ModelProto, names: list[str], axis: int) -> list[int] | None:
    """Each tensor's size on ``axis`` by shape inference (the model is read without its
    weights, see output_kinds), or None."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - an unknown size only means no parts
        return None
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.graph.value_info}
    dims = []
    for name in names:
        shape = shapes.get(name)
        if shape is None or len(shape.dim) <= axis or not shape.dim[axis].HasField("dim_value"):
            return None
        dims.append(int(shape.dim[axis].dim_value))
    return dims


def _decomposed_softmax(
    node: onnx.NodeProto | None, producers: dict[str, onnx.NodeProto], graph: onnx.GraphProto
) -> int | None:
    """The class axis of a Softmax written out as Div(Exp(x), ReduceSum(Exp(x), axes=[a]))
    (tf2onnx, Keras and JAX exports; the sum possibly reshaped and expanded back), or None."""
    if node is None or node.op_type != "Div" or len(node.input) != 2:
        return None
    top, bottom = (producers.get(name) for name in node.input)
    while bottom is not None and bottom.op_type in SHAPE_ONLY:  # JAX: Expand(Reshape(sum))
        bottom = producers.get(bottom.input[0])
    if top is None or bottom is None or top.op_type != "Exp" or bottom.op_type != "ReduceSum":
        return None
    if bottom.input[0] != top.output[0]:
        return None
    axes = next((list(a.ints) for a in bottom.attribute if a.name == "axes"), None)
    if axes is None and len(bottom.input) > 1:
        from onnx import numpy_helper

        init = next((t for t in graph.initializer if t.name == bottom.input[1]), None)
        axes = None if init is None else numpy_helper.to_array(init).reshape(-1).tolist()
        if init is None:
            constant = producers.get(bottom.input[1])
            if constant is not None and constant.op_type == "Constant":
                value = onnx.helper.get_attribute_value(constant.attribute[0])
                axes = numpy_helper.to_array(value).reshape(-1).tolist()
    if axes is None or len(axes) != 1:
        return None
    return int(axes[0])


_CACHE: dict[tuple[str, int, int], dict[str, OutputKind]] = {}


def output_kinds(path: Path | None) -> dict[str, OutputKind]:
    """:func:`kinds_of` of a model file (weights left on disk), cached by path and mtime."""
    if path is None or not Path(path).is_file():
        return {}
    stat = Path(path).stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        from onnxopt.modelio import load_model

        _CACHE[key] = kinds_of(load_model(Path(path), load_weights=False))
    return _CACHE[key]
