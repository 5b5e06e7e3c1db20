"""An ONNX graph as a trainable ``torch.nn.Module``, and its weights written back.

The module holds the graph's float weights as parameters and runs the nodes in order with
the torch functions of :mod:`onnxopt.steps.distill.ops`. Training changes only those
values, so the trained student goes back into the *same* ONNX graph (every node, name,
opset and dynamic axis as it was): :func:`write_weights` replaces the initializers. No
export round trip, so nothing the exporter would rewrite can change under the user.

Chosen over onnx2torch (see FACTS.md): its last release hard-imports torchvision (which does
not load against this project's CPU torch) and it fails on dynamo exports (ReduceMean at
opset 18), GreaterOrEqual at opset 16 and Constant-node weights, all of which this module
handles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from onnxopt.errors import first_line
from onnxopt.graph import constants_to_initializers, opset_of
from onnxopt.steps.distill.ops import DTYPES, OPS, Unsupported

#: operator -> input positions whose float initializer is a weight to train
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
    "Gather": (0,),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
#: ONNX Runtime's quantized and fused operators: the student must be a float graph
_HINTS = {
    "QuantizeLinear": "distill before quantize (a quantized student cannot be trained)",
    "DequantizeLinear": "distill before quantize (a quantized student cannot be trained)",
    "com.microsoft": "distill before the transformer fusions (simplify backend transformers)",
}


class GraphRunError(RuntimeError):
    """A node failed while the graph ran in torch (onnxopt's failure: ONNX Runtime runs it)."""


class ConversionError(Exception):
    """The graph uses operators this module cannot run; ``ops`` counts them."""

    def __init__(self, ops: dict[str, int], hint: str | None) -> None:
        listed = ", ".join(f"{k} (x{v})" if v > 1 else k for k, v in sorted(ops.items()))
        super().__init__(listed)
        self.ops = ops
        self.hint = hint


@dataclass(frozen=True)
class _Node:
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    name: str


def _attr(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
        raise Unsupported("subgraphs")
    value = helper.get_attribute_value(a)
    if a.type == onnx.AttributeProto.TENSOR:
        return torch.from_numpy(np.array(numpy_helper.to_array(value)))
    if a.type == onnx.AttributeProto.STRING:
        return value.decode()
    if a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return list(value)
    return value


def _constant(attrs: dict[str, Any]) -> torch.Tensor:
    if "value" in attrs:
        return attrs["value"]  # type: ignore[no-any-return]
    if "value_float" in attrs:
        return torch.tensor(attrs["value_float"], dtype=torch.float32)
    if "value_floats" in attrs:
        return torch.tensor(attrs["value_floats"], dtype=torch.float32)
    if "value_int" in attrs:
        return torch.tensor(attrs["value_int"], dtype=torch.int64)
    if "value_ints" in attrs:
        return torch.tensor(attrs["value_ints"], dtype=torch.int64)
    raise Unsupported("Constant of a sparse tensor or strings")


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """The form of the graph that is converted and written back: Constant nodes holding
    tensors become initializers (so weights kept in them train too). ``model`` is copied."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants_to_initializers(out)
    return out


def unsupported_ops(model: onnx.ModelProto) -> dict[str, int]:
    """The operators of ``model``'s main graph that this module cannot run, with counts."""
    missing: Counter[str] = Counter()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            missing[f"{node.domain}.{node.op_type}"] += 1
        elif (node.op_type not in OPS and node.op_type != "Constant") or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            missing[node.op_type] += 1
    return dict(missing)


def trainable_names(model: onnx.ModelProto) -> list[str]:
    """Float initializers in a weight position (a Conv's kernel and bias, a MatMul's matrix,
    a normalization's scale and shift, an Add's bias vector...), in graph order. Scalars
    (epsilons, scale factors) and integer tensors stay fixed."""
    floats = {
        t.name: t
        for t in model.graph.initializer
        if t.data_type in _FLOATS and int(np.prod(t.dims or [1])) > 1
    }
    chosen: dict[str, None] = {}
    for node in model.graph.node:
        for position in WEIGHT_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in floats:
                chosen[node.input[position]] = None
    return list(chosen)


class GraphModule(torch.nn.Module):
    """Runs an ONNX graph with torch ops; its trainable weights are parameters."""

    def __init__(self, model: onnx.ModelProto, train: list[str] | None = None) -> None:
        """Build from a prepared model (see :func:`prepare`) with its weights loaded.

        Raises:
            ConversionError: the graph has operators this module cannot run.
        """
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            hint = next(
                (h for key, h in _HINTS.items() if any(key in name for name in missing)), None
            )
            raise ConversionError(missing, hint)
        self.opset = opset_of(model)
        graph = model.graph
        wanted = set(trainable_names(model) if train is None else train)
        self._params = torch.nn.ParameterList()
        self.param_index: dict[str, int] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for t in graph.initializer:
            value = torch.from_numpy(np.array(numpy_helper.to_array(t)))
            if t.name in wanted:
                self.param_index[t.name] = len(self._params)
                self._params.append(torch.nn.Parameter(value.float()))
            else:
                self.consts[t.name] = value
        self.input_names = [i.name for i in graph.input if i.name not in self.consts]
        self.output_names = [o.name for o in graph.output]
        self.nodes: list[_Node] = []
        for k, node in enumerate(graph.node):
            try:
                attrs = {a.name: _attr(a) for a in node.attribute}
            except Unsupported:
                raise ConversionError({node.op_type: 1}, None) from None
            if node.op_type == "Split":
                attrs["_outputs"] = len(node.output)
            self.nodes.append(
                _Node(
                    node.op_type,
                    tuple(node.input),
                    tuple(node.output),
                    attrs,
                    node.name or f"{node.op_type}_{k}",
                )
            )
        self._dtypes = {t.name: DTYPES.get(t.data_type, torch.float32) for t in graph.initializer}

    def named_weights(self) -> dict[str, torch.nn.Parameter]:
        """Initializer name -> its parameter."""
        return {name: self._params[i] for name, i in self.param_index.items()}

    def forward(  # type: ignore[override]
        self, feeds: dict[str, torch.Tensor], outputs: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The graph's outputs (or the named tensors ``outputs``) for ``feeds``."""
        wanted = list(outputs or self.output_names)
        env: dict[str, Any] = dict(self.consts)
        for name, i in self.param_index.items():
            param = self._params[i]
            dtype = self._dtypes[name]
            env[name] = param if dtype == torch.float32 else param.to(dtype)
        env.update(feeds)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise KeyError(f"no value for inputs {missing}")
        for node in self.nodes:
            if node.op_type == "Constant":
                env[node.outputs[0]] = _constant(node.attrs)
                continue
            args = [env[n] if n else None for n in node.inputs]
            try:
                result = OPS[node.op_type](args, node.attrs, self.opset)
            except Unsupported:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                raise GraphRunError(
                    f"node {node.name} ({node.op_type}): {first_line(err, 200)}"
                ) from err
            if isinstance(result, tuple):
                for name, value in zip(node.outputs, result, strict=False):
                    if name:
                        env[name] = value
            else:
                env[node.outputs[0]] = result
        return {n: env[n] for n in wanted}


def write_weights(model: onnx.ModelProto, module: GraphModule) -> int:
    """Replace ``model``'s trained initializers (a prepared model, weights loaded) with the
    module's values, in their own element type; return how many were replaced."""
    weights = module.named_weights()
    replaced = 0
    for k, t in enumerate(model.graph.initializer):
        param = weights.get(t.name)
        if param is None:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        array = param.detach().cpu().numpy().astype(dtype).reshape(tuple(t.dims))
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(array, t.name))
        replaced += 1
    return replaced
