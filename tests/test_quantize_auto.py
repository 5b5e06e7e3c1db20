"""quantize auto on real data: compute-only recipes, rescue by diagnosis, ORT quirks."""

from __future__ import annotations

import typing
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import parse_config
from onnxopt.config.quantize import RecipeName
from onnxopt.engine import run_pipeline
from onnxopt.errors import StepError
from onnxopt.graph import op_histogram
from onnxopt.steps.quantize.backend import backends
from tests import models


def _run(src: Path, out: Path, step: dict, **extra: object) -> dict:
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [{"type": "quantize", **step}],
        **extra,
    }
    return run_pipeline(parse_config(cfg), out.parent)


def _data(path: Path, name: str, shape: tuple[int, ...], n: int = 16) -> Path:
    rng = np.random.default_rng(11)
    np.savez(path, **{name: rng.standard_normal((n, *shape)).astype(np.float32)})
    return path


def gemm_with_row_bias(path: Path) -> Path:
    """A Gemm whose bias is [1, N], as some exporters write it."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="gemm")],
        "gemm_row_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def all_in_if(path: Path, width: int = 16) -> Path:
    """y = If(sum(x) > 0, x @ W1, x @ W2): every compute node sits in an If body."""
    rng = np.random.default_rng(2)

    def branch(name: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"{name}_out"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
            helper.make_node(
                "If", ["cond"], ["y"], then_branch=branch("a", "W1"), else_branch=branch("b", "W2")
            ),
        ],
        "all_in_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [
            numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"W{i}")
            for i in (1, 2)
        ]
        + [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_every_recipe_can_be_named_in_the_config() -> None:
    names = [r.name for b in backends() for r in b.recipes]
    assert len(names) == len(set(names))
    assert set(names) == set(typing.get_args(RecipeName))


def test_a_row_bias_that_crashes_the_int32_bias_adjustment_is_retried_without_it(
    tmp_path: Path,
) -> None:
    src = gemm_with_row_bias(tmp_path / "g.onnx")
    data = _data(tmp_path / "d.npz", "x", (16,))
    # the retry, not int8 precision: a loose bound that any CPU's kernels meet
    step = {"mode": "static", "tolerance": {"min_cosine": 0.9}, "guard": None}
    entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    assert any("QDQDisableWeightAdjustForInt32Bias" in n for n in entry["report"]["notes"])
    assert entry["verification"]["passed"]
    produced = onnx.load(str(tmp_path / "o" / entry["output"]["path"]))
    assert op_histogram(produced).get("QuantizeLinear", 0) >= 1


def test_static_qdq_says_before_calibrating_that_if_bodies_stay_float(tmp_path: Path) -> None:
    src = all_in_if(tmp_path / "m.onnx")
    data = _data(tmp_path / "d.npz", "x", (16,))
    with pytest.raises(StepError, match="inside If/Loop/Scan bodies") as err:
        _run(src, tmp_path / "o", {"mode": "static"}, data={"path": str(data)})
    assert "fp16" in (err.value.hint or "")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.onnx"))


def test_auto_with_data_tries_the_compute_only_recipe_first(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (3, 32, 32))
    step = {
        "mode": "auto",
        "tolerance": {"min_cosine": 0.9},
        "auto": {"runs": 5, "trials": 1, "rescue": False},
    }
    report = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]["report"]
    rows = {c["recipe"]: c for c in report["candidates"]}
    assert report["candidates"][0]["recipe"] == "static_u8s8_compute"
    assert {"static_u8s8_compute", "static_u8s8", "static_s8s8_compute", "static_s8s8"} <= set(rows)
    # measured, not assumed: dynamic int8 of the convolutions and fp16 are tried too
    assert {"dynamic_conv", "fp16"} <= set(rows), report["not_tried"]
    assert not any("slower" in why for why in report["not_tried"].values()), report["not_tried"]
    compute = rows["static_u8s8_compute"]
    assert compute["status"] == "verified", compute
    assert set(compute["quantized_ops"]) <= {"QuantizeLinear", "DequantizeLinear"}


def test_auto_rescues_a_candidate_with_one_sensitive_node(tmp_path: Path) -> None:
    src = models.outlier_chain(tmp_path / "o.onnx")
    data = _data(tmp_path / "d.npz", "x", (64,))
    step = {
        "mode": "auto",
        "dynamic": {"per_channel": False},
        "tolerance": {"min_cosine": 0.98},
        "auto": {"candidates": ["dynamic"], "runs": 5, "trials": 1},
    }
    entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    rows = {c["recipe"]: c for c in entry["report"]["candidates"]}
    assert rows["dynamic"]["status"] == "outside budget"  # the plain candidate, reported
    assert rows["dynamic"]["rescue"] == "repaired as dynamic+excluded"
    repaired = rows["dynamic+excluded"]
    assert repaired["status"] == "verified" and repaired["repaired_from"] == "dynamic"
    assert repaired["nodes_to_exclude"][0] == "mm1"  # the planted outlier
    assert repaired["cosine"] >= 0.98 > rows["dynamic"]["cosine"]
    assert "verdict" in repaired  # timed beside the parent like any candidate

    # without data, no rescue: a proof on noise is not worth the diagnosis
    plain = _run(src, tmp_path / "n", step)["steps"][0]["report"]["candidates"]
    assert [c["recipe"] for c in plain] == ["dynamic"] and "rescue" not in plain[0]


def test_auto_tries_transformer_fusions_before_dynamic_int8_on_a_transformer(
    tmp_path: Path,
) -> None:
    import onnxopt
    from tests.conftest import SAMPLES

    src = tmp_path / "t.onnx"
    onnxopt.export(
        f"{SAMPLES / 'transformer.py'}:build",
        src,
        [
            {"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
            {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"},
        ],
        dims={"batch": 2, "sequence": 16},
    )
    step = {
        "mode": "auto",
        "tolerance": {"min_cosine": 0.95},
        "auto": {"runs": 5, "trials": 1},
    }
    report = _run(src, tmp_path / "o", step)["steps"][0]["report"]
    rows = {c["recipe"]: c for c in report["candidates"]}
    assert rows["dynamic_fused"]["status"] == "verified", rows["dynamic_fused"]
    assert "MatMulInteger" in rows["dynamic_fused"]["quantized_ops"]
    # the same model without its transformer signature is not offered the fusion
    plain = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    report = _run(plain, tmp_path / "p", step)["steps"][0]["report"]
    assert "not a transformer" in report["not_tried"]["dynamic_fused"]


def test_a_candidate_that_fails_at_run_time_is_recorded_and_the_search_goes_on(
    tmp_path: Path,
) -> None:
    """ONNX Runtime builds and loads dynamic per-channel int8 of a per-head [H, K, N] weight,
    then refuses to run it: that candidate is dropped with its error, the others compete."""
    from tests.conftest import Untouched

    src = models.batched_weights(tmp_path / "heads.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((16, 4, 2, 64)).astype(np.float32))
    step = {"mode": "auto", "auto": {"runs": 5, "trials": 1, "rescue": False}}
    with Untouched(src, data):
        entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    rows = {c["recipe"]: c for c in entry["report"]["candidates"]}
    failed = rows["dynamic"]
    assert failed["status"] == "failed" and failed["failed_at"] == "verify", failed
    assert "DynamicQuantizeMatMul" in failed["reason"]
    assert "auto-" not in failed["reason"]  # no scratch folder in what the user reads
    assert rows["int4"]["status"] == "failed" and rows["int4"]["failed_at"] == "build"
    # the static candidates were still built, verified and timed against the parent
    static = [c for name, c in rows.items() if name.startswith("static_")]
    assert static and all(c["status"] == "verified" and "verdict" in c for c in static)
    assert entry["status"] == "ok"
    if entry["report"]["chosen"] is None:
        assert entry["kept_parent"] is True


def test_the_candidate_list_follows_the_cpus_int8_kernel() -> None:
    """Where the U8S8 kernel saturates (x86-64 without VNNI) the 7-bit and U8U8 recipes join
    the list; elsewhere they are left out with the reason."""
    from collections import Counter

    from onnxopt.config.quantize import QuantizeStep
    from onnxopt.steps.quantize.auto import choose_candidates

    cfg = QuantizeStep(type="quantize", mode="auto")
    transformer = Counter({"MatMul": 12, "Softmax": 2, "LayerNormalization": 4, "Conv": 1})
    extra = {
        "dynamic_7bit",
        "dynamic_fused_7bit",
        "dynamic_u8u8",
        "static_u8s8_compute_7bit",
        "static_u8u8_compute",
    }
    plain, skipped = choose_candidates(cfg, transformer, "cpu", data=True, saturating=False)
    assert not extra & {r.name for r in plain}
    assert all("does not saturate" in skipped[name] for name in extra)
    saturating, _ = choose_candidates(cfg, transformer, "cpu", data=True, saturating=True)
    assert {r.name for r in saturating} == {r.name for r in plain} | extra
    # without data the static ones stay out on any CPU
    no_data, skipped = choose_candidates(cfg, transformer, "cpu", data=False, saturating=True)
    assert "static_u8u8_compute" in skipped and "dynamic_u8u8" in {r.name for r in no_data}
    # another provider: the CPU's kernel does not decide
    _, skipped = choose_candidates(cfg, transformer, "cuda", data=True, saturating=False)
    assert "the target is cuda" in skipped["dynamic_7bit"]


def test_the_default_weight_range_is_measured_on_this_cpu(tmp_path: Path) -> None:
    """reduce_range left unset: 7-bit weights exactly where this CPU's U8S8 kernel saturates
    (measured), recorded with the reason; a given value or uint8 weights stand."""
    from onnxopt.cpu import int8_facts
    from onnxopt.steps.quantize.core import resolve_reduce_range

    facts = int8_facts()
    if facts.dot_product:  # VNNI / AMX / ARM dot product: int32 accumulation, exact
        assert not facts.u8s8_saturates
    assert resolve_reduce_range(True, "int8", "cpu")[0] is True
    assert resolve_reduce_range(False, "int8", "cpu")[0] is False
    assert resolve_reduce_range(None, "uint8", "cpu")[0] is False
    assert resolve_reduce_range(None, "int8", "cuda")[0] is False
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 64, external=False)
    step = {"mode": "dynamic", "guard": None, "tolerance": {"min_cosine": 0.9}}
    entry = _run(src, tmp_path / "o", step)["steps"][0]
    report = entry["report"]
    assert report["reduce_range"] is facts.u8s8_saturates
    assert ("saturates" in report["reduce_range_why"]) is facts.u8s8_saturates
    assert report["target"]["u8s8_saturates"] is facts.u8s8_saturates


def _crashing_probe(crash: str) -> typing.Callable[..., list[str]]:
    """A stand-in for ONNX Runtime crashing on one written model: the child that runs the
    model named ``crash`` first kills itself with SIGSEGV; the others run for real."""
    import sys

    from onnxopt import probe

    real = probe._command

    def command(model: Path, feeds: Path, target: typing.Any) -> list[str]:
        if model.stem == crash or crash == "*":
            kill = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
            return [sys.executable, "-c", kill]
        return real(model, feeds, target)

    return command


def test_a_runtime_crash_on_a_candidate_is_that_candidates_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxopt import probe
    from tests.conftest import Untouched

    monkeypatch.setattr(probe, "_command", _crashing_probe("static_u8s8_compute"))
    src = models.conv_net(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (3, 32, 32))
    step = {
        "mode": "auto",
        "tolerance": {"min_cosine": 0.9},
        "auto": {
            "candidates": ["static_u8s8_compute", "static_u8s8"],
            "runs": 5,
            "trials": 1,
            "rescue": False,
        },
    }
    with Untouched(src, data):
        entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    rows = {c["recipe"]: c for c in entry["report"]["candidates"]}
    crashed = rows["static_u8s8_compute"]
    assert crashed["status"] == "failed" and crashed["failed_at"] == "build", crashed
    assert crashed["reason"].startswith(
        "ONNX Runtime crashed running static_u8s8_compute (signal 11 (SIGSEGV))"
    ), crashed
    assert rows["static_u8s8"]["status"] == "verified" and "verdict" in rows["static_u8s8"]


def test_a_runtime_crash_in_an_explicit_mode_fails_the_step_without_an_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxopt import probe
    from tests.conftest import error_line, run_cli

    monkeypatch.setattr(probe, "_command", _crashing_probe("*"))
    src = models.conv_net(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (3, 32, 32))
    out = tmp_path / "q.onnx"
    proc = run_cli("quantize", src, "-o", out, "-m", "static", "--calibration", data)
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    assert "ONNX Runtime crashed running the static-quantized model (signal 11" in line, line
    assert "probe-" not in line and "scratch" not in line
    assert not out.exists()


def test_compute_inside_if_bodies_gets_the_recipes_that_reach_them(tmp_path: Path) -> None:
    """Static QDQ cannot reach If bodies (a fact about this model: not tried, said why); the
    dynamic recipes, which quantize a body's own weights, are tried and measured."""
    src = all_in_if(tmp_path / "m.onnx", width=64)
    data = _data(tmp_path / "d.npz", "x", (64,), n=32)
    step = {"mode": "auto", "auto": {"runs": 5, "trials": 1, "rescue": False}}
    entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    report = entry["report"]
    for name in ("static_u8s8_compute", "static_u8s8", "static_s8s8"):
        assert "inside If/Loop/Scan bodies" in report["not_tried"][name], report["not_tried"]
    rows = {c["recipe"]: c for c in report["candidates"]}
    dynamic = rows["dynamic"]
    assert dynamic["status"] == "verified", dynamic["reason"]
    assert dynamic["quantized_ops"].get("MatMulInteger", 0) >= 2, dynamic  # both branches
    assert "verdict" in dynamic


def test_candidate_rules_are_facts_about_the_model() -> None:
    from collections import Counter

    from onnxopt.config.quantize import QuantizeStep
    from onnxopt.steps.quantize.auto import choose_candidates
    from onnxopt.steps.quantize.backend import OpCounts

    cfg = QuantizeStep(type="quantize", mode="auto")
    # a recurrent VAD: Conv1d front end and an LSTM, all inside If bodies
    vad = OpCounts(Counter({"Conv": 6, "LSTM": 1, "If": 1}), Counter({"If": 1}))
    chosen, skipped = choose_candidates(cfg, vad, "cpu", data=True, saturating=False)
    names = {r.name for r in chosen}
    assert {"dynamic", "dynamic_conv", "fp16"} <= names, skipped
    assert not {n for n in names if n.startswith("static")}
    assert "dynamic_no_rnn" in skipped  # nothing beside the LSTM to quantize
    # a plain conv net: every int8 recipe that applies, dynamic convolutions included
    cnn = OpCounts(Counter({"Conv": 20, "Relu": 20, "Gemm": 1}))
    chosen, skipped = choose_candidates(cfg, cnn, "cpu", data=True, saturating=False)
    assert {"static_u8s8_compute", "static_s8s8", "dynamic", "dynamic_conv"} <= {
        r.name for r in chosen
    }
    assert all("slower" not in why for why in skipped.values()), skipped


def _lstm_weights_visible(model: onnx.ModelProto) -> list[bool]:
    """For each LSTM: whether W and R are initializers of the LSTM's own graph."""
    from onnxopt.graph import iter_graphs

    seen = []
    for graph in iter_graphs(model.graph):
        own = {t.name for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "LSTM":
                seen.append(node.input[1] in own and node.input[2] in own)
    return seen


def test_weights_in_bodies_are_moved_where_the_quantizers_see_them_exactly(
    tmp_path: Path,
) -> None:
    import onnxruntime as ort

    from onnxopt.graph import iter_graphs
    from onnxopt.steps.quantize.weights import prepare_weights

    src = models.recurrent_in_if(tmp_path / "vad.onnx")
    model = onnx.load(str(src))
    assert _lstm_weights_visible(model) == [False, False]
    notes = prepare_weights(model)
    assert len(notes) == 3, notes  # constants, folded Unsqueezes, sunk into the LSTM bodies
    onnx.checker.check_model(model)
    assert _lstm_weights_visible(model) == [True, True]
    assert not any(n.op_type == "Constant" for g in iter_graphs(model.graph) for n in g.node)
    x = np.random.default_rng(0).standard_normal((1, 8, 40)).astype(np.float32)
    before = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_dynamic_int8_reaches_convolutions_and_lstms_inside_nested_if_bodies(
    tmp_path: Path,
) -> None:
    src = models.recurrent_in_if(tmp_path / "vad.onnx")
    data = _data(tmp_path / "d.npz", "x", (8, 40), n=24)
    step = {"mode": "dynamic", "op_types_to_quantize": ["Conv", "LSTM"], "guard": None}
    entry = _run(src, tmp_path / "o", step, data={"path": str(data)})["steps"][0]
    produced = onnx.load(str(tmp_path / "o" / entry["output"]["path"]))
    ops = entry["report"]["new_quantized_ops"]
    assert ops.get("ConvInteger") == 2 and ops.get("DynamicQuantizeLSTM") == 2, ops
    assert any(o.domain == "com.microsoft" for o in produced.opset_import)
    assert entry["verification"]["passed"], entry["verification"]


def test_a_spent_search_budget_stops_auto_after_its_first_recipe_and_is_not_cached(
    tmp_path: Path,
) -> None:
    import time

    from onnxopt import deadline

    src = all_in_if(tmp_path / "m.onnx", width=32)
    step = {"mode": "auto", "auto": {"runs": 3, "trials": 1, "rescue": False}}
    with deadline.until(time.monotonic()):  # spent before the step starts
        first = _run(src, tmp_path / "o", step)["steps"][0]
        again = _run(src, tmp_path / "o", step)["steps"][0]
    rows = first["report"]["candidates"]
    assert rows[0]["status"] != "not tried"
    assert len(rows) > 1 and all(r["status"] == "not tried" for r in rows[1:]), rows
    assert all(r["reason"] == deadline.REASON for r in rows[1:])
    assert first["report"]["cut_short"] is True
    assert again["status"] != "cached"  # a later run with more time may do more
    done = _run(src, tmp_path / "o", step)["steps"][0]  # no deadline: every recipe
    assert "cut_short" not in done["report"] and done["status"] != "cached"
    assert all(r["status"] != "not tried" for r in done["report"]["candidates"])


def test_static_calibration_holds_its_samples_to_the_memory_their_activations_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxopt.steps.quantize import static

    src = models.compute_model(tmp_path / "m.onnx")
    data = _data(tmp_path / "d.npz", "x", (3, 8, 8), n=64)
    step = {"mode": "static", "tolerance": {"min_cosine": 0.5}, "guard": None}
    whole = _run(src, tmp_path / "a", step, data={"path": str(data)})["steps"][0]["report"]
    assert whole["calibration"]["samples"] == 48  # every calibration sample (16 held out)
    assert not any("calibrated on" in n for n in whole["notes"])
    # one sample's activations: the Conv, Flatten, Gemm and MatMul outputs, float32
    per_sample = 4 * (8 * 6 * 6 * 2 + 16 + 5)
    monkeypatch.setattr(static, "CALIBRATION_MEMORY", per_sample * 20)
    held = _run(src, tmp_path / "b", step, data={"path": str(data)})["steps"][0]["report"]
    assert held["calibration"]["samples"] == 20
    assert any("calibrated on 20 of the 48 calibration samples" in n for n in held["notes"])
