"""Generated inputs that fit the model: lookup ranges, dim sizes, values the graph cannot tell.

Every model here fails on the old defaults (indices in [0, 8), dims of 1 or 64, standard
normal scalars), so each test shows a failure that the fitting removes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import InputSpec
from onnxopt.errors import ExitCode, InputError
from onnxopt.verify import fit_inputs
from tests.conftest import error_line, file_states, run_cli

OPSET = [helper.make_opsetid("", 18)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def bert_like(path: Path, vocab: int = 1000, hidden: int = 32) -> Path:
    """Word and token-type lookups (the second through Cast, as exporters write it), a mask
    through Cast/Unsqueeze, and a MatMul head."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, hidden)).astype(np.float32), "word"),
        numpy_helper.from_array(rng.standard_normal((2, hidden)).astype(np.float32), "types"),
        numpy_helper.from_array(
            (rng.standard_normal((hidden, 16)) / np.sqrt(hidden)).astype(np.float32), "head"
        ),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Gather", ["word", "input_ids"], ["we"], name="word_lookup"),
        helper.make_node("Cast", ["token_type_ids"], ["tt32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["types", "tt32"], ["te"], name="type_lookup"),
        helper.make_node("Add", ["we", "te"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axis2"], ["m3"]),
        helper.make_node("Mul", ["emb", "m3"], ["masked"]),
        helper.make_node("MatMul", ["masked", "head"], ["logits"], name="head_matmul"),
    ]
    ids = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "bert_like",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ids)
            for n in ("input_ids", "token_type_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*ids, 16])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def conv_image(path: Path, kernel: int = 3, dims: tuple[str, str] = ("height", "width")) -> Path:
    """Conv (no padding) -> GlobalAveragePool on an image with symbolic sides."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((8, 3, kernel, kernel)) / (3 * kernel)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["y"]),
        ],
        "conv_image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *dims])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def sample_rate_model(path: Path) -> Path:
    """Audio framed by a scalar sample rate: frame = sr / 1000 samples (Reshape with
    allowzero, so a frame of 0 fails). No generated scalar can be a sample rate."""
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["sr", "thousand"], ["per_ms"]),
            helper.make_node("Cast", ["per_ms"], ["frame"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["frame", "axis0"], ["frame1"]),
            helper.make_node("Concat", ["minus1", "frame1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["audio", "shape"], ["frames"], allowzero=1),
            helper.make_node("ReduceMean", ["frames", "axis1"], ["y"], keepdims=0),
        ],
        "sample_rate",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("sr", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["frames_n"])],
        [
            numpy_helper.from_array(np.array(1000.0, np.float32), "thousand"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def _specs(path: Path) -> list[InputSpec]:
    from onnxopt.verify.inputs import specs_from_model

    return specs_from_model(onnx.load(str(path), load_external_data=False))


def test_lookup_indices_stay_within_their_tables_and_masks_are_ones(tmp_path: Path) -> None:
    src = bert_like(tmp_path / "m.onnx")
    fit = fit_inputs(src, _specs(src), {})
    ranges = {s.name: s.range for s in fit.specs}
    assert ranges == {"input_ids": (0, 1000), "token_type_ids": (0, 2), "attention_mask": (1, 2)}
    assert "word_lookup" in fit.ranges["input_ids"] and "1000 rows" in fit.ranges["input_ids"]
    assert "type_lookup" in fit.ranges["token_type_ids"]  # found through the Cast
    assert fit.dims == {"batch": 1, "sequence": 128}
    assert set(fit.defaulted) == {"batch", "sequence"}


def test_quantize_runs_on_a_bert_like_model_without_flags(tmp_path: Path) -> None:
    src = bert_like(tmp_path / "m.onnx")
    before = file_states(src)
    proc = run_cli("quantize", src, "-o", tmp_path / "q.onnx", "-m", "dynamic", "--json")
    assert proc.returncode == ExitCode.OK, proc.stderr
    manifest = json.loads(proc.stdout)
    inputs = manifest["inputs"]
    assert inputs["synthetic"] and inputs["dims"]["sequence"] == 128
    assert set(inputs["ranges_why"]) == {"input_ids", "token_type_ids", "attention_mask"}
    assert manifest["steps"][0]["verification"]["passed"]
    assert file_states(src) == before
    # the types table has 2 rows: indices drawn from [0, 8) would have failed the lookup
    ranges = {s["name"]: s["range"] for s in inputs["specs"]}
    assert ranges["token_type_ids"] == [0, 2] and ranges["input_ids"] == [0, 1000]


def test_a_given_range_wins_over_the_inferred_one(tmp_path: Path) -> None:
    src = bert_like(tmp_path / "m.onnx")
    specs = [
        s.model_copy(update={"range": (0, 10)}) if s.name == "input_ids" else s for s in _specs(src)
    ]
    fit = fit_inputs(src, specs, {"sequence": 16})
    assert {s.name: s.range for s in fit.specs}["input_ids"] == (0, 10)
    assert "input_ids" not in fit.ranges
    assert fit.dims["sequence"] == 16 and "sequence" not in fit.defaulted


def test_image_sides_default_to_224_and_the_summary_says_why(tmp_path: Path) -> None:
    src = conv_image(tmp_path / "m.onnx")
    fit = fit_inputs(src, _specs(src), {})
    assert fit.dims == {"N": 1, "height": 224, "width": 224}
    assert "image side" in fit.defaulted["height"]
    proc = run_cli("simplify", src, "-o", tmp_path / "s.onnx")
    assert proc.returncode == ExitCode.OK, proc.stderr
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "dim height: an image side: 224 (set it with --dim height=INT)" in text
    proc = run_cli("inspect", src)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "--dim width=INT" in " ".join(proc.stdout.split())


def test_a_dim_too_small_for_the_model_grows_until_it_runs(tmp_path: Path) -> None:
    src = conv_image(tmp_path / "m.onnx", kernel=100, dims=("p", "q"))  # 64 < kernel 100
    fit = fit_inputs(src, _specs(src), {})
    assert fit.dims["p"] == fit.dims["q"] == 128
    assert "runs at 128" in fit.defaulted["p"]


def test_a_value_the_graph_cannot_tell_is_named_before_any_work(tmp_path: Path) -> None:
    src = sample_rate_model(tmp_path / "m.onnx")
    try:
        fit_inputs(src, _specs(src), {})
    except InputError as err:
        assert "--value sr=NUMBER" in str(err) + (err.hint or "")
    else:
        raise AssertionError("a sample rate drawn from a normal distribution cannot work")
    out = tmp_path / "s.onnx"
    proc = run_cli("simplify", src, "-o", out)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert "--value sr=NUMBER" in line and "Traceback" not in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

    proc = run_cli("simplify", src, "-o", out, "--value", "sr=16000", "--json")
    assert proc.returncode == ExitCode.OK, proc.stderr
    inputs = json.loads(proc.stdout)["inputs"]
    spec = {s["name"]: s for s in inputs["specs"]}["sr"]
    assert spec["range"] == [16000.0, 16000.0]
    # 64 + 1 samples are no whole number of 16-sample frames: the second shape doubles
    assert inputs["second_dims"] == {"batch": 2, "samples": 128}


def test_the_second_shape_check_is_skipped_with_its_reason_when_the_source_rejects_it(
    tmp_path: Path,
) -> None:
    from onnxopt.verify import fit_second_dims

    src = sample_rate_model(tmp_path / "m.onnx")
    specs = [
        s.model_copy(update={"range": (16000, 16000)}) if s.name == "sr" else s for s in _specs(src)
    ]
    dims, why = fit_second_dims(src, specs, {"batch": 1, "samples": 64}, {"samples": 70})
    assert dims is None and "neither" in why  # 70 is no multiple of 16, and was given
    dims, why = fit_second_dims(src, specs, {"batch": 1, "samples": 64}, {})
    assert dims == {"batch": 2, "samples": 128} and why == "each dim doubled"


def test_value_and_range_flags_are_checked(tmp_path: Path) -> None:
    src = sample_rate_model(tmp_path / "m.onnx")
    for flag, item in (("--value", "sr"), ("--value", "sr=fast"), ("--range", "sr=1")):
        proc = run_cli("simplify", src, "-o", tmp_path / "s.onnx", flag, item)
        assert proc.returncode == ExitCode.USAGE, (item, proc.stderr)
        assert flag in error_line(proc) and "Traceback" not in proc.stderr
    proc = run_cli("simplify", src, "-o", tmp_path / "s.onnx", "--value", "rate=16000")
    assert proc.returncode == ExitCode.USAGE
    assert "'rate'" in error_line(proc) and "sr" in error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bench_reports_the_generated_inputs_it_timed(tmp_path: Path) -> None:
    src = bert_like(tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    proc = run_cli("bench", src, "--runs", "5", "--warmup", "1", "--trials", "1", "-o", report)
    assert proc.returncode == ExitCode.OK, proc.stderr
    generated = json.loads(report.read_text())["inputs"]["generated"]
    assert generated["dims"]["sequence"] == 128
    assert "sequence" in generated["defaulted_dims"]
    assert set(generated["ranges"]) == {"input_ids", "token_type_ids", "attention_mask"}


def test_bench_takes_the_value_that_a_generated_input_cannot_have(tmp_path: Path) -> None:
    src = sample_rate_model(tmp_path / "m.onnx")
    args = ["bench", src, "--runs", "3", "--warmup", "1", "--trials", "1"]
    proc = run_cli(*args)
    assert proc.returncode == ExitCode.USAGE and "--value sr=NUMBER" in error_line(proc)
    report = tmp_path / "r.json"
    proc = run_cli(*args, "--value", "sr=8000", "-o", report)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert json.loads(report.read_text())["inputs"]["generated"]["dims"]["samples"] == 64
    proc = run_cli(*args, "--value", "rate=8000")
    assert proc.returncode == ExitCode.USAGE and "'rate'" in error_line(proc)
