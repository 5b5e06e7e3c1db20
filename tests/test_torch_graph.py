"""The ONNX -> torch interpreter of the distill step, against ONNX Runtime op by op and on
whole exported models; trained weights written back into the same graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxopt.steps.distill.torch_graph import (
    ConversionError,
    GraphModule,
    prepare,
    trainable_names,
    write_weights,
)

RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _single(
    op: str,
    inputs: dict[str, np.ndarray],
    consts: dict[str, np.ndarray],
    order: list[str],
    outputs: int = 1,
    opset: int = 18,
    **attrs: Any,
) -> onnx.ModelProto:
    """One node reading graph inputs and initializers in ``order`` ("" = omitted)."""
    node = helper.make_node(op, order, [f"y{k}" for k in range(outputs)], **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [
            helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)
            )
            for n, v in inputs.items()
        ],
        [onnx.ValueInfoProto(name=f"y{k}") for k in range(outputs)],
        [numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    module = GraphModule(prepare(model))
    with torch.no_grad():
        got = module({k: torch.from_numpy(v) for k, v in feeds.items()})
    for want, value in zip(expected, got.values(), strict=True):
        value = value.numpy()
        assert value.shape == want.shape
        if want.dtype.kind == "f":
            np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(value, want)


X4 = _f(2, 3, 9, 10)
CASES: list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray], list[str], dict[str, Any]]] = [
    ("Conv", {"x": X4}, {"w": _f(4, 3, 3, 3), "b": _f(4)}, ["x", "w", "b"], {"pads": [1, 0, 2, 1]}),
    ("Conv", {"x": X4}, {"w": _f(6, 1, 3, 3)}, ["x", "w"], {"group": 3, "strides": [2, 2]}),
    (
        "Conv",
        {"x": X4},
        {"w": _f(4, 3, 3, 2)},
        ["x", "w"],
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    ),
    (
        "Conv",
        {"x": X4},
        {"w": _f(4, 3, 3, 3)},
        ["x", "w"],
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
    ),
    (
        "ConvTranspose",
        {"x": X4},
        {"w": _f(3, 2, 3, 3)},
        ["x", "w"],
        {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    ),
    (
        "MaxPool",
        {"x": X4},
        {},
        ["x"],
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    ),
    ("MaxPool", {"x": X4}, {}, ["x"], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", {"x": X4}, {}, ["x"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    (
        "AveragePool",
        {"x": X4},
        {},
        ["x"],
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ),
    ("GlobalAveragePool", {"x": X4}, {}, ["x"], {}),
    (
        "BatchNormalization",
        {"x": X4},
        {"s": _f(3), "b": _f(3), "m": _f(3), "v": np.abs(_f(3)) + 0.5},
        ["x", "s", "b", "m", "v"],
        {},
    ),
    ("InstanceNormalization", {"x": X4}, {"s": _f(3), "b": _f(3)}, ["x", "s", "b"], {}),
    (
        "LayerNormalization",
        {"x": _f(2, 5, 8)},
        {"s": _f(8), "b": _f(8)},
        ["x", "s", "b"],
        {"epsilon": 1e-6},
    ),
    ("LayerNormalization", {"x": _f(2, 5, 8)}, {"s": _f(5, 8)}, ["x", "s"], {"axis": 1}),
    (
        "Gemm",
        {"x": _f(4, 6)},
        {"w": _f(5, 6), "c": _f(5)},
        ["x", "w", "c"],
        {"transB": 1, "alpha": 0.5, "beta": 2.0},
    ),
    ("MatMul", {"x": _f(2, 5, 6)}, {"w": _f(6, 3)}, ["x", "w"], {}),
    ("Softmax", {"x": _f(2, 5, 6)}, {}, ["x"], {"axis": 1}),
    ("LogSoftmax", {"x": _f(2, 5, 6)}, {}, ["x"], {}),
    (
        "Resize",
        {"x": X4},
        {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 2, 2], np.float32)},
        ["x", "r", "s"],
        {
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
    ),
    (
        "Resize",
        {"x": X4},
        {"s": np.array([1, 1, 1.5, 2], np.float32)},
        ["x", "", "s"],
        {"mode": "linear"},
    ),
    (
        "Resize",
        {"x": X4},
        {"z": _i(2, 3, 12, 7)},
        ["x", "", "", "z"],
        {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    ),
    ("Pad", {"x": X4}, {"p": _i(0, 0, 1, 2, 0, 0, 3, 0)}, ["x", "p"], {"mode": "reflect"}),
    (
        "Pad",
        {"x": X4},
        {"p": _i(0, 1, 1, 2, 0, 0, 3, 0), "v": np.array(1.5, np.float32)},
        ["x", "p", "v"],
        {},
    ),
    (
        "Slice",
        {"x": X4},
        {"s": _i(-1, 1), "e": _i(-100, 8), "a": _i(3, 2), "t": _i(-2, 3)},
        ["x", "s", "e", "a", "t"],
        {},
    ),
    ("Slice", {"x": X4}, {"s": _i(1), "e": _i(1000), "a": _i(-1)}, ["x", "s", "e", "a"], {}),
    ("Gather", {"x": _f(10, 4)}, {"i": np.array([[1, -1], [3, 0]], np.int64)}, ["x", "i"], {}),
    ("Gather", {"x": _i(5, 6, 7)}, {"i": np.array(-1, np.int64)}, ["x", "i"], {}),
    ("Gather", {"x": _f(3, 10, 4)}, {"i": np.array(2, np.int64)}, ["x", "i"], {"axis": 1}),
    ("Split", {"x": _f(2, 7)}, {"s": _i(3, 4)}, ["x", "s"], {"axis": 1}),
    ("Concat", {"x": _f(2, 3), "z": _f(2, 4)}, {}, ["x", "z"], {"axis": -1}),
    ("Transpose", {"x": X4}, {}, ["x"], {"perm": [0, 2, 3, 1]}),
    ("Reshape", {"x": X4}, {"s": _i(0, -1, 10)}, ["x", "s"], {}),
    ("Flatten", {"x": X4}, {}, ["x"], {"axis": 2}),
    ("Squeeze", {"x": _f(2, 1, 3, 1)}, {"a": _i(1, -1)}, ["x", "a"], {}),
    ("Unsqueeze", {"x": _f(2, 3)}, {"a": _i(0, -1)}, ["x", "a"], {}),
    ("Expand", {"x": _f(3, 1)}, {"s": _i(2, 1, 4)}, ["x", "s"], {}),
    ("Tile", {"x": _f(2, 3)}, {"r": _i(2, 2)}, ["x", "r"], {}),
    ("ReduceMean", {"x": X4}, {"a": _i(2, 3)}, ["x", "a"], {}),
    ("ReduceSum", {"x": X4}, {"a": _i(1)}, ["x", "a"], {"keepdims": 0}),
    ("ReduceMax", {"x": X4}, {}, ["x"], {"keepdims": 0}),
    ("ReduceL2", {"x": X4}, {"a": _i(-1)}, ["x", "a"], {}),
    (
        "Clip",
        {"x": X4},
        {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)},
        ["x", "lo", "hi"],
        {},
    ),
    ("Where", {"c": RNG.random((2, 3)) > 0.5, "x": _f(2, 3)}, {"z": _f(3)}, ["c", "x", "z"], {}),
    ("Div", {"x": _i(7, -7, 9)}, {"z": _i(2, 2, -4)}, ["x", "z"], {}),
    ("Mod", {"x": _i(7, -7, 9)}, {"z": _i(3, 3, -4)}, ["x", "z"], {}),
    ("Pow", {"x": np.abs(_f(2, 3))}, {"z": np.array(2.0, np.float32)}, ["x", "z"], {}),
    ("Erf", {"x": _f(2, 3)}, {}, ["x"], {}),
    ("Gelu", {"x": _f(2, 3)}, {}, ["x"], {"approximate": "tanh", "opset": 20}),
    ("HardSigmoid", {"x": _f(2, 3)}, {}, ["x"], {"alpha": 0.3}),
    ("HardSwish", {"x": _f(2, 3)}, {}, ["x"], {}),
    ("LeakyRelu", {"x": _f(2, 3)}, {}, ["x"], {"alpha": 0.2}),
    ("PRelu", {"x": X4}, {"s": _f(3, 1, 1)}, ["x", "s"], {}),
    ("Elu", {"x": _f(2, 3)}, {}, ["x"], {}),
    ("Selu", {"x": _f(2, 3)}, {}, ["x"], {}),
    ("Softplus", {"x": _f(2, 3)}, {}, ["x"], {}),
    ("Cast", {"x": _f(2, 3) * 5}, {}, ["x"], {"to": TensorProto.INT64}),
    ("Shape", {"x": X4}, {}, ["x"], {"start": 1, "end": -1}),
    (
        "ConstantOfShape",
        {"x": _i(2, 3)},
        {},
        ["x"],
        {"value": numpy_helper.from_array(np.array([7], np.int64))},
    ),
    (
        "Range",
        {"x": np.array(1, np.int64)},
        {"l": np.array(10, np.int64), "d": np.array(3, np.int64)},
        ["x", "l", "d"],
        {},
    ),
    ("Equal", {"x": _i(1, 2, 3)}, {"z": _i(1, 0, 3)}, ["x", "z"], {}),
    ("GreaterOrEqual", {"x": _f(2, 3)}, {"z": _f(3)}, ["x", "z"], {}),
    ("Not", {"x": RNG.random((2, 3)) > 0.5}, {}, ["x"], {}),
    ("ArgMax", {"x": _f(4, 5)}, {}, ["x"], {"axis": 1, "keepdims": 0}),
    (
        "CumSum",
        {"x": _f(2, 5)},
        {"a": np.array(1, np.int64)},
        ["x", "a"],
        {"exclusive": 1, "reverse": 1},
    ),
    ("Trilu", {"x": _f(4, 4)}, {"k": np.array(1, np.int64)}, ["x", "k"], {"upper": 0}),
    ("Einsum", {"x": _f(2, 3, 4), "z": _f(2, 4, 5)}, {}, ["x", "z"], {"equation": "bij,bjk->bik"}),
    ("DepthToSpace", {"x": _f(1, 8, 3, 3)}, {}, ["x"], {"blocksize": 2, "mode": "DCR"}),
    ("DepthToSpace", {"x": _f(1, 8, 3, 3)}, {}, ["x"], {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", {"x": _f(1, 2, 4, 6)}, {}, ["x"], {"blocksize": 2}),
    (
        "GatherElements",
        {"x": _f(3, 4)},
        {"i": np.array([[0, 2], [1, -1], [3, 0]], np.int64)},
        ["x", "i"],
        {"axis": 1},
    ),
    (
        "ScatterND",
        {"x": _f(4, 3)},
        {"i": np.array([[1], [3]], np.int64), "u": _f(2, 3)},
        ["x", "i", "u"],
        {},
    ),
    ("Max", {"x": _f(2, 3), "z": _f(3)}, {}, ["x", "z"], {}),
    ("Mean", {"x": _f(2, 3), "z": _f(2, 3)}, {}, ["x", "z"], {}),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_op_matches_onnxruntime(case: Any) -> None:
    op, inputs, consts, order, attrs = case
    attrs = dict(attrs)
    opset = attrs.pop("opset", 18)
    outputs = 2 if op == "Split" else 1
    _compare(_single(op, inputs, consts, order, outputs=outputs, opset=opset, **attrs), inputs)


def test_old_opset_forms() -> None:
    x = _f(2, 3, 4)
    # Softmax before opset 13 flattens from its axis
    _compare(_single("Softmax", {"x": x}, {}, ["x"], opset=11, axis=1), {"x": x})
    # Slice-1 with attributes, Squeeze-11 with axes as an attribute
    _compare(
        _single("Slice", {"x": x}, {}, ["x"], opset=9, starts=[1], ends=[3], axes=[2]), {"x": x}
    )
    y = _f(2, 1, 4)
    _compare(_single("Squeeze", {"x": y}, {}, ["x"], opset=11, axes=[1]), {"x": y})


def test_exported_models_run_like_onnxruntime(mlp_onnx: Path, tmp_path: Path) -> None:
    import onnxopt

    tr = tmp_path / "tr.onnx"
    onnxopt.export(
        "sample_models/transformer.py:build",
        tr,
        [
            {
                "name": "input_ids",
                "shape": ["batch", "sequence"],
                "dtype": "int64",
                "range": [0, 1000],
            },
            {
                "name": "attention_mask",
                "shape": ["batch", "sequence"],
                "dtype": "int64",
                "range": [1, 2],
            },
        ],
        dims={"batch": 2, "sequence": 16},
    )
    ids = RNG.integers(0, 1000, (3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[0, 7:] = 0
    _compare(onnx.load(tr), {"input_ids": ids, "attention_mask": mask})
    _compare(onnx.load(mlp_onnx), {"features": _f(5, 64)})


def test_weights_are_trainable_and_written_back(mlp_onnx: Path) -> None:
    model = prepare(onnx.load(mlp_onnx))
    names = trainable_names(model)
    assert names and all(
        t.data_type == TensorProto.FLOAT for t in model.graph.initializer if t.name in names
    )
    module = GraphModule(model)
    assert sum(p.numel() for p in module.parameters()) == sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if t.name in names
    )
    x = torch.from_numpy(_f(4, 64))
    out = next(iter(module({"features": x}).values()))
    out.square().mean().backward()
    assert all(p.grad is not None for p in module.parameters())
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.5)
    assert write_weights(model, module) == len(names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = next(iter(module({"features": x}).values())).numpy()
    np.testing.assert_allclose(
        session.run(None, {"features": x.numpy()})[0], want, rtol=1e-4, atol=1e-6
    )


def test_unsupported_ops_are_named() -> None:
    x = _f(1, 4)
    model = _single("QuantizeLinear", {"x": x}, {"s": np.array(0.1, np.float32)}, ["x", "s"])
    with pytest.raises(ConversionError) as err:
        GraphModule(prepare(model))
    assert "QuantizeLinear" in str(err.value)
    assert err.value.hint is not None and "before quantize" in err.value.hint
