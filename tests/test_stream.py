"""Recurrent models: state pairs found by name and shape, verified in closed loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import Target, parse_config
from onnxopt.engine import run_pipeline
from onnxopt.verify import InputSet, Tol, reference_outputs, verify_model
from onnxopt.verify.stream import state_pairs


def integrator(
    path: Path, drift: float = 0.0, state: tuple[str, str] = ("state", "stateN")
) -> Path:
    """stateN = state + 0.1 tanh(x Wx) + drift; y = stateN Wy (a state that never decays)."""
    rng = np.random.default_rng(8)
    wx = (rng.standard_normal((8, 16)) / np.sqrt(8)).astype(np.float32)
    wy = (rng.standard_normal((16, 4)) / 4).astype(np.float32)
    s_in, s_out = state
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wx"], ["a"], name="mm_x"),
            helper.make_node("Tanh", ["a"], ["t"]),
            helper.make_node("Mul", ["t", "tenth"], ["step"]),
            helper.make_node("Add", [s_in, "step"], ["moved"]),
            helper.make_node("Add", ["moved", "drift"], [s_out]),
            helper.make_node("MatMul", [s_out, "wy"], ["y"], name="mm_y"),
        ],
        "integrator",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info(s_in, TensorProto.FLOAT, [1, 16]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info(s_out, TensorProto.FLOAT, [1, 16]),
        ],
        [
            numpy_helper.from_array(wx, "wx"),
            numpy_helper.from_array(wy, "wy"),
            numpy_helper.from_array(np.array(0.1, np.float32), "tenth"),
            numpy_helper.from_array(np.array(drift, np.float32), "drift"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _stream(n: int = 24) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(9)
    return [
        {
            "x": rng.standard_normal((1, 8)).astype(np.float32),
            "state": np.zeros((1, 16), np.float32)
            if i == 0
            else rng.standard_normal((1, 16)).astype(np.float32) * 0.3,
        }
        for i in range(n)
    ]


def test_state_pairs_are_found_by_name_and_shape(tmp_path: Path) -> None:
    for names in (("state", "stateN"), ("h0", "hn"), ("c_in", "c_out"), ("cache.in", "cache.out")):
        model = onnx.load(str(integrator(tmp_path / "m.onnx", state=names)))
        assert state_pairs(model) == {names[0]: names[1]}, names
    # same shape, unrelated names: no pair
    model = onnx.load(str(integrator(tmp_path / "m.onnx", state=("memory", "logits"))))
    assert state_pairs(model) == {}


def test_a_drifting_state_passes_chunk_by_chunk_and_fails_in_closed_loop(tmp_path: Path) -> None:
    parent = integrator(tmp_path / "p.onnx")
    child = integrator(tmp_path / "c.onnx", drift=0.002)
    samples = _stream()
    tol = Tol(float("inf"), float("inf"), 0.99)
    target = Target()
    results = {}
    for loop in (None, {"state": "stateN"}):
        inputs = InputSet(main=samples[0], dims={}, samples=samples, state_pairs=loop)
        reference = reference_outputs(parent, inputs, target)
        results[bool(loop)] = verify_model(child, reference, tol, inputs, target)
    assert results[False].passed  # each chunk from the original's state: the drift hides
    assert not results[True].passed  # carried state: 24 chunks of drift
    rows = {r["name"]: r for r in results[True].main["outputs"]}
    assert rows["stateN"]["judged"] is False and "judged" not in rows["y"]  # y judges
    assert results[True].min_cosine < 0.99 < results[False].min_cosine, (
        results[True].min_cosine,
        results[False].min_cosine,
    )


def test_a_pipeline_with_data_verifies_a_recurrent_model_in_closed_loop(tmp_path: Path) -> None:
    src = integrator(tmp_path / "m.onnx")
    samples = _stream(16)
    data = tmp_path / "stream.npz"
    np.savez(data, **{k: np.stack([s[k] for s in samples]) for k in ("x", "state")})
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "o"),
        "data": {"path": str(data), "holdout": 6},
        "steps": [{"type": "simplify", "guard": None}],
    }
    manifest = run_pipeline(parse_config(cfg), tmp_path)
    inputs = manifest["inputs"]
    assert inputs["closed_loop"] == {"state": "stateN"}
    held = inputs["data"]["held_out_samples"]
    assert held == list(range(held[0], held[0] + 6))  # one run of consecutive samples
    assert manifest["steps"][0]["verification"]["passed"]
