"""optimize: the staged search over prune/distill, graph rewrites and int8 recipes.

Every run here is real: candidates are real steps run by the engine, verified against the
source on held-out samples and timed interleaved with it.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from sample_models.images import image
from tests.conftest import SAMPLES, default_sigint, error_line, file_states, run_cli


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The ResNet sample (narrow, 64 px) and 96 image-like samples of its input."""
    folder = tmp_path_factory.mktemp("optimize-resnet")
    model = folder / "resnet.onnx"
    onnxopt.export(
        f"{SAMPLES / 'resnet.py'}:build",
        model,
        inputs=[{"name": "image", "shape": ["batch", 3, 64, 64], "range": [0, 1]}],
        factory_args={"width": 32, "num_classes": 100},
        dims={"batch": 1},
    )
    rng = np.random.default_rng(0)
    data = folder / "images.npz"
    np.savez(data, image=np.concatenate([image(rng, 64) for _ in range(96)]))
    return model, data


def _rows(manifest: dict) -> list[dict]:
    return manifest["steps"][-1]["report"]["candidates"]


def test_the_search_composes_a_chain_that_beats_every_single_step(
    resnet: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = resnet
    before = file_states(model, data)
    out = tmp_path / "fast.onnx"
    proc = run_cli(
        "optimize", model, "-o", out, "--data", data, "--recover", "compensate",
        "--prune-ratio", "0.5", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    report = manifest["steps"][-1]["report"]
    rows = {r["id"]: r for r in report["candidates"]}
    winner = rows[report["chosen"]]
    assert len(winner["chain"]) >= 2, winner  # a composition, not one step
    singles = [r for r in rows.values() if len(r["chain"]) == 1 and r.get("speedup")]
    assert {r["chain"][0] for r in singles} >= {"prune", "simplify"}
    assert all(winner["speedup"] > r["speedup"] for r in singles), report["candidates"]
    assert winner["status"] == "verified" and winner["verdict"] == "faster"
    assert winner["cosine"] >= 0.99  # the output budget, against the source
    # the output is the winner, proved again by the engine against the source
    entry = manifest["steps"][-1]
    assert entry["verification"]["passed"] and entry["speed"]["speedup"] > 1
    for suffix in (".optimize.json", ".optimize.md", ".pareto.png", ".pipeline.yaml"):
        assert (tmp_path / f"fast{suffix}").is_file(), suffix
    assert file_states(model, data) == before
    # the chosen chain as a pipeline: `onnxopt run` writes the same bytes
    again = run_cli("run", tmp_path / "fast.pipeline.yaml", "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    produced = json.loads((tmp_path / "optimized-chain" / "manifest.json").read_text())
    final = tmp_path / "optimized-chain" / produced["final_artifact"]
    assert _sha(final) == _sha(out)
    # a re-run reuses every candidate the first run made (labels name the chain; which
    # Pareto members a stage expands follows the timings, which are measured afresh)
    rerun = run_cli("optimize", model, "-o", out, "--data", data, "--recover", "compensate",
                    "--prune-ratio", "0.5", "--json")  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    first = {r["label"] for r in report["candidates"] if r.get("status") != "not tried"}
    ran = [r for r in _rows(json.loads(rerun.stdout)) if r["label"] in first - {"source"}]
    assert ran and all(r.get("cached") for r in ran), ran


def _identity_mlp(path: Path, width: int = 32) -> None:
    """features -> Gemm(I) -> Relu -> Gemm(I) -> logits: every hidden channel carries one
    class, so removing any channel changes the answer for the samples of that class."""
    eye = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w1")
    eye2 = numpy_helper.from_array(np.eye(width, dtype=np.float32), "w2")
    zero = numpy_helper.from_array(np.zeros(width, np.float32), "b1")
    zero2 = numpy_helper.from_array(np.zeros(width, np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["features", "w1", "b1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
        ],
        "identity_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])],
        [eye, zero, eye2, zero2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


EVALUATE = """
import numpy as np

def accuracy(runner):
    arrays = np.load("labels.npz")  # relative: the user's code runs where onnxopt started
    predicted = runner.predict({"features": arrays["features"]})["logits"].argmax(1)
    return float((predicted == arrays["labels"]).mean())
"""


def test_pruning_that_breaks_the_task_is_refused_and_said_why(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    _identity_mlp(model)
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (96, 32)).astype(np.float32)
    np.savez(tmp_path / "data.npz", features=features)
    np.savez(tmp_path / "labels.npz", features=features, labels=features.argmax(1))
    (tmp_path / "task.py").write_text(EVALUATE)
    proc = run_cli(
        "optimize", model, "-o", tmp_path / "out.onnx", "--data", tmp_path / "data.npz",
        "--evaluate", "task.py:accuracy",
        "--max-drop", "0.02", "--recover", "compensate", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["steps"][-1]["report"]
    assert "task score" in report["structure_refused"], report
    prunes = [r for r in report["candidates"] if r["chain"] == ["prune"]]
    assert prunes and prunes[0]["status"] == "outside budget"
    assert prunes[0]["task_drop"] > 0.02
    assert len(prunes) == 1  # the ladder stopped at the first ratio that broke the task
    chosen = report["chosen"]
    if chosen is not None:
        assert "prune" not in next(r for r in report["candidates"] if r["id"] == chosen)["chain"]
    assert any("refused" in note for note in report["notes"])


def test_the_time_budget_stops_the_search_with_the_best_so_far(
    resnet: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = resnet
    started = time.monotonic()
    manifest = onnxopt.optimize(
        model, tmp_path / "out.onnx", data=data, recover="compensate", time_budget="1s",
        prune_ratios=[0.25, 0.5],
    )  # fmt: skip
    elapsed = time.monotonic() - started
    report = manifest["steps"][-1]["report"]
    assert report["stopped"].startswith("time budget of 1 s")
    tried = [r for r in report["candidates"] if r["status"] not in ("not tried",)]
    skipped = [r for r in report["candidates"] if r["status"] == "not tried"]
    assert skipped, report["candidates"]
    # it stopped: no more than the candidate running at the deadline ran after it
    longest = max((r.get("seconds") or 0.0) for r in tried)
    assert report["search_seconds"] < 1 + longest + 30, report
    assert elapsed < 120
    assert (tmp_path / "out.onnx").is_file()


def test_an_interrupted_search_resumes_with_cache_hits(
    resnet: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = resnet
    out = tmp_path / "out.onnx"
    args = ["optimize", str(model), "-o", str(out), "--data", str(data), "--recover",
            "compensate", "--prune-ratio", "0.25", "--prune-ratio", "0.5", "-q"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509 - the child only resets SIGINT
    )  # fmt: skip
    search = tmp_path / "out.search"
    deadline = time.monotonic() + 180

    def finished() -> list[Path]:
        done = []
        for manifest in search.glob("*/manifest.json"):
            try:
                if json.loads(manifest.read_text()).get("status") == "ok":
                    done.append(manifest.parent)
            except (OSError, ValueError):
                continue
        return done

    while not finished() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the search finished before the interrupt landed")
    assert proc.returncode == 130, err
    assert not out.exists()  # nothing that looks finished
    done = {p.name for p in finished()}
    assert done
    manifest = onnxopt.optimize(
        model, out, data=data, recover="compensate", prune_ratios=[0.25, 0.5]
    )
    rows = _rows(manifest)
    cached = [r for r in rows if r.get("cached")]
    assert len(cached) >= len(done), rows


def test_bad_options_are_one_line_errors(resnet: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = resnet
    before = file_states(model, data)
    for flags, expected in (
        (["--stage", "everything"], "stages"),
        (["--time-budget", "soon"], "time_budget"),
        (["--prune-ratio", "1.5"], "prune_ratios"),
    ):
        proc = run_cli("optimize", model, "-o", tmp_path / "o.onnx", "--data", data, *flags)
        assert proc.returncode == 2, proc.stderr
        assert expected in error_line(proc) and "Traceback" not in proc.stderr
    assert file_states(model, data) == before
    assert not (tmp_path / "o.onnx").exists()


def test_step_options_are_checked_as_the_steps_check_them() -> None:
    from onnxopt.config import parse_config

    with pytest.raises(onnxopt.OnnxoptError) as err:
        parse_config(
            {"model": {"path": "m.onnx"}, "steps": [{"type": "optimize", "prune": {"ratio": 3}}]},
            "test",
        )
    assert "prune.ratio" in str(err.value)


def test_an_optimize_step_in_a_pipeline_and_its_chain_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "features.npz", features=rng.normal(0, 1, (64, 64)).astype(np.float32))
    config = {
        "name": "mlp",
        "model": {"factory": f"{SAMPLES / 'mlp.py'}:build"},
        "inputs": [{"name": "features", "shape": ["batch", 64]}],
        "dims": {"batch": 1},
        "data": {"path": "features.npz", "samples": 64, "holdout": 16},
        "output_dir": "out",
        "steps": [
            {"type": "export"},
            {"type": "optimize", "stages": ["graph", "precision"], "min_speedup": 1.0},
        ],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    proc = run_cli("run", tmp_path / "p.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    report = manifest["steps"][-1]["report"]
    assert (tmp_path / "out" / "optimize.search").is_dir()
    assert report["work_dir"] == str(tmp_path / "out" / "optimize.search")
    stages = {r["stage"] for r in report["candidates"]}
    assert stages <= {"source", "simplify", "quantize"}  # only the stages asked for
    final = tmp_path / "out" / manifest["final_artifact"]
    if report["chosen"] is None:
        assert report["unchanged"] and "unchanged copy" in report["outcome"]
        return
    chain_file = final.with_name(final.name.removesuffix(".onnx") + ".pipeline.yaml")
    chain = yaml.safe_load(chain_file.read_text())
    assert [s["type"] for s in chain["steps"]][0] == "export"  # the steps before it, then the chain
    again = run_cli("run", chain_file, "-q", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    produced = json.loads((tmp_path / "out" / "optimized-chain" / "manifest.json").read_text())
    assert _sha(tmp_path / "out" / "optimized-chain" / produced["final_artifact"]) == _sha(final)


def test_a_latency_budget_adds_the_serving_plan_of_the_chosen_model(
    resnet: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = resnet
    manifest = onnxopt.optimize(
        model, tmp_path / "out.onnx", data=data, stages=["structure"], recover="compensate",
        prune_ratios=[0.5], latency_budget="500ms", percentile="p90",
    )  # fmt: skip
    report = manifest["steps"][-1]["report"]
    assert report["chosen"] is not None, report["outcome"]
    plan = report["serving_plan"]
    assert plan["budget_ms"] == 500 and plan["percentile"] == "p90"
    assert plan["chosen"] is not None and plan["searched"] >= 1
    assert plan["chosen"]["request_latency_ms"] <= 500
    assert "Serving plan" in (tmp_path / "out.optimize.md").read_text()


def test_a_candidate_that_raises_is_recorded_and_the_search_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in for a bug inside a step (as once in channel pruning's compensation): the
    # structure candidate raises a plain ValueError; the search records it and goes on
    import onnxopt.steps.prune.channels as channels

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("einstein sum subscripts string contains too many subscripts")

    monkeypatch.setattr(channels, "_compensate", broken)
    model = tmp_path / "mlp.onnx"
    _identity_mlp(model)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "data.npz", features=rng.normal(0, 1, (64, 32)).astype(np.float32))
    before = file_states(model, tmp_path / "data.npz")
    proc = run_cli(
        "optimize", model, "-o", tmp_path / "out.onnx", "--data", tmp_path / "data.npz",
        "--recover", "compensate", "--prune-ratio", "0.5", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["steps"][-1]["report"]
    rows = report["candidates"]
    pruned = next(r for r in rows if r["chain"] == ["prune"])
    assert pruned["status"] == "failed" and pruned["failed_at"] == "build", pruned
    assert pruned["reason"].startswith("internal error: ValueError: einstein"), pruned
    assert "please report" in pruned["reason"] and str(tmp_path) not in pruned["reason"]
    later = [r for r in rows if r.get("stage") in ("simplify", "quantize")]
    assert later and all(r["status"] != "not tried" for r in later), rows
    assert (tmp_path / "out.onnx").is_file()
    assert file_states(model, tmp_path / "data.npz") == before
