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
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.graph import constants_to_initializers
from onnxopt.modelio import load_model
from onnxopt.steps.prune.groups import Group, attr, norm_axis
from onnxopt.steps.prune.layout import LayoutRules

__all__ = ["ChannelAnalysis", "Group", "attr", "load_float", "producer_size"]

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
#: reductions that lose nothing when a channel of zeros is dropped from the reduced axes
SUM_REDUCE_OPS = {"ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin"} | SUM_REDUCE_OPS
#: ops whose rule applies when a group reaches their first (data) input: the method to call
FIRST_INPUT_RULES = {
    "BatchNormalization": "_norm",
    "InstanceNormalization": "_norm",
    "Conv": "_conv",
    "ConvTranspose": "_conv_transpose",
    "MatMul": "_dense",
    "Gemm": "_dense",
    "LSTM": "_recurrent",
    "GRU": "_recurrent",
    "RNN": "_recurrent",
    "Reshape": "_reshape",
    "Flatten": "_flatten",
    "Shape": "_shape",
    "Softmax": "_softmax",
    "LogSoftmax": "_softmax",
    "Pad": "_pad",
    "Transpose": "_transpose",
    "Squeeze": "_squeeze",
    "Unsqueeze": "_unsqueeze",
    "Slice": "_slice",
    "Split": "_split",
    "Resize": "_resize",
    "Upsample": "_resize",
}


def producer_size(
    node: onnx.NodeProto, weight: Callable[[onnx.NodeProto, int], np.ndarray | None]
) -> int | None:
    """Output channels of a prunable producer (Conv, MatMul, Gemm with a float weight), or None."""
    w = weight(node, 1)
    if w is None or w.dtype.kind != "f":
        return None
    if node.op_type == "Conv" and w.ndim >= 3 and attr(node, "group", 1) == 1:
        return int(w.shape[0])
    if node.op_type == "ConvTranspose" and w.ndim >= 3 and attr(node, "group", 1) == 1:
        return int(w.shape[1])
    if node.op_type == "MatMul" and w.ndim == 2:
        return int(w.shape[1])
    if node.op_type == "Gemm" and w.ndim == 2 and not attr(node, "transA", 0):
        return int(w.shape[0] if attr(node, "transB", 0) else w.shape[1])
    return None


class ChannelAnalysis(LayoutRules):
    """Dependency analysis of a float model's channels."""

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
                conv = node.op_type in ("Conv", "ConvTranspose")
                if conv and len(node.input) > 2 and self._shared(node, 2):
                    self._fail(space, f"{node.name}: bias shared with other nodes")
                self._carry(node.output[0], space, 1 if conv else -1)
        for tensor, space in self.tensor_space.items():
            if tensor in self.outputs:
                self._fail(space, f"reaches the graph output {tensor!r} (outputs keep their shape)")
        return {self.uf.find(k): g for k, g in self.groups.items()}

    def _consume(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        op = node.op_type
        first = node.input[0] == tensor
        if op in PASS_OPS or (first and (op in POOL_OPS or op == "LpNormalization")):
            self._carry(node.output[0], space, axis)
        elif op in BINARY_OPS or (first and op in BIAS_ACTIVATION_OPS | {"PRelu"}):
            self._binary(node, tensor, space, axis)
        elif op == "Concat":
            self._concat(node, tensor, space, axis)
        elif first and op in REDUCE_OPS:
            self._reduce(node, tensor, space, axis)
        elif first and op in FIRST_INPUT_RULES:
            getattr(self, FIRST_INPUT_RULES[op])(node, tensor, space, axis)
        else:
            self._fail(space, f"{self.name(node)}: {op} is not understood for channel pruning")

    def _norm(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """BatchNormalization / InstanceNormalization: per-channel parameters are sliced."""
        indices = (1, 2, 3, 4) if node.op_type == "BatchNormalization" else (1, 2)
        if axis != 1:
            self._fail(space, f"{self.name(node)}: {node.op_type} of channels on axis {axis}")
        elif not all(self._private(node, i) for i in indices):
            self._fail(space, f"{self.name(node)}: {node.op_type} parameters not prunable")
        else:
            self._group(space).members.append(("params", node, indices))
            self._carry(node.output[0], space, axis)

    def _softmax(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        rank = self._ranked(node, tensor, space)
        if rank is not None and attr(node, "axis", -1) % rank == axis % rank:
            self._fail(space, f"{self.name(node)}: {node.op_type} over the channel axis")
        elif rank is not None:
            self._carry(node.output[0], space, axis)

    def _conv(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        w = self.weight(node, 1)
        groups = attr(node, "group", 1)
        if axis != 1:
            self._fail(space, f"{self.name(node)}: Conv reads channels on axis {axis}")
        elif w is None or not self._private(node, 1):
            self._fail(space, f"{self.name(node)}: Conv weight is not a private initializer")
        elif groups == 1:
            self._group(space).members.append(("conv_in", node, None))
        elif groups == self._group(space).size and w.shape[1] == 1:  # depthwise
            self._group(space).members.append(("dw", node, None))
            self._carry(node.output[0], space, axis)
        else:
            self._fail(space, f"{self.name(node)}: grouped Conv (group={groups})")

    def _conv_transpose(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """A ConvTranspose reads its input channels on its weight's first axis."""
        if axis != 1 or attr(node, "group", 1) != 1 or not self._private(node, 1):
            self._fail(space, f"{self.name(node)}: ConvTranspose (grouped, or a shared weight)")
        else:
            self._group(space).members.append(("convT_in", node, None))

    def _dense(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        if axis != -1:
            self._fail(space, f"{self.name(node)}: {node.op_type} reads channels on axis {axis}")
        elif not self._private(node, 1) or (node.op_type == "Gemm" and attr(node, "transA", 0)):
            self._fail(
                space, f"{self.name(node)}: {node.op_type} weight is not a private initializer"
            )
        else:
            self._group(space).members.append(("mm_in", node, None))

    def _recurrent(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """An LSTM/GRU/RNN reads its input features on the last axis of W ([dirs, gates, in])."""
        if axis != -1 or not self._private(node, 1):
            self._fail(space, f"{self.name(node)}: {node.op_type} input (a shared W, or not last)")
        elif len(node.input) > 3 and node.input[3] and not self._private(node, 3):
            self._fail(space, f"{self.name(node)}: {node.op_type} bias is not private")
        else:
            self._group(space).members.append(("rnn_in", node, None))

    def _shape(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Shape read only for other dims (a batch size for a Reshape) leaves the channels."""
        rank = self._ranked(node, tensor, space)
        if rank is None:
            return
        channel = axis % rank
        for user in self.consumers.get(node.output[0], []):
            picked = None
            if user.op_type == "Gather" and user.input[0] == node.output[0]:
                picked = {i % rank for i in self.constant(user, 1, "indices") or [channel]}
            elif user.op_type == "Slice" and user.input[0] == node.output[0]:
                starts, ends = self.constant(user, 1, "starts"), self.constant(user, 2, "ends")
                if starts and ends and len(starts) == 1:
                    picked = set(range(rank)[starts[0] : ends[0]])
            if picked is None or channel in picked:
                self._fail(space, f"{self.name(node)}: the channel count of {tensor!r} is read")
                return
        if node.output[0] in self.outputs:
            self._fail(space, f"{self.name(node)}: the shape of {tensor!r} is a graph output")

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
        """[..., C, 1, 1] -> [..., C] (dropping unit dims after the channels), or flattening
        [N, C, *S] / [N, *S, C] into one dense layer's input (see :meth:`_into_dense`)."""
        shape_in, shape_out = self.shapes.get(tensor), self.shapes.get(node.output[0])
        size = self._group(space).size
        if shape_in is None or shape_out is None or not self._private(node, 1):
            self._fail(space, f"{self.name(node)}: Reshape to a shape computed at run time")
            return
        spec = numpy_helper.to_array(self.inits[node.input[1]])
        channel = axis % len(shape_in)
        if len(shape_out) == 2 and len(shape_in) > 2 and shape_out[0] == shape_in[0]:
            if self._into_dense(node, tensor, space, axis) and spec[-1] != -1:
                self._group(space).members.append(("reshape_flat", node, size))
            return
        ok = (
            shape_in[channel] == size
            and int(np.prod(shape_in[channel + 1 :])) == 1
            and shape_out[-1] == size
        )
        if not ok:
            self._fail(
                space,
                f"{self.name(node)}: Reshape neither drops unit dims after the channels nor "
                "flattens them into a dense layer",
            )
            return
        if spec[-1] == size:
            self._group(space).members.append(("reshape", node, None))
        elif spec[-1] != -1:
            self._fail(
                space, f"{self.name(node)}: Reshape target {spec.tolist()} is not understood"
            )
            return
        self._carry(node.output[0], space, -1)

    def _reduce(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Reductions over other axes (e.g. global pooling as ReduceMean) keep the channels;
        a sum-like reduction over the channel axis (ReduceSum, ReduceL2: an L2 norm) ends the
        group there (a removed channel of zeros adds nothing to it); others cannot lose one."""
        rank = len(self.shapes.get(tensor, []))
        axes = self.constant(node, 1, "axes")
        if not rank or axes is None:
            noop = attr(node, "noop_with_empty_axes", 0)
            if not rank or noop:
                self._fail(space, f"{self.name(node)}: {node.op_type} over unknown axes")
                return
            axes = list(range(rank))  # no axes: every axis
        axes = sorted(a % rank for a in axes)
        channel = axis % rank
        if channel in axes:
            if node.op_type not in SUM_REDUCE_OPS:
                self._fail(space, f"{self.name(node)}: {node.op_type} reduces the channel axis")
            return
        keepdims = attr(node, "keepdims", 1)
        new_rank = rank if keepdims else rank - len(axes)
        new_axis = channel if keepdims else channel - sum(1 for a in axes if a < channel)
        self._carry(node.output[0], space, norm_axis(new_axis, new_rank))

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
            elif not self._broadcast(node, other, axis):
                self._fail(
                    space, f"{node.name or node.op_type}: joins a tensor of unknown channels"
                )
        self._carry(node.output[0], space, axis)

    def _broadcast(self, node: onnx.NodeProto, other: str, axis: int) -> bool:
        """``other`` holds one value along the channel axis (a norm over the channels, a
        per-sample scale), so it broadcasts over whichever channels remain."""
        shape, out_rank = self.shapes.get(other), self.rank(node.output[0])
        if shape is None or out_rank is None:
            return False
        from_end = axis - out_rank if axis >= 0 else axis
        return len(shape) < -from_end or shape[from_end] == 1

    def _flatten(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        if attr(node, "axis", 1) != 1:
            self._fail(space, f"{self.name(node)}: Flatten at axis {attr(node, 'axis', 1)}")
        else:
            self._into_dense(node, tensor, space, axis)

    def _into_dense(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> bool:
        """``node`` flattens [N, C, *S] (channel-major rows) or [N, *S, C] (channel-minor, as
        Keras and TF exports do after a Transpose) into a single Gemm/MatMul's input: its
        weight's rows are sliced in blocks of prod(S), or every C-th row."""
        shape = self.shapes.get(tensor)
        users = self.consumers.get(node.output[0], [])
        if shape is None or len(shape) < 2:
            self._fail(space, f"{self.name(node)}: flattens a tensor of unknown shape")
            return False
        channel = axis % len(shape)
        if channel not in (1, len(shape) - 1):
            self._fail(space, f"{self.name(node)}: flattens channels on axis {channel}")
            return False
        spatial = int(np.prod(shape[1:])) // self._group(space).size
        kind = "flatten_in" if channel == 1 else "flatten_last_in"
        if len(users) != 1 or users[0].op_type not in ("Gemm", "MatMul"):
            self._fail(space, f"{self.name(node)}: flattened into other than one Gemm/MatMul")
            return False
        dense = users[0]
        if dense.input[0] != node.output[0] or not self._private(dense, 1):
            self._fail(space, f"{self.name(dense)}: weight is not a private initializer")
            return False
        if node.output[0] in self.outputs:
            self._fail(space, f"{self.name(node)}: the flattened channels are a graph output")
            return False
        self._group(space).members.append((kind, dense, spatial))
        return True


def load_float(src: Path) -> onnx.ModelProto:
    """The model with Constant-node weights (Paddle, spox exports) as initializers."""
    model = load_model(src)
    constants_to_initializers(model)
    return model
