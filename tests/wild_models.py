"""Models as other exporters write them (not PyTorch): built in code for the tests.

Each builder writes a valid model (``onnx.checker`` passes) that exercises something a
PyTorch export rarely has: weights in Constant nodes, control flow reading outer-scope
values, odd or missing dim names, integer/bool/scalar inputs, non-tensor outputs and
ai.onnx.ml operators.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.models import constant_weights

OPSET = [helper.make_opsetid("", 17)]
RNG_SEED = 12


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.producer_name = "wild-exporter"
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def _weight(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> onnx.TensorProto:
    scale = 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def if_outer_scope(path: Path, width: int = 32) -> Path:
    """y = If(sum(x) > 0, x @ W1 (outer W1), Relu(x @ W2)) — both branches read outer values."""
    rng = np.random.default_rng(RNG_SEED)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W2"], ["e_mm"]),
            helper.make_node("Relu", ["e_mm"], ["e_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("MatMul", ["h", "W3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "if_outer_scope",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [
            _weight(rng, (width, width), "W1"),
            _weight(rng, (width, width), "W2"),
            _weight(rng, (width, width), "W3"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def loop_outer_scope(path: Path, width: int = 32) -> Path:
    """Three Loop iterations of h = Tanh(h @ W + x), W and x read from the outer scope."""
    rng = np.random.default_rng(RNG_SEED + 1)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "x"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("Loop", ["trips", "keep_going", "x"], ["h"], body=body),
        helper.make_node("MatMul", ["h", "W_out"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "loop_outer_scope",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [
            _weight(rng, (width, width), "W"),
            _weight(rng, (width, width), "W_out"),
            numpy_helper.from_array(np.array(3, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def odd_dims(path: Path, width: int = 16) -> Path:
    """Dims named '?', 'unk__12', 'SomeExporter.DynamicDimension.0' and one with no name."""
    rng = np.random.default_rng(RNG_SEED + 2)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["?", width])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["unk__12", width])
    c = helper.make_tensor_value_info(
        "c", TensorProto.FLOAT, ["SomeExporter.DynamicDimension.0", width]
    )
    d = helper.make_tensor_value_info("d", TensorProto.FLOAT, [None, width])  # no value, no name
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["-1", width])
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["aw"]),
        helper.make_node("ReduceMean", ["b"], ["bm"], axes=[0], keepdims=1),
        helper.make_node("ReduceMean", ["c"], ["cm"], axes=[0], keepdims=1),
        helper.make_node("ReduceMean", ["d"], ["dm"], axes=[0], keepdims=1),
        helper.make_node("Add", ["aw", "bm"], ["s1"]),
        helper.make_node("Add", ["s1", "cm"], ["s2"]),
        helper.make_node("Add", ["s2", "dm"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "odd_dims",
        [a, b, c, d],
        [y],
        [_weight(rng, (width, width), "W")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def mixed_inputs(path: Path, vocab: int = 50, width: int = 16) -> Path:
    """int64 token ids, an int32 mask, a bool flag, a float scalar and a state tensor.

    Outputs the pooled embedding and the next state (the shape of a streaming model).
    """
    rng = np.random.default_rng(RNG_SEED + 3)
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "seq"]),
        helper.make_tensor_value_info("use_state", TensorProto.BOOL, []),
        helper.make_tensor_value_info("temperature", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", width]),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),  # [batch, seq, width]
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["proj"]),
        helper.make_node("Abs", ["temperature"], ["t_abs"]),
        helper.make_node("Add", ["t_abs", "one"], ["t_safe"]),
        helper.make_node("Div", ["proj", "t_safe"], ["scaled"]),
        helper.make_node("Add", ["scaled", "state"], ["with_state"]),
        helper.make_node("Where", ["use_state", "with_state", "scaled"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["next_state"]),
        helper.make_node("MatMul", ["next_state", "W_out"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed_inputs",
        inputs,
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("next_state", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            _weight(rng, (vocab, width), "emb"),
            _weight(rng, (width, width), "W"),
            _weight(rng, (width, width), "W_out"),
            numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def ml_classifier(path: Path, features: int = 8, classes: int = 3) -> Path:
    """A scikit-learn-style model: MatMul -> ai.onnx.ml LinearClassifier -> ZipMap.

    Outputs a label tensor and probabilities as a sequence of maps (not a tensor).
    """
    rng = np.random.default_rng(RNG_SEED + 4)
    coefficients = rng.standard_normal(classes * features).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node(
            "LinearClassifier",
            ["h"],
            ["label", "scores"],
            domain="ai.onnx.ml",
            coefficients=coefficients.tolist(),
            intercepts=[0.1, -0.2, 0.05][:classes],
            classlabels_ints=list(range(classes)),
            post_transform="SOFTMAX",
        ),
        helper.make_node(
            "ZipMap",
            ["scores"],
            ["probabilities"],
            domain="ai.onnx.ml",
            classlabels_int64s=list(range(classes)),
        ),
    ]
    seq_map = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
    )
    graph = helper.make_graph(
        nodes,
        "ml_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_value_info("probabilities", seq_map),
        ],
        [_weight(rng, (features, features), "W")],
    )
    model = helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("ai.onnx.ml", 3)])
    return _save(model, path)


def sequence_output(path: Path, width: int = 16) -> Path:
    """Two projections returned as one tensor sequence (SequenceConstruct)."""
    rng = np.random.default_rng(RNG_SEED + 5)
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["p1"]),
        helper.make_node("MatMul", ["x", "W2"], ["p2"]),
        helper.make_node("SequenceConstruct", ["p1", "p2"], ["parts"]),
        helper.make_node("Add", ["p1", "p2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sequence_output",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width]),
            helper.make_value_info("parts", seq),
        ],
        [_weight(rng, (width, width), "W1"), _weight(rng, (width, width), "W2")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


WILD: dict[str, Callable[[Path], Path]] = {
    "constant_weights": constant_weights,
    "if_outer_scope": if_outer_scope,
    "loop_outer_scope": loop_outer_scope,
    "odd_dims": odd_dims,
    "mixed_inputs": mixed_inputs,
    "ml_classifier": ml_classifier,
    "sequence_output": sequence_output,
}
