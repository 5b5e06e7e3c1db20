"""The user's data: one source for calibration, held-out verification and timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import InputSpec, parse_config
from onnxopt.data import split, split_arrays
from onnxopt.engine import run_pipeline
from onnxopt.errors import InputError
from tests import models
from tests.conftest import Untouched, error_line, run_cli


def _spec(name: str, shape: list[int | str], dtype: str = "float32") -> InputSpec:
    return InputSpec(name=name, shape=shape, dtype=dtype)  # type: ignore[arg-type]


def test_the_split_is_seeded_and_disjoint() -> None:
    samples = [{"x": np.full((1, 2), i, np.float32)} for i in range(16)]
    calibration, held, index = split(samples, 0.25, seed=3)
    assert len(held) == 4 and len(calibration) == 12
    assert {int(s["x"][0, 0]) for s in held} == set(index)
    assert not {int(s["x"][0, 0]) for s in held} & {int(s["x"][0, 0]) for s in calibration}
    assert split(samples, 0.25, seed=3)[2] == index  # the same seed, the same split
    assert split(samples, 0.25, seed=4)[2] != index
    assert len(split(samples, 5, seed=0)[1]) == 5  # a count
    assert len(split(samples[:2], 0.25, seed=0)[1]) == 1  # at least one of each


def test_the_npz_layout_for_every_kind_of_input() -> None:
    specs = [
        _spec("audio", ["batch", 64]),
        _spec("state", [2, 1, 8]),  # no batch axis: one whole sample per leading index
        _spec("sr", [], "int64"),  # a scalar
    ]
    arrays = {
        "audio": np.zeros((5, 64), np.float32),  # the input's rank: 5 samples of batch 1
        "state": np.zeros((5, 2, 1, 8), np.float32),  # rank + 1
        "sr": np.array([16000] * 5, np.int64),  # rank + 1 of a scalar
    }
    samples = split_arrays(arrays, specs)
    assert len(samples) == 5
    assert {k: v.shape for k, v in samples[0].items()} == {
        "audio": (1, 64),
        "state": (2, 1, 8),
        "sr": (),
    }
    shared = split_arrays({**arrays, "sr": np.array(8000, np.int64)}, specs)
    assert all(int(s["sr"]) == 8000 for s in shared)  # one sample, given to every sample
    fixed = split_arrays({"x": np.zeros((6, 3), np.float32)}, [_spec("x", [2, 3])])
    assert [s["x"].shape for s in fixed] == [(2, 3)] * 3  # a fixed first dim: chunks of it
    with pytest.raises(InputError, match="different numbers of samples"):
        split_arrays({**arrays, "state": np.zeros((4, 2, 1, 8), np.float32)}, specs)
    with pytest.raises(InputError, match="takes an array of rank 3 .* or 4"):
        split_arrays({**arrays, "state": np.zeros((2, 8), np.float32)}, specs)


def _state_model(path: Path) -> Path:
    """y, state_out = f(x [batch, 16], state [2, 1, 16], sr scalar): a VAD-like signature."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceMean", ["state"], ["s"], keepdims=0, axes=[0, 1]),
        helper.make_node("Add", ["h", "s"], ["hs"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "k"], ["scale"]),
        helper.make_node("Mul", ["hs", "scale"], ["y"]),
        helper.make_node("Identity", ["state"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad_like",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, 1, 16]),
        ],
        [w, numpy_helper.from_array(np.array(16000.0, np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_pipeline_verifies_on_held_out_samples_and_calibrates_on_the_rest(
    tmp_path: Path,
) -> None:
    src = _state_model(tmp_path / "vad.onnx")
    rng = np.random.default_rng(1)
    data = tmp_path / "data.npz"
    np.savez(
        data,
        x=rng.standard_normal((16, 16)).astype(np.float32),
        state=rng.standard_normal((16, 2, 1, 16)).astype(np.float32),
        sr=np.full(16, 16000, np.int64),
    )
    config = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "o"),
        "data": {"path": str(data), "holdout": 0.25, "seed": 1},
        "steps": [
            {"type": "quantize", "mode": "static", "guard": None, "tolerance": {"min_cosine": 0.9}},
            {"type": "bench", "runs": 5, "trials": 1},
        ],
    }
    with Untouched(src, data):
        manifest = run_pipeline(parse_config(config), tmp_path)
    record = manifest["inputs"]
    assert record["synthetic"] is False
    assert record["data"]["held_out"] == 4 and record["data"]["calibration"] == 12
    entry = manifest["steps"][0]
    assert entry["verification"]["main"]["samples"] == 4  # every held-out sample compared
    assert "second_shape" not in entry["verification"]  # no generated inputs with data
    assert entry["report"]["calibration"]["samples"] == 12  # the other part, disjoint
    assert not any("synthetic" in w for w in entry["warnings"])
    bench = json.loads((tmp_path / "o" / manifest["steps"][1]["report_file"]["path"]).read_text())
    assert bench["inputs"]["shapes"] == {"x": [1, 16], "state": [2, 1, 16], "sr": []}


def test_calibration_data_alone_is_the_runs_data(tmp_path: Path) -> None:
    """--calibration X alone: the data that calibrates also verifies, held out."""
    src = models.conv_net(tmp_path / "conv.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    proc = run_cli(
        "quantize", src, "-o", tmp_path / "q.onnx", "-m", "static", "--calibration", cal,
        "--min-cosine", "0.8", "--no-guard", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["inputs"]["data"]["held_out"] == 2
    assert manifest["steps"][0]["report"]["calibration"]["samples"] == 6
    assert manifest["steps"][0]["verification"]["main"]["samples"] == 2


def test_without_data_the_run_says_it_proved_the_graph_not_the_task(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    # what the run says, not how precise int8 is here: a loose bound that any CPU meets
    loose = ("--min-cosine", "0.9")
    proc = run_cli(
        "quantize", src, "-o", tmp_path / "q.onnx", "-m", "dynamic", "--no-guard", *loose
    )
    assert proc.returncode == 0, proc.stderr
    assert "verified on synthetic inputs" in proc.stdout and "--data" in proc.stdout
    assert "proves the graph, not the task" in proc.stderr
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32))
    proc = run_cli(
        "quantize", src, "-o", tmp_path / "q2.onnx", "-m", "dynamic", "--no-guard",
        "--data", data, *loose,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "verified on 2 held-out samples" in proc.stdout
    assert "synthetic" not in proc.stderr
    bad = run_cli("quantize", src, "-o", tmp_path / "q3.onnx", "-m", "dynamic", "--data", "nope")
    assert bad.returncode == 2 and "--data/data expects" in error_line(bad)
