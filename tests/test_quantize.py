"""quantize: each mode on tiny models, calibration sources, budgets, honesty checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.config import parse_config
from onnxopt.cpu import int8_facts
from onnxopt.engine import run_pipeline
from onnxopt.errors import ConfigError, ExitCode, InputError, StepError, VerificationError
from onnxopt.graph import op_histogram
from onnxopt.verify import Tol, compare_outputs
from tests import models
from tests.conftest import error_line, finished_artifacts, run_cli, write_yaml


def _cfg(src: Path, out: Path, step: dict, **extra: object) -> dict:
    return {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [{"type": "quantize", **step}],
        **extra,
    }


def _run(src: Path, out: Path, step: dict, **extra: object) -> dict:
    return run_pipeline(parse_config(_cfg(src, out, step, **extra)), out.parent)


def test_dynamic_quantizes_matmuls_and_reports_speed(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 3, 64, external=False)
    step = {"mode": "dynamic", "tolerance": {"min_cosine": 0.95}}
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    report = entry["report"]
    assert report["new_quantized_ops"]["MatMulInteger"] == 3
    assert report["float_compute_ops"] == {}
    assert entry["verification"]["passed"]
    cos = entry["verification"]["main"]["outputs"][0]["cosine"]
    assert 0.95 <= cos < 1.0  # int8 changes the numbers, within the given budget
    assert entry["verification"]["tolerance"]["atol"] is None  # judged by cosine, not allclose
    speed = entry["speed"]
    assert speed["ratio_ci"][0] <= speed["ratio"] <= speed["ratio_ci"][1]
    assert speed["speedup"] == pytest.approx(1 / speed["ratio"])


def test_constant_node_weights_are_turned_into_initializers(tmp_path: Path) -> None:
    src = models.constant_weights(tmp_path / "c.onnx")
    step = {"mode": "dynamic", "tolerance": {"min_cosine": 0.95}}
    report = _run(src, tmp_path / "o", step)["steps"][0]["report"]
    assert "1 Constant-node weights turned into initializers" in report["notes"]
    assert report["new_quantized_ops"]["MatMulInteger"] == 1


def test_quantized_nothing_is_a_failure(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    out = tmp_path / "o"
    cfg = write_yaml(
        tmp_path / "p.yaml", _cfg(src, out, {"mode": "dynamic", "op_types_to_quantize": ["Conv"]})
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.FAILURE
    assert "dynamic quantization quantized nothing" in error_line(proc)
    assert finished_artifacts(out) == []


def test_budget_failure_exits_3_naming_the_metric(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 3, 64, external=False)
    out = tmp_path / "o"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        _cfg(src, out, {"mode": "dynamic", "tolerance": {"min_cosine": 0.999999}}),
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.VERIFICATION
    line = error_line(proc)
    assert "cosine" in line and "below 0.999999" in line
    assert finished_artifacts(out) == []


def test_static_refuses_synthetic_calibration_without_opt_in(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    with pytest.raises(ConfigError, match="calibrate on synthetic"):
        _run(src, tmp_path / "o", {"mode": "static"})


def test_static_qdq_with_synthetic_opt_in(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    step = {
        "mode": "static",
        "static": {"allow_synthetic_calibration": True, "calibration": {"samples": 4}},
        # a tiny random model: plumbing, not accuracy. Its int8 cosine depends on the CPU's
        # kernels (0.975 on a Xeon with VNNI + AMX, above 0.99 on an AVX2 EPYC); accuracy
        # claims live in benchmarks/ on real shapes
        "tolerance": {"min_cosine": 0.8},
    }
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    report = entry["report"]
    assert report["format"] == "qdq" and report["activation_type"] == "uint8"
    assert report["calibration"] == {"method": "minmax", "source": "synthetic", "samples": 4}
    assert report["new_quantized_ops"]["QuantizeLinear"] >= 3
    assert report["new_quantized_ops"]["DequantizeLinear"] >= 3


def test_static_npz_calibration_and_exclusions(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(size=(6, 2, 3, 8, 8)).astype(np.float32))
    model = onnx.load(str(src))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.name = "the_conv"
    onnx.save(model, str(src))
    step = {
        "mode": "static",
        "nodes_to_exclude": ["the_conv"],
        "static": {
            "calibration": {"source": "npz", "path": str(tmp_path / "cal.npz")},
            "method": "percentile",
            "percentile": 99.9,
        },
        "tolerance": {"min_cosine": 0.8},  # a tiny random model: plumbing, not accuracy
    }
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    # the calibration data is the run's data: 2 of its 6 samples are held out to verify on
    assert entry["report"]["calibration"]["samples"] == 4
    assert entry["verification"]["main"]["samples"] == 2
    assert entry["report"]["calibration"]["percentile"] == 99.9
    assert entry["report"]["float_compute_ops"] == {"Conv": 1}  # excluded, stays float


def test_fp16_auto_block_list_catches_a_planted_overflow(tmp_path: Path) -> None:
    src = models.fp16_overflow(tmp_path / "f.onnx")
    entry = _run(src, tmp_path / "o", {"mode": "fp16"})["steps"][0]
    blocked = entry["report"]["blocked_nodes"]
    assert set(blocked) == {"scale_up", "scale_down"}
    assert blocked["scale_up"].startswith("output |value| up to")
    assert blocked["scale_down"].startswith("input |value| up to")
    assert entry["report"]["fp16_initializers"] >= 1
    assert entry["report"]["cast_round_trips_removed"] >= 1
    assert entry["verification"]["passed"]
    with pytest.raises(VerificationError, match="output differs from its parent"):
        _run(src, tmp_path / "o2", {"mode": "fp16", "fp16": {"auto_block": False}})
    assert finished_artifacts(tmp_path / "o2") == []


def test_int4_weight_only(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 64, external=False)
    step = {"mode": "int4", "int4": {"block_size": 32}, "guard": None}  # the rewrite, not speed
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    assert entry["report"]["new_quantized_ops"] == {"MatMulNBits": 2}
    path = tmp_path / "o" / entry["output"]["path"]
    assert op_histogram(onnx.load(str(path))) == {"com.microsoft::MatMulNBits": 2}
    with pytest.raises(StepError, match="quantized nothing"):
        _run(path, tmp_path / "o2", {"mode": "int4", "int4": {"block_size": 32}})


def test_top1_agreement_budget() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    got = ref.copy()
    got[2] = [0.45, 0.55]  # one of four top-1 answers flips
    result = compare_outputs([ref], [got], ["p"], Tol(1.0, 1.0, 0.0, min_top1=0.9))
    assert result["outputs"][0]["top1_agreement"] == 0.75
    assert not result["passed"]
    assert "top-1 agreement 0.7500 below 0.9" in result["outputs"][0]["problem"]
    assert compare_outputs([ref], [got], ["p"], Tol(1.0, 1.0, 0.0, min_top1=0.75))["passed"]


def test_cli_quantize_and_python_api(tmp_path: Path) -> None:
    import json

    import onnxopt

    src = models.matmul_chain(tmp_path / "m.onnx", 2, 64, external=False)
    out = tmp_path / "m.int4.onnx"
    proc = run_cli("quantize", src, "-o", out, "-m", "int4", "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    entry = manifest["steps"][0]
    assert entry["report"]["new_quantized_ops"] == {"MatMulNBits": 2}
    assert "speedup" in entry["speed"] and "slower" in entry["guard"]  # guarded by default
    if entry.get("kept_parent"):  # int4 slower than float on this CPU: -o is a copy
        assert manifest["output_is_unchanged_copy"] and out.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int4.onnx", "m.onnx"]
    proc = run_cli("quantize", src, "-o", tmp_path / "s.onnx", "-m", "static")
    assert proc.returncode == ExitCode.USAGE
    assert "synthetic" in error_line(proc)
    manifest = onnxopt.quantize(
        src, tmp_path / "d.onnx", "dynamic", measure_speed=False, tolerance={"min_cosine": 0.95}
    )
    assert "speed" not in manifest["steps"][0]
    assert manifest["steps"][0]["report"]["new_quantized_ops"]["MatMulInteger"] == 2


def test_auto_without_calibration_data_tries_calibration_free_recipes(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 64, external=False)
    step = {"mode": "auto", "tolerance": {"min_cosine": 0.95}, "auto": {"runs": 10, "trials": 1}}
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    report = entry["report"]
    # where the CPU's U8S8 kernel saturates (measured), 7-bit and U8U8 weights join in
    extra = ["dynamic_7bit", "dynamic_u8u8"] if int8_facts().u8s8_saturates else []
    # fp16 too, last: it usually loses on the CPU provider, which its timing shows
    assert [c["recipe"] for c in report["candidates"]] == ["dynamic", *extra, "int4", "fp16"]
    assert report["cpu_decision"]["added_recipes"] == extra
    assert "no representative calibration data" in report["not_tried"]["static_u8s8"]
    assert "dynamic_conv" in report["not_tried"]  # a fact: the model has no Conv
    for cand in report["candidates"]:
        assert cand["status"] == "verified"
        assert cand["ratio_ci"][0] <= 1 / cand["speedup"] <= cand["ratio_ci"][1]
    if report["chosen"] is None:
        assert entry["kept_parent"] is True
    else:
        assert report["chosen"] in ["dynamic", *extra, "int4"]
        chosen = next(c for c in report["candidates"] if c["recipe"] == report["chosen"])
        assert chosen["verdict"] == "faster"


def test_auto_keeps_the_parent_when_nothing_meets_the_budget(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 64, external=False)
    # the int8 and int4 recipes (fp16 can come within 1e-7 of a float32 MatMul chain)
    int8 = ["dynamic", "dynamic_7bit", "dynamic_u8u8", "int4"]
    step = {"mode": "auto", "tolerance": {"min_cosine": 0.9999999}, "auto": {"candidates": int8}}
    manifest = _run(src, tmp_path / "o", step)
    entry = manifest["steps"][0]
    assert entry["kept_parent"] is True
    assert entry["report"]["reason"].startswith("no candidate met the accuracy budget (")
    assert entry["kept_parent_reason"] == entry["report"]["reason"]  # the summary's line
    assert {c["status"] for c in entry["report"]["candidates"]} == {"outside budget"}
    # what the three fastest would have bought: timed against the parent, named with the miss
    reach = entry["report"]["within_reach"]
    rows = sorted(entry["report"]["candidates"], key=lambda r: -r["speedup"])
    assert all(row["speedup"] > 0 for row in rows)
    assert all(row["recipe"] in reach for row in rows[:3])
    assert reach.count("below 0.9999999") == min(3, len(rows))
    assert manifest["final_artifact"] == str(src)
    assert finished_artifacts(tmp_path / "o") == []
    cfg = write_yaml(
        tmp_path / "p.yaml",
        _cfg(src, tmp_path / "o2", {**step, "auto": {"candidates": int8, "require_speedup": True}}),
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.GATE
    assert "no candidate met the accuracy budget" in error_line(proc)


@pytest.mark.timing
def test_auto_does_not_pick_the_planted_slower_recipe(tmp_path: Path) -> None:
    # Dynamic quantization of convolutions measured 0.19x on a ResNet on AVX2 CPUs: the
    # planted slow candidate. auto must not choose it and must call it slower.
    import onnxopt
    from tests.conftest import SAMPLES

    src = tmp_path / "resnet.onnx"
    onnxopt.export(
        f"{SAMPLES / 'resnet.py'}:build",
        src,
        [{"name": "image", "shape": ["batch", 3, 96, 96], "range": [0, 1]}],
        factory_args={"width": 16},
        dims={"batch": 1},
    )
    step = {
        "mode": "auto",
        "op_types_to_quantize": ["Conv", "MatMul", "Gemm"],
        "static": {"allow_synthetic_calibration": True, "calibration": {"samples": 4}},
        "tolerance": {"min_cosine": 0.9},
        "auto": {"candidates": ["dynamic", "static_u8s8"], "runs": 15, "trials": 2},
    }
    report = _run(src, tmp_path / "o", step, target={"intra_op_threads": 1})["steps"][0]["report"]
    rows = {c["recipe"]: c for c in report["candidates"]}
    assert rows["dynamic"]["verdict"] == "slower"
    assert report["chosen"] != "dynamic"


def test_diagnose_finds_and_excludes_the_sensitive_node(tmp_path: Path) -> None:
    src = models.outlier_chain(tmp_path / "o.onnx")
    step = {"mode": "dynamic", "dynamic": {"per_channel": False}, "tolerance": {"min_cosine": 0.98}}
    with pytest.raises(VerificationError, match="cosine"):
        _run(src, tmp_path / "plain", step)
    entry = _run(src, tmp_path / "diag", {**step, "diagnose": True})["steps"][0]
    diagnosis = entry["report"]["diagnosis"]
    assert diagnosis["needed"] is True and diagnosis["passed"] is True
    assert diagnosis["ranking"][0]["node"] == "mm1"
    assert diagnosis["ranking"][0]["error"] > diagnosis["ranking"][1]["error"]
    # mm1's outlier also inflates the activation range that mm2 quantizes at run time
    assert diagnosis["nodes_to_exclude"] == ["mm1", "mm2"]
    assert [r["passed"] for r in diagnosis["rounds"]] == [False, True]
    assert diagnosis["yaml"] == "nodes_to_exclude: [mm1, mm2]"
    assert entry["report"]["float_compute_ops"] == {"MatMul": 2}
    assert entry["verification"]["passed"]
    # the pasted exclusion list reproduces the result without diagnosis
    again = _run(src, tmp_path / "pasted", {**step, "nodes_to_exclude": ["mm1", "mm2"]})
    assert again["steps"][0]["verification"]["passed"]


def test_callable_calibration_source(tmp_path: Path) -> None:
    factories = Path(__file__).with_name("factories.py")
    src = models.compute_model(tmp_path / "c.onnx")
    step = {
        "mode": "static",
        "tolerance": {"min_cosine": 0.3},  # plumbing: a tiny random model
        "static": {
            "calibration": {"source": "callable", "callable": f"{factories}:calibration_batches"}
        },
    }
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    assert entry["report"]["calibration"]["source"] == "callable"
    # the callable's 5 samples are the run's data: 1 held out to verify on, 4 calibrate
    assert entry["report"]["calibration"]["samples"] == 4
    assert entry["verification"]["main"]["samples"] == 1
    bad = {
        **step,
        "static": {
            "calibration": {"source": "callable", "callable": f"{factories}:bad_calibration"}
        },
    }
    with pytest.raises(InputError, match="expected dicts with the inputs"):
        _run(src, tmp_path / "o2", bad)


def test_image_folder_calibration_source(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("ignored")
    src = models.compute_model(tmp_path / "c.onnx")
    cal = {"source": "images", "path": str(folder), "preprocessing": {"resize": 10, "crop": [8, 8]}}
    # plumbing, not accuracy: random images
    step = {"mode": "static", "tolerance": {"min_cosine": 0.3}, "static": {"calibration": cal}}
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    assert entry["report"]["calibration"]["samples"] == 2  # and 1 image held out
    wrong = {**cal, "preprocessing": {"resize": 32, "crop": [16, 16]}}
    with pytest.raises(InputError, match=r"gives shape \[1, 3, 16, 16\]"):
        _run(src, tmp_path / "o2", {**step, "static": {"calibration": wrong}})
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot decode image broken.png"):
        _run(src, tmp_path / "o3", step)


def test_cli_diagnose_prints_the_exclusion_line(tmp_path: Path) -> None:
    import json

    src = models.outlier_chain(tmp_path / "o.onnx")
    args = [
        "quantize",
        src,
        "-o",
        tmp_path / "q.onnx",
        "-m",
        "dynamic",
        "--per-tensor",
        "--min-cosine",
        "0.95",
        "--no-measure-speed",
    ]
    plain = run_cli(*args)
    assert plain.returncode == ExitCode.VERIFICATION
    proc = run_cli(*args, "--diagnose", "--json")
    assert proc.returncode == 0, proc.stderr
    diagnosis = json.loads(proc.stdout)["steps"][0]["report"]["diagnosis"]
    assert diagnosis["yaml"] == "nodes_to_exclude: [mm1, mm2]"
    assert "paste into the step: nodes_to_exclude: [mm1, mm2]" in proc.stderr


# ---------------------------------------------------------------- what the quantizers write


def test_a_body_reading_a_rewritten_value_is_reordered_not_blamed_on_the_user(
    tmp_path: Path,
) -> None:
    """ONNX Runtime's dynamic quantizer places the If before the node that now makes the value
    its bodies read (seen on real VAD models): onnxopt re-sorts the graph and says so."""
    import json

    from tests.conftest import Untouched

    src = models.if_reads_quantized_value(tmp_path / "vad_like.onnx")
    out = tmp_path / "q.onnx"
    with Untouched(src):
        # the re-sorting, not int8 precision: a loose bound that any CPU's kernels meet
        proc = run_cli(
            "quantize", src, "-o", out, "-m", "dynamic", "--no-guard", "--json",
            "--min-cosine", "0.9",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["steps"][0]
    assert any("re-sorted the graph topologically" in n for n in entry["report"]["notes"])
    # mm0 and mm3, and the MatMuls inside the If's bodies (the dynamic quantizer reaches them)
    assert entry["report"]["new_quantized_ops"]["MatMulInteger"] == 4
    assert entry["verification"]["passed"]
    onnx.checker.check_model(str(out))


@pytest.mark.parametrize("opset", [11, 12])
def test_static_per_channel_below_opset_13_is_converted_first(tmp_path: Path, opset: int) -> None:
    """Per-channel DequantizeLinear needs the axis attribute of opset 13; ONNX Runtime wrote it
    into opset 11-12 models (Paddle, older exporters), which onnx.checker then rejected."""
    src = models.conv_net(tmp_path / "old.onnx", opset=opset)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((8, 1, 3, 32, 32)).astype(np.float32))
    step = {
        "mode": "static",
        "guard": None,
        "static": {"calibration": {"source": "npz", "path": str(tmp_path / "cal.npz")}},
        "tolerance": {"min_cosine": 0.9},  # a tiny random model: plumbing, not accuracy
    }
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    assert any(f"converted from opset {opset} to 13" in n for n in entry["report"]["notes"])
    assert entry["report"]["new_quantized_ops"]["DequantizeLinear"] >= 2
    assert entry["verification"]["passed"]
    result = onnx.load(str(tmp_path / "o" / entry["output"]["path"]))
    assert next(o.version for o in result.opset_import if o.domain in ("", "ai.onnx")) == 13


def test_an_invalid_file_from_a_library_is_its_failure_and_names_no_scratch_path(
    tmp_path: Path,
) -> None:
    from onnxopt.engine.step import ours_to_blame as _ours_to_blame
    from onnxopt.modelio import load_model

    scratch = tmp_path / ".q.onnx.work-abc" / ".01-quantize-1234.onnx.partial"
    scratch.mkdir(parents=True)
    bad = scratch / "quantized.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(StepError) as err:
        load_model(bad, produced_by="ONNX Runtime's dynamic quantizer")
    assert err.value.exit_code == ExitCode.FAILURE
    assert "ONNX Runtime's dynamic quantizer wrote an invalid model" in str(err.value)
    assert str(scratch) not in str(err.value)
    # the engine's safety net: an input error about a file in a step's scratch folder
    with pytest.raises(StepError) as err, _ours_to_blame(scratch):
        load_model(bad)
    assert err.value.exit_code == ExitCode.FAILURE
    assert str(scratch) not in str(err.value) and "quantized.onnx" in str(err.value)
    with pytest.raises(InputError), _ours_to_blame(scratch):  # the user's own file: exit 2
        load_model(tmp_path / "missing.onnx")


def test_intermediate_values_are_read_one_sample_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float16 overflow scan reads every tensor of every sample: held all at once they
    outgrew the machine on a real recogniser, so iter_exposing runs a sample only when the
    previous one's values have been taken, and gives what run_exposing gives."""
    from onnxopt import runtime

    src = models.fp16_overflow(tmp_path / "f.onnx")
    model = onnx.load(str(src))
    names = [o for node in model.graph.node for o in node.output]
    x = model.graph.input[0]
    dims = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = [{x.name: rng.standard_normal(dims).astype(np.float32)} for _ in range(3)]
    calls = []
    real = runtime.run_session
    monkeypatch.setattr(runtime, "run_session", lambda *a: calls.append(1) or real(*a))
    lazy = runtime.iter_exposing(onnx.load(str(src)), names, feeds)
    first = next(lazy)
    assert len(calls) == 1
    rest = list(lazy)
    assert len(calls) == 3
    whole = runtime.run_exposing(onnx.load(str(src)), names, feeds)
    for got, want in zip([first, *rest], whole, strict=True):
        assert set(got) == set(names)
        for name in names:
            np.testing.assert_array_equal(got[name], want[name])
