"""Channel groups: the dependency analysis behind structured pruning on the ONNX graph.

Channel pruning finds *groups*: sets of channels that must be removed together. A group
starts at every Conv, Gemm or MatMul whose weight is an initializer (its output channels),
follows the tensor through ops that keep channels aligned (activations, BatchNormalization,
pooling, element-wise ops with per-channel or scalar constants, depthwise convolutions), and
ends at the layers that read those channels (the next Conv's input channels, the next
MatMul/Gemm rows, a Flatten into a Gemm). A transformer's feed-forward block is one such
group: MatMul(W1) -> Add(b1) -> GELU (a Gelu node, the exported Div/Erf/Add/Mul/Mul or tanh
pattern, or onnxruntime's fused BiasGelu/FastGelu) -> MatMul(W2), its intermediate channels
being the columns of W1, the entries of b1 and the rows of W2. Channels that reach a
LayerNormalization, a residual Add with the embeddings or a head-splitting Reshape (the
hidden size of attention projections and of the residual stream) stay. Element-wise ops
that join two tensors (residual Add) merge their groups. Anything else that touches a group
(Reshape, Concat, Split, a graph output, weights shared between nodes, grouped convolutions)
makes that group unprunable, reported with the reason, so the graph is never broken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.graph import constants_to_initializers
from onnxopt.modelio import load_model

PASS_OPS = {
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "HardSwish",
    "HardSigmoid",
    "Gelu",
    "Elu",
    "Selu",
    "Softplus",
    "Mish",
    "Identity",
    "Dropout",
    "Erf",
    "Neg",
    "Abs",
    "Sqrt",
    "Exp",
    "Log",
    "Cast",
    "QuickGelu",
}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
BINARY_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}
#: onnxruntime's fused activations whose second input is a per-channel bias (com.microsoft)
BIAS_ACTIVATION_OPS = {"BiasGelu", "FastGelu"}
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin"}


@dataclass
class Group:
    """Channels that must be pruned together."""

    size: int
    producers: list[onnx.NodeProto] = field(default_factory=list)
    members: list[tuple[str, onnx.NodeProto, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        return ra


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """A node attribute's value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def producer_size(
    node: onnx.NodeProto, weight: Callable[[onnx.NodeProto, int], np.ndarray | None]
) -> int | None:
    """Output channels of a prunable producer (Conv, MatMul, Gemm with a float weight), or None."""
    w = weight(node, 1)
    if w is None or w.dtype.kind != "f":
        return None
    if node.op_type == "Conv" and w.ndim >= 3 and attr(node, "group", 1) == 1:
        return int(w.shape[0])
    if node.op_type == "MatMul" and w.ndim == 2:
        return int(w.shape[1])
    if node.op_type == "Gemm" and w.ndim == 2 and not attr(node, "transA", 0):
        return int(w.shape[0] if attr(node, "transB", 0) else w.shape[1])
    return None


class ChannelAnalysis:
    """Dependency analysis of a float model's channels."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
        self.model = model
        self.graph = model.graph
        self.shapes = shapes
        self.inits = {t.name: t for t in self.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.uses = {name: len(users) for name, users in self.consumers.items()}
        self.outputs = {o.name for o in self.graph.output}
        self.uf = _UnionFind()
        self.groups: dict[int, Group] = {}
        self.tensor_space: dict[str, int] = {}
        self.axis: dict[str, int] = {}
        self.next_id = 0

    # -- helpers ----------------------------------------------------------

    def weight(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        """The initializer at input ``index`` of ``node`` as an array, or None."""
        if len(node.input) <= index or node.input[index] not in self.inits:
            return None
        return numpy_helper.to_array(self.inits[node.input[index]])

    def _shared(self, node: onnx.NodeProto, index: int) -> bool:
        return len(node.input) > index and self.uses.get(node.input[index], 0) > 1

    def _group(self, space: int) -> Group:
        return self.groups[self.uf.find(space)]

    def _fail(self, space: int, reason: str) -> None:
        group = self._group(space)
        if reason not in group.problems:
            group.problems.append(reason)

    def _merge(self, a: int, b: int, where: str) -> int:
        ra, rb = self.uf.find(a), self.uf.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups.pop(rb)
        self.uf.parent[rb] = ra
        if ga.size != gb.size:
            ga.problems.append(f"{where}: joins groups of {ga.size} and {gb.size} channels")
        ga.producers += gb.producers
        ga.members += gb.members
        ga.problems += [p for p in gb.problems if p not in ga.problems]
        return ra

    # -- analysis ---------------------------------------------------------

    def run(self) -> dict[int, Group]:
        """Find every group, in one forward pass over the (topologically sorted) graph."""
        for node in self.graph.node:
            carried = [(i, t) for i, t in enumerate(node.input) if t in self.tensor_space]
            for _, tensor in carried:
                self._consume(node, tensor, self.tensor_space[tensor], self.axis[tensor])
            size = producer_size(node, self.weight)
            if size is not None:
                space = self.next_id
                self.next_id += 1
                self.uf.find(space)
                self.groups[space] = Group(size=size, producers=[node])
                if self._shared(node, 1):
                    self._fail(space, f"{node.name}: weight shared with other nodes")
                if node.op_type == "Conv" and len(node.input) > 2 and self._shared(node, 2):
                    self._fail(space, f"{node.name}: bias shared with other nodes")
                self._carry(node.output[0], space, 1 if node.op_type == "Conv" else -1)
        for tensor, space in self.tensor_space.items():
            if tensor in self.outputs:
                self._fail(space, f"reaches the graph output {tensor!r} (outputs keep their shape)")
        return {self.uf.find(k): g for k, g in self.groups.items()}

    def _carry(self, tensor: str, space: int, axis: int) -> None:
        """Record that ``tensor`` carries the channels of ``space`` on ``axis``."""
        existing = self.tensor_space.get(tensor)
        if existing is not None and self.uf.find(existing) != self.uf.find(space):
            self._merge(existing, space, tensor)
        self.tensor_space[tensor] = space
        self.axis[tensor] = axis

    def _consume(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        op = node.op_type
        if op in PASS_OPS or (op in POOL_OPS and node.input[0] == tensor):
            self._carry(node.output[0], space, axis)
        elif op == "BatchNormalization" and node.input[0] == tensor:
            if any(self._shared(node, i) or node.input[i] not in self.inits for i in (1, 2, 3, 4)):
                self._fail(space, f"{node.name}: BatchNormalization parameters not prunable")
            self._group(space).members.append(("bn", node, None))
            self._carry(node.output[0], space, axis)
        elif op == "Concat":
            self._concat(node, tensor, space, axis)
        elif op == "Reshape" and node.input[0] == tensor:
            self._reshape(node, tensor, space, axis)
        elif op in REDUCE_OPS and node.input[0] == tensor:
            self._reduce(node, tensor, space, axis)
        elif op in BINARY_OPS or (op in BIAS_ACTIVATION_OPS and node.input[0] == tensor):
            self._binary(node, tensor, space, axis)
        elif op == "Conv" and node.input[0] == tensor and axis == 1:
            w = self.weight(node, 1)
            groups = attr(node, "group", 1)
            if w is None or self._shared(node, 1):
                self._fail(space, f"{node.name}: Conv weight is not a private initializer")
            elif groups == 1:
                self._group(space).members.append(("conv_in", node, None))
            elif groups == self._group(space).size and w.shape[1] == 1:  # depthwise
                self._group(space).members.append(("dw", node, None))
                self._carry(node.output[0], space, axis)
            else:
                self._fail(space, f"{node.name}: grouped Conv (group={groups})")
        elif op in ("MatMul", "Gemm") and node.input[0] == tensor and axis == -1:
            w = self.weight(node, 1)
            if w is None or self._shared(node, 1) or (op == "Gemm" and attr(node, "transA", 0)):
                self._fail(space, f"{node.name}: {op} weight is not a private initializer")
            else:
                self._group(space).members.append(("mm_in", node, None))
        elif op == "Flatten" and axis == 1 and attr(node, "axis", 1) == 1:
            self._flatten(node, tensor, space)
        else:
            self._fail(space, f"{node.name or op}: {op} is not understood for channel pruning")

    def _concat(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Concat on the channel axis read directly by Conv/MatMul/Gemm: channel offsets."""
        rank = len(self.shapes.get(tensor, []))
        cat_axis = attr(node, "axis", 0)
        if not rank or cat_axis % rank != axis % rank:
            self._fail(space, f"{node.name}: Concat on another axis than the channels")
            return
        offset = 0
        for name in node.input:
            if name == tensor:
                break
            shape = self.shapes.get(name)
            if shape is None:
                self._fail(space, f"{node.name}: Concat input {name!r} has an unknown shape")
                return
            offset += shape[axis]
        out = node.output[0]
        users = self.consumers.get(out, [])
        if out in self.outputs or not users:
            self._fail(space, f"{node.name}: Concat output is a graph output")
            return
        for user in users:
            conv_ok = user.op_type == "Conv" and axis % rank == 1 and attr(user, "group", 1) == 1
            mm_ok = user.op_type in ("MatMul", "Gemm") and axis % rank == rank - 1
            if not (conv_ok or mm_ok) or user.input[0] != out or self.weight(user, 1) is None:
                self._fail(space, f"{node.name}: Concat output read by {user.op_type}")
                return
            if self._shared(user, 1):
                self._fail(space, f"{user.name}: weight shared with other nodes")
                return
        for user in users:
            self._group(space).members.append(("in_at", user, offset))

    def _reshape(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Only [..., C, 1, 1] -> [..., C]: dropping unit dims after the channels."""
        shape_in = self.shapes.get(tensor)
        shape_out = self.shapes.get(node.output[0])
        size = self._group(space).size
        target = node.input[1] if len(node.input) > 1 else ""
        ok = (
            shape_in is not None
            and shape_out is not None
            and target in self.inits
            and not self._shared(node, 1)
            and shape_in[axis] == size
            and int(np.prod(shape_in[axis % len(shape_in) + 1 :])) == 1
            and shape_out[-1] == size
        )
        if not ok:
            self._fail(space, f"{node.name}: Reshape other than dropping unit dims after channels")
            return
        spec = numpy_helper.to_array(self.inits[target])
        if spec[-1] == size:
            self._group(space).members.append(("reshape", node, None))
        elif spec[-1] != -1:
            self._fail(space, f"{node.name}: Reshape target {spec.tolist()} is not understood")
            return
        self._carry(node.output[0], space, -1)

    def _reduce(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Reductions over other axes (e.g. global pooling as ReduceMean) keep the channels."""
        rank = len(self.shapes.get(tensor, []))
        axes = attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1] in self.inits:
            axes = numpy_helper.to_array(self.inits[node.input[1]]).tolist()
        if not rank or axes is None:
            self._fail(space, f"{node.name}: {node.op_type} over unknown axes")
            return
        axes = sorted(a % rank for a in axes)
        channel = axis % rank
        if channel in axes:
            self._fail(space, f"{node.name}: {node.op_type} reduces the channel axis")
            return
        keepdims = attr(node, "keepdims", 1)
        new_rank = rank if keepdims else rank - len(axes)
        new_axis = channel if keepdims else channel - sum(1 for a in axes if a < channel)
        self._carry(node.output[0], space, -1 if new_axis == new_rank - 1 else new_axis)

    def _binary(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        for i, other in enumerate(node.input[:2]):
            if other == tensor:
                continue
            if other in self.inits:
                value = numpy_helper.to_array(self.inits[other])
                if value.size == 1:
                    continue
                if self._shared(node, i):
                    self._fail(space, f"{node.name}: constant {other!r} shared with other nodes")
                    continue
                if axis < 0:  # counted from the end, like broadcasting: no rank needed
                    pos = axis
                else:
                    out_rank = len(self.shapes.get(node.output[0], [])) or None
                    if out_rank is None:
                        self._fail(space, f"{node.name}: unknown rank for a per-channel constant")
                        continue
                    pos = axis - (out_rank - value.ndim)
                size = self._group(space).size
                if value.ndim < (-pos if pos < 0 else pos + 1) or value.shape[pos] not in (1, size):
                    self._fail(space, f"{node.name}: constant {other!r} does not broadcast")
                    continue
                if value.shape[pos] == size:
                    self._group(space).members.append(("const", node, (i, pos)))
            elif other in self.tensor_space:
                if self.axis[other] != axis:
                    self._fail(space, f"{node.name}: joins channels on different axes")
                space = self._merge(self.tensor_space[other], space, node.name or node.op_type)
            else:
                self._fail(
                    space, f"{node.name or node.op_type}: joins a tensor of unknown channels"
                )
        self._carry(node.output[0], space, axis)

    def _flatten(self, node: onnx.NodeProto, tensor: str, space: int) -> None:
        shape = self.shapes.get(tensor)
        users = self.consumers.get(node.output[0], [])
        if shape is None or len(shape) < 2:
            self._fail(space, f"{node.name}: Flatten of a tensor with unknown shape")
            return
        spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        if len(users) != 1 or users[0].op_type not in ("Gemm", "MatMul"):
            self._fail(space, f"{node.name}: Flatten not followed by a single Gemm/MatMul")
            return
        gemm = users[0]
        if self.weight(gemm, 1) is None or self._shared(gemm, 1):
            self._fail(space, f"{gemm.name}: weight is not a private initializer")
            return
        self._group(space).members.append(("flatten_in", gemm, spatial))
        if node.output[0] in self.outputs:
            self._fail(space, "Flatten output is a graph output")


def load_float(src: Path) -> onnx.ModelProto:
    """The model with Constant-node weights (Paddle, spox exports) as initializers."""
    model = load_model(src)
    constants_to_initializers(model)
    return model
