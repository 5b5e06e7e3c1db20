"""The streaming dynamic INT8 quantizer (models over 2 GB) against ONNX Runtime's own.

Same graph given to both: the quantized weights, scales and zero points must be identical
and the outputs of the two models equal, for every weight type / per-channel / reduce-range
combination the step exposes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.modelio import load_model, read_tensor
from onnxopt.steps.quantize.core import name_nodes
from onnxopt.steps.quantize.streaming import quantize_dynamic_streaming, unsupported
from tests.conftest import error_line, run_cli

OPSET = [helper.make_opsetid("", 17)]


def _mixed(path: Path, *, gemm: bool = False) -> Path:
    """MatMuls with shared, zero-column, all-positive and doubly-used weights, an
    activation x activation MatMul and (optionally) a Gemm; weights as external data."""
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((64, 96)).astype(np.float32) / 8
    w1[:, 5] = 0.0  # a zero column: ONNX Runtime's scale-1 branch
    w2 = rng.standard_normal((96, 96)).astype(np.float32) / 10
    w3 = np.abs(rng.standard_normal((96, 32))).astype(np.float32) / 10  # all positive
    w4 = rng.standard_normal((96, 96)).astype(np.float32) / 10  # also read by ReduceSum
    inits = [
        numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"), (w4, "w4"))
    ]
    inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"))
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], "mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], "relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], "mm2"),
        helper.make_node("MatMul", ["r1", "w2"], ["h3"], "mm3"),  # shared weight and input
        helper.make_node("MatMul", ["h2", "w4"], ["h4"], "mm4"),
        helper.make_node("ReduceSum", ["w4", "axes"], ["w4sum"], "rsum", keepdims=0),
        helper.make_node("Add", ["h4", "w4sum"], ["h5"], "add1"),
        helper.make_node("Add", ["h5", "h3"], ["h6"], "add2"),
        helper.make_node("Transpose", ["h3"], ["h3t"], "tr", perm=[1, 0]),
        helper.make_node("MatMul", ["h6", "h3t"], ["att"], "mm_act"),  # both activations
        helper.make_node("MatMul", ["h6", "w3"], ["y"], "mm5"),
    ]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32]),
        helper.make_tensor_value_info("att", TensorProto.FLOAT, ["batch", "batch"]),
    ]
    if gemm:
        inits.append(numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "wg"))
        nodes.append(helper.make_node("Gemm", ["y", "wg"], ["g"], "gemm"))
        outputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, ["batch", 8]))
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        outputs, inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)  # fmt: skip
    return path


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {"x": x})]


def _quantized(path: Path) -> dict[str, np.ndarray]:
    model = load_model(path, load_weights=False)
    return {
        t.name: read_tensor(t, path.parent)
        for t in model.graph.initializer
        if t.name.endswith(("_quantized", "_scale", "_zero_point"))
    }


@pytest.mark.parametrize(
    "weight_type,per_channel,reduce_range",
    [
        ("int8", True, False),
        ("int8", False, False),
        ("int8", True, True),
        ("uint8", True, False),
        ("uint8", False, True),
    ],
)
def test_streaming_matches_onnxruntime(
    tmp_path: Path, weight_type: str, per_channel: bool, reduce_range: bool
) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _mixed(tmp_path / "m.onnx")
    ops = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
    theirs = tmp_path / "ort" / "q.onnx"
    theirs.parent.mkdir()
    quantize_dynamic(
        str(src), str(theirs), op_types_to_quantize=ops, per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
    )  # fmt: skip
    ours = tmp_path / "ours" / "q.onnx"
    ours.parent.mkdir()
    model = load_model(src, load_weights=False)
    name_nodes(model)
    assert unsupported(model, ops, []) is None
    facts = quantize_dynamic_streaming(
        model, src.parent, ours, ops=ops, exclude=[], per_channel=per_channel,
        reduce_range=reduce_range, weight_type=weight_type,
    )  # fmt: skip
    assert facts["weights_quantized"] == 4  # w1..w4; w2 once for two MatMuls

    onnx.checker.check_model(str(ours))
    a, b = _quantized(theirs), _quantized(ours)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    for mine, reference in zip(_outputs(ours, x), _outputs(theirs, x), strict=True):
        np.testing.assert_array_equal(mine, reference)

    ops_of = lambda p: sorted(n.op_type for n in load_model(p, load_weights=False).graph.node)  # noqa: E731
    assert ops_of(ours) == ops_of(theirs)
    kept = {t.name for t in load_model(ours, load_weights=False).graph.initializer}
    assert not {"w1", "w2", "w3", "w4"} & kept  # ReduceSum reads w4 dequantized, as in ORT
    # the float weights no longer used are not carried: the new .data file is int8-sized
    assert (ours.parent / "q.onnx.data").stat().st_size < (
        src.parent / "m.onnx.data"
    ).stat().st_size / 2


def test_excluded_nodes_stay_float(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    src = _mixed(tmp_path / "m.onnx")
    theirs = tmp_path / "ort" / "q.onnx"
    theirs.parent.mkdir()
    quantize_dynamic(str(src), str(theirs), op_types_to_quantize=["MatMul"], per_channel=True,
                     nodes_to_exclude=["mm5", "mm1"])  # fmt: skip
    model = load_model(src, load_weights=False)
    name_nodes(model)
    out = tmp_path / "q" / "q.onnx"
    out.parent.mkdir()
    quantize_dynamic_streaming(
        model, src.parent, out, ops=["MatMul"], exclude=["mm5", "mm1"], per_channel=True,
        reduce_range=False, weight_type="int8",
    )  # fmt: skip
    kinds = {n.name: n.op_type for n in load_model(out).graph.node}
    assert kinds["mm5"] == "MatMul" and kinds["mm1"] == "MatMul"
    assert sum(op == "MatMulInteger" for op in kinds.values()) == 3  # mm2, mm3, mm4
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    for mine, reference in zip(_outputs(out, x), _outputs(theirs, x), strict=True):
        np.testing.assert_array_equal(mine, reference)


def test_unsupported_graphs_are_named(tmp_path: Path) -> None:
    model = load_model(_mixed(tmp_path / "g.onnx", gemm=True), load_weights=False)
    assert unsupported(model, ["MatMul"], []) == "it has Gemm 1 node(s)"
    model.opset_import[0].version = 10
    assert "opset 10" in (unsupported(model, ["MatMul"], []) or "")


def _cli_dynamic(src: Path, out: Path) -> dict:
    proc = run_cli(
        "quantize", str(src), "--mode", "dynamic", "--min-cosine", "0.9", "-o", str(out), "--json"
    )
    assert proc.returncode == 0, error_line(proc)
    report = json.loads(proc.stdout)
    return report["steps"][-1]["report"] if "steps" in report else report["report"]


def test_cli_uses_streaming_for_external_weights(tmp_path: Path) -> None:
    step = _cli_dynamic(_mixed(tmp_path / "m.onnx"), tmp_path / "out" / "q.onnx")
    assert step["engine"] == "streaming"
    assert step["new_quantized_ops"]["MatMulInteger"] == 5

    (tmp_path / "g").mkdir()
    step = _cli_dynamic(_mixed(tmp_path / "g" / "g.onnx", gemm=True), tmp_path / "o2" / "q.onnx")
    assert step["engine"] == "onnxruntime"
    assert any("Gemm 1 node(s)" in n for n in step["notes"])


def test_streaming_is_byte_deterministic(tmp_path: Path) -> None:
    src = _mixed(tmp_path / "m.onnx")
    files = []
    for run in ("a", "b"):
        model = load_model(src, load_weights=False)
        name_nodes(model)
        out = tmp_path / run / "q.onnx"
        out.parent.mkdir()
        quantize_dynamic_streaming(
            model, src.parent, out, ops=["MatMul"], exclude=[], per_channel=True,
            reduce_range=False, weight_type="int8",
        )  # fmt: skip
        files.append((out.read_bytes(), (out.parent / "q.onnx.data").read_bytes()))
    assert files[0] == files[1]
