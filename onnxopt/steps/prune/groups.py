"""The bookkeeping under channel pruning's dependency analysis: groups of channels, which
tensor carries which group on which axis, and how groups merge or fail.

A channel axis is kept as a non-negative index, or -1 when it is the tensor's last axis (so
broadcasting against per-channel constants needs no rank); :func:`norm_axis` gives that form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


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


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """A node attribute's value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` of a tensor of ``rank`` in the analysis' form: -1 when last, else >= 0."""
    axis %= rank
    return -1 if axis == rank - 1 else axis


class ChannelGraph:
    """The graph's indexes and the groups found so far."""

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

    def weight(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        """The initializer at input ``index`` of ``node`` as an array, or None."""
        if len(node.input) <= index or node.input[index] not in self.inits:
            return None
        return numpy_helper.to_array(self.inits[node.input[index]])

    def constant(self, node: onnx.NodeProto, index: int, name: str) -> list[int] | None:
        """An int list given as attribute ``name`` (older opsets) or as the initializer at
        input ``index``; None when neither is there."""
        value = attr(node, name, None)
        if value is not None:
            return [int(v) for v in value]
        array = self.weight(node, index)
        return None if array is None else [int(v) for v in array.reshape(-1)]

    def given(self, node: onnx.NodeProto, index: int, name: str) -> bool:
        """An optional operand is there: as attribute ``name`` or as input ``index``."""
        return attr(node, name, None) is not None or (
            len(node.input) > index and bool(node.input[index])
        )

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return len(shape) if shape else None

    def name(self, node: onnx.NodeProto) -> str:
        return node.name or node.op_type

    def _shared(self, node: onnx.NodeProto, index: int) -> bool:
        return len(node.input) > index and self.uses.get(node.input[index], 0) > 1

    def _private(self, node: onnx.NodeProto, index: int) -> bool:
        """Input ``index`` of ``node`` is an initializer no other node reads."""
        return (
            len(node.input) > index
            and node.input[index] in self.inits
            and not self._shared(node, index)
        )

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

    def _carry(self, tensor: str, space: int, axis: int) -> None:
        """Record that ``tensor`` carries the channels of ``space`` on ``axis``."""
        existing = self.tensor_space.get(tensor)
        if existing is not None and self.uf.find(existing) != self.uf.find(space):
            self._merge(existing, space, tensor)
        self.tensor_space[tensor] = space
        self.axis[tensor] = axis
