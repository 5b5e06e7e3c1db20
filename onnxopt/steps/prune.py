"""Pruning on the ONNX graph itself: structured channel pruning and unstructured magnitude.

Channel pruning finds *groups*: sets of channels that must be removed together. A group
starts at every Conv, Gemm or MatMul whose weight is an initializer (its output channels),
follows the tensor through ops that keep channels aligned (activations, BatchNormalization,
pooling, element-wise ops with per-channel constants, depthwise convolutions), and ends at
the layers that read those channels (the next Conv's input channels, the next MatMul/Gemm
rows, a Flatten into a Gemm). Element-wise ops that join two tensors (residual Add) merge
their groups. Anything else that touches a group (Reshape, Concat, Split, a graph output,
weights shared between nodes, grouped convolutions) makes that group unprunable, reported
with the reason, so the graph is never broken.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.config import PruneStep
from onnxopt.errors import StepError
from onnxopt.modelio import constants_to_initializers, load_model, save_model, summary
from onnxopt.steps.base import StepContext, StepResult

log = logging.getLogger("onnxopt")

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
}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
BINARY_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min"}
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


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


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

    def _weight(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
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

    def producer_size(self, node: onnx.NodeProto) -> int | None:
        """Output channels of a prunable producer, or None."""
        w = self._weight(node, 1)
        if w is None or w.dtype.kind != "f":
            return None
        if node.op_type == "Conv" and w.ndim >= 3 and _attr(node, "group", 1) == 1:
            return int(w.shape[0])
        if node.op_type == "MatMul" and w.ndim == 2:
            return int(w.shape[1])
        if node.op_type == "Gemm" and w.ndim == 2 and not _attr(node, "transA", 0):
            return int(w.shape[0] if _attr(node, "transB", 0) else w.shape[1])
        return None

    def run(self) -> dict[int, Group]:
        """Find every group, in one forward pass over the (topologically sorted) graph."""
        for node in self.graph.node:
            carried = [(i, t) for i, t in enumerate(node.input) if t in self.tensor_space]
            for _, tensor in carried:
                self._consume(node, tensor, self.tensor_space[tensor], self.axis[tensor])
            size = self.producer_size(node)
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
        elif op in BINARY_OPS:
            self._binary(node, tensor, space, axis)
        elif op == "Conv" and node.input[0] == tensor and axis == 1:
            w = self._weight(node, 1)
            groups = _attr(node, "group", 1)
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
            w = self._weight(node, 1)
            if w is None or self._shared(node, 1) or (op == "Gemm" and _attr(node, "transA", 0)):
                self._fail(space, f"{node.name}: {op} weight is not a private initializer")
            else:
                self._group(space).members.append(("mm_in", node, None))
        elif op == "Flatten" and axis == 1 and _attr(node, "axis", 1) == 1:
            self._flatten(node, tensor, space)
        else:
            self._fail(space, f"{node.name or op}: {op} is not understood for channel pruning")

    def _concat(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        """Concat on the channel axis read directly by Conv/MatMul/Gemm: channel offsets."""
        rank = len(self.shapes.get(tensor, []))
        cat_axis = _attr(node, "axis", 0)
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
            conv_ok = user.op_type == "Conv" and axis % rank == 1 and _attr(user, "group", 1) == 1
            mm_ok = user.op_type in ("MatMul", "Gemm") and axis % rank == rank - 1
            if not (conv_ok or mm_ok) or user.input[0] != out or self._weight(user, 1) is None:
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
        axes = _attr(node, "axes", None)
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
        keepdims = _attr(node, "keepdims", 1)
        new_rank = rank if keepdims else rank - len(axes)
        new_axis = channel if keepdims else channel - sum(1 for a in axes if a < channel)
        self._carry(node.output[0], space, -1 if new_axis == new_rank - 1 else new_axis)

    def _binary(self, node: onnx.NodeProto, tensor: str, space: int, axis: int) -> None:
        for i, other in enumerate(node.input[:2]):
            if other == tensor:
                continue
            if other in self.inits:
                value = numpy_helper.to_array(self.inits[other])
                out_rank = len(self.shapes.get(node.output[0], [])) or None
                if value.size == 1:
                    continue
                if self._shared(node, i):
                    self._fail(space, f"{node.name}: constant {other!r} shared with other nodes")
                    continue
                if out_rank is None:
                    self._fail(space, f"{node.name}: unknown rank for a per-channel constant")
                    continue
                pos = axis if axis < 0 else axis - (out_rank - value.ndim)
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
        if self._weight(gemm, 1) is None or self._shared(gemm, 1):
            self._fail(space, f"{gemm.name}: weight is not a private initializer")
            return
        self._group(space).members.append(("flatten_in", gemm, spatial))
        if node.output[0] in self.outputs:
            self._fail(space, "Flatten output is a graph output")


def _importance(group: Group, analysis: ChannelAnalysis, criterion: str) -> np.ndarray:
    total = np.zeros(group.size)
    for node in group.producers:
        w = analysis._weight(node, 1)
        assert w is not None
        if node.op_type == "Conv":
            per = w.reshape(w.shape[0], -1)
        elif node.op_type == "Gemm" and _attr(node, "transB", 0):
            per = w
        else:
            per = w.T
        norms = np.abs(per).sum(axis=1) if criterion == "l1" else np.sqrt((per**2).sum(axis=1))
        total += norms
    return total


def _set(analysis: ChannelAnalysis, name: str, value: np.ndarray) -> None:
    tensor = analysis.inits[name]
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def _input_axis(node: onnx.NodeProto) -> int:
    """Axis of a consumer's weight that indexes its input channels."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return 1
    return 0


def _apply(
    group: Group, keep: np.ndarray, analysis: ChannelAnalysis, pending: dict[str, np.ndarray]
) -> None:
    a = analysis
    for node in group.producers:
        w = a._weight(node, 1)
        assert w is not None
        if node.op_type == "Conv":
            _set(a, node.input[1], w[keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                _set(a, node.input[2], numpy_helper.to_array(a.inits[node.input[2]])[keep])
        elif node.op_type == "MatMul":
            _set(a, node.input[1], w[:, keep])
        else:  # Gemm
            trans_b = _attr(node, "transB", 0)
            _set(a, node.input[1], w[keep] if trans_b else w[:, keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                c = numpy_helper.to_array(a.inits[node.input[2]])
                if c.ndim >= 1 and c.shape[-1] == group.size:
                    _set(a, node.input[2], c[..., keep])
    for kind, node, extra in group.members:
        if kind == "bn":
            for i in (1, 2, 3, 4):
                _set(a, node.input[i], numpy_helper.to_array(a.inits[node.input[i]])[keep])
        elif kind == "const":
            index, pos = extra
            value = numpy_helper.to_array(a.inits[node.input[index]])
            _set(a, node.input[index], np.take(value, keep, axis=pos))
        elif kind == "conv_in":
            w = a._weight(node, 1)
            assert w is not None
            _set(a, node.input[1], w[:, keep])
        elif kind == "dw":
            w = a._weight(node, 1)
            assert w is not None
            _set(a, node.input[1], w[keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                _set(a, node.input[2], numpy_helper.to_array(a.inits[node.input[2]])[keep])
            for attr in node.attribute:
                if attr.name == "group":
                    attr.i = len(keep)
        elif kind == "mm_in":
            _keep_weight_rows(a, node, keep)
        elif kind == "in_at":
            # A Concat's consumer: several groups slice the same weight; apply once, later.
            name = node.input[1]
            w = a._weight(node, 1)
            assert w is not None
            mask = pending.setdefault(name, np.ones(w.shape[_input_axis(node)], dtype=bool))
            removed = np.setdiff1d(np.arange(group.size), keep)
            mask[int(extra) + removed] = False
        elif kind == "reshape":
            spec = numpy_helper.to_array(a.inits[node.input[1]]).copy()
            spec[-1] = len(keep)
            _set(a, node.input[1], spec)
        elif kind == "flatten_in":
            spatial = int(extra)
            rows = (keep[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
            _keep_weight_rows(a, node, rows)


def _keep_weight_rows(a: ChannelAnalysis, node: onnx.NodeProto, rows: np.ndarray) -> None:
    """Keep the input rows ``rows`` of a MatMul/Gemm weight (its columns under transB)."""
    w = a._weight(node, 1)
    assert w is not None
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        _set(a, node.input[1], w[:, rows])
    else:
        _set(a, node.input[1], w[rows])


def _keep_count(size: int, ratio: float, min_channels: int, round_to: int) -> int:
    keep = size * (1.0 - ratio)
    keep = int(np.ceil(keep / round_to) * round_to) if round_to > 1 else int(round(keep))
    return max(min(size, max(keep, min_channels, 1)), 1)


def _group_ratio(names: list[str], cfg: PruneStep, override: float | None) -> float:
    import fnmatch

    for pattern, ratio in cfg.layer_ratios.items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return ratio
    if override is not None:
        return override
    assert isinstance(cfg.ratio, float | int)
    return float(cfg.ratio)


def activation_stats(
    model: onnx.ModelProto, names: list[str], ctx: StepContext
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, mean |x|) of tensors on the verification inputs.

    Channels are axis 1 for rank-4 tensors (NCHW) and the last axis otherwise.
    """
    from onnxopt.runtime import run_exposing

    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    del probe_model.graph.value_info[:]
    (values,) = run_exposing(probe_model, names, [ctx.inputs], target=ctx.target, where="stats")
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, value in values.items():
        axis = 1 if value.ndim == 4 else value.ndim - 1
        others = tuple(i for i in range(value.ndim) if i != axis)
        stats[name] = (value.mean(axis=others), np.abs(value).mean(axis=others))
    return stats


def _activation_importance(
    group: Group, stats: dict[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Mean |activation| of each channel as the next layers read it (after activations)."""
    total = np.zeros(group.size)
    found = False
    for kind, node, extra in group.members:
        if kind not in ("conv_in", "mm_in", "in_at", "flatten_in") or node.input[0] not in stats:
            continue
        magnitude = stats[node.input[0]][1]
        if kind == "flatten_in":
            total += magnitude.reshape(group.size, int(extra)).mean(axis=1)
        elif kind == "in_at":
            total += magnitude[int(extra) : int(extra) + group.size]
        else:
            total += magnitude
        found = True
    if not found:  # nobody reads the channels through a weight: use the producers' outputs
        for producer in group.producers:
            if producer.output[0] in stats:
                total += stats[producer.output[0]][1]
    return total


def _bias(a: ChannelAnalysis, node: onnx.NodeProto, size: int) -> str | None:
    """Name of a private bias initializer of a Conv/Gemm consumer (created when absent)."""
    if len(node.input) > 2 and node.input[2]:
        name = node.input[2]
        if name not in a.inits or a.uses.get(name, 0) > 1:
            return None
        return name
    name = f"{node.name or node.op_type}_compensation_bias"
    tensor = numpy_helper.from_array(np.zeros(size, np.float32), name)
    a.graph.initializer.append(tensor)
    a.inits[name] = a.graph.initializer[-1]
    while len(node.input) < 2:
        node.input.append("")
    node.input.append(name)
    return name


def _compensate(
    group: Group,
    keep: np.ndarray,
    a: ChannelAnalysis,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
) -> list[str]:
    """Add the removed channels' mean contribution to each consumer's bias."""
    removed = np.setdiff1d(np.arange(group.size), keep)
    done = []
    for kind, node, extra in group.members:
        if kind not in ("conv_in", "mm_in", "in_at", "flatten_in"):
            continue
        if node.op_type == "MatMul" or node.input[0] not in stats:
            continue
        mean = stats[node.input[0]][0]
        w = a._weight(node, 1)
        assert w is not None
        if kind == "flatten_in":
            spatial = int(extra)
            idx = (removed[:, None] * spatial + np.arange(spatial)[None, :]).ravel()
        elif kind == "in_at":
            idx = int(extra) + removed
        else:
            idx = removed
        if node.op_type == "Conv":
            delta = np.einsum("mckl,c->m", w[:, idx], mean[idx])
        elif _attr(node, "transB", 0):
            delta = w[:, idx] @ mean[idx]
        else:
            delta = mean[idx] @ w[idx]
        name = _bias(a, node, delta.shape[0])
        if name is None:
            continue
        bias = numpy_helper.to_array(a.inits[name]).astype(np.float32)
        _set(a, name, (bias + delta).astype(np.float32))
        done.append(node.name or node.op_type)
    return done


def channel_prune(
    model: onnx.ModelProto, cfg: PruneStep, ctx: StepContext, ratio_override: float | None = None
) -> dict[str, Any]:
    """Prune channels of ``model`` in place; return the per-group report."""
    from onnxopt.inspection import static_shapes

    shapes = static_shapes(model, ctx.dims)
    analysis = ChannelAnalysis(model, shapes)
    groups = analysis.run()
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cfg.criterion == "activation" or cfg.compensate:
        wanted = {p.output[0] for g in groups.values() for p in g.producers}
        wanted |= {n.input[0] for g in groups.values() for _, n, _ in g.members}
        stats = activation_stats(model, sorted(wanted), ctx)
    report_groups = []
    pruned_any = False
    pending: dict[str, np.ndarray] = {}
    for group in groups.values():
        names = [p.name or p.op_type for p in group.producers]
        entry: dict[str, Any] = {"producers": names, "channels_before": group.size}
        ignored = [n for n in names if n in cfg.ignore]
        if ignored:
            group.problems.append(f"ignored by config: {', '.join(ignored)}")
        if group.problems:
            entry.update(prunable=False, reasons=group.problems, channels_after=group.size)
            report_groups.append(entry)
            continue
        if cfg.criterion == "activation":
            scores = _activation_importance(group, stats)
        else:
            scores = _importance(group, analysis, cfg.criterion)
        ratio = _group_ratio(names, cfg, ratio_override)
        count = _keep_count(group.size, ratio, cfg.min_channels, cfg.round_to)
        keep = np.sort(np.argsort(-scores, kind="stable")[:count])
        entry.update(
            prunable=True,
            channels_after=int(count),
            importance_range=[float(scores.min()), float(scores.max())],
        )
        if count < group.size:
            if cfg.compensate:
                entry["compensated"] = _compensate(group, keep, analysis, stats)
            _apply(group, keep, analysis, pending)
            pruned_any = True
        report_groups.append(entry)
    consumers = {n.input[1]: n for n in model.graph.node if len(n.input) > 1}
    for name, mask in pending.items():
        node = consumers[name]
        w = analysis._weight(node, 1)
        assert w is not None
        _set(analysis, name, np.compress(mask, w, axis=_input_axis(node)))
    del model.graph.value_info[:]  # intermediate shapes changed; let tools re-infer them
    return {"groups": report_groups, "pruned": pruned_any}


def _weights_of(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    inits = {t.name: t for t in model.graph.initializer}
    out, seen = [], set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1:
            t = inits.get(node.input[1])
            if t is not None and t.name not in seen and len(t.dims) >= 2:
                out.append(t)
                seen.add(t.name)
    return out


def _n_m_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, -1)
    size = moved.shape[-1]
    pad = (-size) % m
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)], constant_values=np.inf)
    blocks = padded.reshape(*padded.shape[:-1], -1, m)
    order = np.argsort(blocks, axis=-1, kind="stable")
    mask = np.ones_like(blocks, dtype=bool)
    np.put_along_axis(mask, order[..., : m - n], False, axis=-1)
    mask = mask.reshape(*padded.shape[:-1], -1)[..., :size]
    return np.moveaxis(mask, -1, axis)


Reader = Callable[[onnx.TensorProto], np.ndarray]


def _global_threshold(
    weights: list[onnx.TensorProto], ratio: float, read: Reader = numpy_helper.to_array
) -> float:
    """The k-th smallest |w| over all weights (k = ratio x count), without concatenating them.

    A sample brackets the k-th value; one exact pass counts the values below the bracket and
    keeps only those inside it (a fraction of a percent), which are then partitioned. Peak
    memory is one tensor at a time instead of copies of every weight (models over 2 GB).
    """
    sizes = [int(np.prod(t.dims)) for t in weights]
    total = sum(sizes)
    k = int(ratio * total)
    if k <= 0:
        return -np.inf
    rng = np.random.default_rng(0)
    sample = np.concatenate(
        [
            np.abs(
                w.ravel()[
                    rng.integers(0, w.size, size=min(w.size, 1 + 2_000_000 * w.size // total))
                ]
            )
            for w in (read(t) for t in weights)
        ]
    )
    q = k / total
    lo, hi = np.quantile(sample, [max(q - 0.003, 0.0), min(q + 0.003, 1.0)])
    below, inside = 0, []
    for t in weights:
        a = np.abs(read(t).ravel())
        below += int(np.count_nonzero(a < lo))
        inside.append(a[(a >= lo) & (a <= hi)])
    middle = np.concatenate(inside)
    if below < k <= below + middle.size:
        return float(np.partition(middle, k - below - 1)[k - below - 1])
    everything = np.concatenate(  # the sample missed (never seen in practice): exact, dense
        [np.abs(read(t)).ravel() for t in weights]
    )
    return float(np.partition(everything, k - 1)[k - 1])


def magnitude_prune(
    model: onnx.ModelProto,
    cfg: PruneStep,
    ratio_override: float | None = None,
    *,
    read: Reader = numpy_helper.to_array,
    write: Callable[[onnx.TensorProto, np.ndarray], None] | None = None,
    weights: list[onnx.TensorProto] | None = None,
) -> dict[str, Any]:
    """Zero the smallest weights, one tensor at a time; return per-layer sparsity.

    By default the tensors are read from and written back into ``model``; ``read`` and
    ``write`` let weights held in external data stream from one file to another instead.
    """
    ratio = ratio_override if ratio_override is not None else float(cfg.ratio)
    weights = _weights_of(model) if weights is None else weights
    if not weights:
        raise StepError("magnitude pruning found no Conv/Gemm/MatMul weight initializers")
    threshold = (
        _global_threshold(weights, ratio, read)
        if cfg.scope == "global" and not cfg.pattern
        else None
    )
    layers = []
    total = zeros = 0
    for t in weights:
        w = np.array(read(t))  # a writable copy
        if cfg.pattern:
            n, m = (int(v) for v in cfg.pattern.split(":"))
            keep = _n_m_mask(w, n, m, axis=1 if w.ndim > 2 else 0)
        else:
            if threshold is None:  # per layer
                k = int(ratio * w.size)
                cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1] if k > 0 else -np.inf
            else:
                cut = threshold
            keep = np.abs(w) > cut
        w[~keep] = 0
        if write is None:
            t.CopyFrom(numpy_helper.from_array(w, t.name))
        else:
            write(t, w)
        pruned = int(keep.size - np.count_nonzero(keep))
        layers.append({"weight": t.name, "sparsity": pruned / keep.size})
        total += keep.size
        zeros += pruned
        del w, keep
    return {"layers": layers, "sparsity": zeros / total}


def _cosine_without_compensation(
    src: Path, cfg: PruneStep, ctx: StepContext, ratio: float | None
) -> float:
    """Fidelity of the same pruning without compensation, for the report."""
    import tempfile

    from onnxopt.verify import resolve_tolerance

    plain = _load(src)
    channel_prune(plain, cfg.model_copy(update={"compensate": False}), ctx, ratio)
    with tempfile.TemporaryDirectory() as tmp:
        probe = save_model(plain, Path(tmp) / "plain.onnx")
        tol = resolve_tolerance(cfg)
        return ctx.verify(probe, ctx.reference(src), tol).min_cosine


def _search_ratio(
    src: Path, model: onnx.ModelProto, cfg: PruneStep, ctx: StepContext
) -> tuple[float, list[dict[str, Any]]]:
    """Bisect the largest ratio whose pruned model stays within the budget."""
    import tempfile

    from onnxopt.verify import resolve_tolerance

    reference = ctx.reference(src)
    tol = resolve_tolerance(cfg)
    lo, hi = 0.0, cfg.auto_max_ratio
    trail: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        for step in range(cfg.auto_steps + 1):
            ratio = hi if step == 0 else (lo + hi) / 2
            trial = onnx.ModelProto()
            trial.CopyFrom(model)
            try:
                if cfg.method == "channel":
                    if not channel_prune(trial, cfg, ctx, ratio)["pruned"]:
                        trail.append({"ratio": ratio, "passed": False, "note": "nothing pruned"})
                        hi = ratio
                        continue
                else:
                    magnitude_prune(trial, cfg, ratio)
                save_model(trial, probe)
                verification = ctx.verify(probe, reference, tol)
            except StepError as err:
                trail.append({"ratio": ratio, "passed": False, "note": err.message})
                hi = ratio
                continue
            trail.append(
                {"ratio": ratio, "passed": verification.passed, "cosine": verification.min_cosine}
            )
            if verification.passed:
                lo = ratio
                if step == 0:
                    break
            else:
                hi = ratio
    return lo, trail


def magnitude_prune_streaming(src: Path, dst: Path, cfg: PruneStep) -> dict[str, Any]:
    """Magnitude pruning of a model whose weights are external data, one tensor in memory.

    The graph is loaded without its weights; each weight is read from the source .data
    file, pruned and appended to ``dst``'s own .data file, and every other external tensor
    is copied across, so a model over 2 GB never has two copies of its weights in memory.
    """
    from onnxopt.modelio import ExternalWriter, iter_tensors, read_tensor

    model = load_model(src, load_weights=False)
    constants_to_initializers(model)
    weights = _weights_of(model)
    with ExternalWriter(dst.parent, dst.name + ".data") as out:

        def write(tensor: onnx.TensorProto, array: np.ndarray) -> None:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                out.place(tensor, array.tobytes())
            else:  # an inline weight (small): kept in the proto
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

        def read(tensor: onnx.TensorProto) -> np.ndarray:
            return read_tensor(tensor, src.parent)

        facts = magnitude_prune(model, cfg, read=read, write=write, weights=weights)
        written = {t.name for t in weights}
        for tensor in iter_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in written:
                out.copy(tensor, src.parent)
    onnx.save_model(model, str(dst))
    return facts


def _load(src: Path) -> onnx.ModelProto:
    """The model with Constant-node weights (Paddle, spox exports) as initializers."""
    model = load_model(src)
    constants_to_initializers(model)
    return model


def run(src: Path | None, dst: Path, cfg: PruneStep, ctx: StepContext) -> StepResult:
    """Prune ``src`` into ``dst``."""
    from onnxopt.inspection import compute_macs
    from onnxopt.modelio import model_size

    assert src is not None
    from onnxopt.modelio import external_data_files

    # magnitude pruning of external weights streams them file to file (models over 2 GB)
    streaming = cfg.method == "magnitude" and cfg.ratio != "auto" and bool(external_data_files(src))
    model = load_model(src, load_weights=False) if streaming else _load(src)
    before = summary(model)
    macs_before = compute_macs(load_model(src, load_weights=False), ctx.dims, src)["macs"]
    warnings: list[str] = []
    search: list[dict[str, Any]] | None = None
    ratio: float | None = None
    if cfg.ratio == "auto":
        ratio, search = _search_ratio(src, model, cfg, ctx)
        if ratio <= 0.0:
            reason = (
                f"ratio auto: no ratio above 0 keeps the model within the budget (searched up "
                f"to {cfg.auto_max_ratio} in {cfg.auto_steps} steps)"
            )
            return StepResult(
                report={
                    "method": cfg.method,
                    "auto": {"ratio": 0.0, "search": search},
                    "reason": reason,
                },  # fmt: skip
                warnings=[
                    f"{reason}; keeping the parent. Widen the budget or prune fewer layers "
                    "(ignore, layer_ratios)"
                ],
                keep_parent=True,
            )
    if cfg.method == "channel":
        facts = channel_prune(model, cfg, ctx, ratio)
        if not facts["pruned"]:
            reasons = [g.get("reasons") for g in facts["groups"] if not g["prunable"]]
            first = "; ".join(str(r) for r in (reasons[0] or [])[:3]) if reasons else ""
            raise StepError(
                f"channel pruning removed nothing: {len(facts['groups'])} group(s) found, "
                f"none prunable at ratio {ratio if ratio is not None else cfg.ratio}",
                hint=f"first reasons: {first}" if first else "raise the ratio",
            )
    else:
        if streaming:
            del model
            facts = magnitude_prune_streaming(src, dst, cfg)
        else:
            facts = magnitude_prune(model, cfg, ratio)
        warnings.append(
            "unstructured sparsity: dense CPU kernels do not skip zeros, so the model is no "
            "faster; it compresses better (see compressed_size)"
        )
    if search is not None:
        facts["auto"] = {"ratio": ratio, "search": search}
    if cfg.method == "channel" and cfg.compensate:
        facts["cosine_without_compensation"] = _cosine_without_compensation(src, cfg, ctx, ratio)
    if not streaming:
        save_model(model, dst, external_data=ctx.config.external_data)
        del model  # models over 2 GB: do not hold two copies
    after_model = load_model(dst, load_weights=False)
    after = summary(after_model)
    report: dict[str, Any] = {
        "method": cfg.method,
        **facts,
        "parameters_before": before["parameters"],
        "parameters_after": after["parameters"],
        "macs_before": macs_before,
        "macs_after": compute_macs(after_model, ctx.dims, dst)["macs"],
        "size_before": model_size(src),
        "size_after": model_size(dst),
    }
    if cfg.method == "magnitude" and not streaming:  # gzip of 2 GB+ would take minutes
        report["compressed_size_before"] = len(gzip.compress(src.read_bytes(), 6))
        report["compressed_size_after"] = len(gzip.compress(dst.read_bytes(), 6))
    return StepResult(report=report, warnings=warnings)
