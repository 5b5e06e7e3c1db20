"""bench: statistics, providers, gates and exit codes, report formats, concurrency, step."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from onnxopt.bench import stats
from onnxopt.bench.core import resolve_providers
from onnxopt.bench.runner import load_report
from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ExitCode, InputError
from tests import models
from tests.conftest import Untouched, error_line, run_cli

FAST = ["--runs", "20", "--trials", "2", "--warmup", "2"]


def test_summary_statistics_on_known_samples() -> None:
    s = stats.summarize(list(range(1, 101)), batch=4)
    assert s["runs"] == 100
    assert s["min"] == 1 and s["max"] == 100
    assert s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s["throughput"] == pytest.approx(4 * 1000 / 50.5)


def test_bootstrap_intervals_and_verdicts() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(10.0, 0.5, 400)
    low, high = stats.bootstrap_median_ci(a)
    assert low < np.median(a) < high and high - low < 0.3
    ratio, rlow, rhigh = stats.bootstrap_ratio_ci(a, a * 0.5)
    assert ratio == pytest.approx(0.5) and rlow < 0.5 < rhigh
    assert stats.verdict(rlow, rhigh) == "faster"
    assert stats.verdict(*stats.bootstrap_ratio_ci(a, a * 2)[1:]) == "slower"
    same = rng.normal(10.0, 0.5, 400)
    assert stats.verdict(*stats.bootstrap_ratio_ci(a, same)[1:]) == "same"
    # deterministic for a given seed
    assert stats.bootstrap_median_ci(a, seed=3) == stats.bootstrap_median_ci(a, seed=3)


def test_unavailable_provider_is_skipped_or_strict() -> None:
    chosen, skipped = resolve_providers(["cpu", "cuda"], strict=False)
    assert chosen == ["cpu"]
    assert skipped[0]["provider"] == "cuda" and "available: " in skipped[0]["reason"]
    with pytest.raises(InputError, match="provider 'cuda'"):
        resolve_providers(["cuda"], strict=True)


def test_provider_selection_follows_the_availability_list(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no GPU; only the availability list is faked, nothing is timed.
    monkeypatch.setattr(
        "onnxopt.runtime.available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    chosen, skipped = resolve_providers(["tensorrt", "cuda", "openvino"], strict=False)
    assert chosen == ["tensorrt", "cuda"]
    assert [s["provider"] for s in skipped] == ["openvino"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    return (
        models.matmul_chain(folder / "a.onnx", 2, 64, external=False),
        models.matmul_chain(folder / "b.onnx", 2, 64, external=False),
    )


def test_cli_report_formats_round_trip(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, b = two_models
    out = tmp_path / "r.json"
    with Untouched(a, b):
        proc = run_cli(
            "bench",
            a,
            b,
            *FAST,
            "--dim",
            "batch=3",
            "--labels",
            "fp32,copy",
            "--output",
            out,
            "--markdown",
            tmp_path / "r.md",
            "--csv",
            tmp_path / "r.csv",
            "--plot",
            tmp_path / "r.png",
        )
    assert proc.returncode == 0, proc.stderr
    report = load_report(out)
    assert report["schema"] == "onnxopt.bench/1"
    assert [r["model"] for r in report["results"]] == ["fp32", "copy"]
    base, other = report["results"]
    assert base["latency_ms"]["runs"] == 40 and len(base["samples_ms"]) == 40
    assert len(base["trials"]) == 2
    assert base["batch"] == 3 and base["inputs"] == {"x": [3, 64]}
    assert other["compare"]["baseline"] == "fp32"
    low, high = other["compare"]["ratio_ci"]
    assert low <= other["compare"]["ratio"] <= high
    assert other["fidelity"]["outputs"][0]["cosine"] == pytest.approx(1.0)
    assert {"cpu", "cores", "cpu_flags", "onnxruntime", "providers"} <= set(report["machine"])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert [r["model"] for r in rows] == ["fp32", "copy"]
    assert float(rows[0]["p50"]) == pytest.approx(base["latency_ms"]["p50"])
    assert "| model | provider |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_budget_gate_exits_4(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    proc = run_cli(
        "bench",
        a,
        *FAST,
        "--latency-budget",
        "1us",
        "--percentile",
        "p50",
        "--output",
        tmp_path / "r.json",
    )
    assert proc.returncode == ExitCode.GATE, proc.stderr
    assert "exceeds the budget of 0.001 ms" in error_line(proc)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["gates"][0]["gate"] == "latency_budget"
    ok = run_cli("bench", a, *FAST, "--latency-budget", "10s", "-q")
    assert ok.returncode == 0, ok.stderr


def test_regression_gate_against_stored_baseline(
    tmp_path: Path, two_models: tuple[Path, Path]
) -> None:
    a, _ = two_models
    base_path = tmp_path / "baseline.json"
    assert run_cli("bench", a, *FAST, "--output", base_path, "-q").returncode == 0
    # Same model, same machine, generous threshold: passes.
    ok = run_cli("bench", a, *FAST, "--baseline", base_path, "--max-regression", "400%", "-q")
    assert ok.returncode == 0, ok.stderr
    # A baseline recorded on a machine 100x faster: the current run is a regression.
    fast = json.loads(base_path.read_text())
    for row in fast["results"]:
        row["latency_ms"]["p50"] /= 100
        row["median_ci_ms"] = [v / 100 for v in row["median_ci_ms"]]
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    proc = run_cli(
        "bench", a, *FAST, "--baseline", tmp_path / "fast.json", "--max-regression", "10%"
    )
    assert proc.returncode == ExitCode.GATE, proc.stderr
    assert "slower than the baseline" in error_line(proc)


def _faster_baseline(report: Path, out: Path, **changes: object) -> Path:
    """The report as if its machine were 100x faster, with ``changes`` to its models."""
    data = json.loads(report.read_text())
    for row in data["results"]:
        row["latency_ms"]["p50"] /= 100
        row["median_ci_ms"] = [v / 100 for v in row["median_ci_ms"]]
    for model in data["models"]:
        model.update(changes)
    for row in data["results"]:
        row["model"] = str(changes.get("label", row["model"]))
    out.write_text(json.dumps(data))
    return out


def test_a_renamed_model_is_still_gated(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    """The gate that once passed silently: the baseline's model saved under another name."""
    a, _ = two_models
    measured = tmp_path / "r18.json"
    assert run_cli("bench", a, *FAST, "--labels", "r18", "-o", measured, "-q").returncode == 0
    slow = tmp_path / "slow.onnx"
    slow.write_bytes(a.read_bytes())
    # the same file under another name: matched by sha256
    same_file = _faster_baseline(measured, tmp_path / "b1.json")
    # another file (another sha256), one model on each side: those two are compared
    other_file = _faster_baseline(measured, tmp_path / "b2.json", sha256="0" * 64)
    for baseline, how in ((same_file, "the same sha256"), (other_file, "only model")):
        out = tmp_path / "run.json"
        proc = run_cli(
            "bench", slow, *FAST, "--baseline", baseline, "--max-regression", "10%", "-o", out
        )
        assert proc.returncode == ExitCode.GATE, proc.stderr
        assert "slow on cpu" in error_line(proc) and "slower than the baseline" in error_line(proc)
        report = json.loads(out.read_text())
        assert how in report["baseline_matches"]["notes"][0]
        assert report["gates"][0]["baseline_model"] == "r18"


def test_a_baseline_that_matches_nothing_is_an_error(
    tmp_path: Path, two_models: tuple[Path, Path]
) -> None:
    a, b = two_models
    stored = tmp_path / "base.json"
    proc = run_cli("bench", a, b, *FAST, "--labels", "p,q", "-o", stored, "-q")
    assert proc.returncode == 0, proc.stderr
    unrelated = _faster_baseline(stored, tmp_path / "u.json", sha256="0" * 64)
    proc = run_cli("bench", a, *FAST, "--baseline", unrelated, "--max-regression", "10%")
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert "no model to compare ['a'] with" in line and "['p', 'q']" in line
    assert "--labels" in line
    # matched models, but a configuration the baseline never measured: nothing to compare
    proc = run_cli(
        "bench", a, b, *FAST, "--labels", "p,q", "--sweep-threads", "1", "--baseline", stored
    )
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "has no row for p on cpu threads=1" in error_line(proc)


def test_a_pipeline_bench_step_with_an_unmatched_baseline_fails(
    tmp_path: Path, two_models: tuple[Path, Path]
) -> None:
    a, b = two_models
    stored = tmp_path / "stored.json"
    assert run_cli("bench", a, b, *FAST, "--labels", "p,q", "-o", stored, "-q").returncode == 0
    _faster_baseline(stored, tmp_path / "base.json", sha256="0" * 64)
    config = {
        "model": {"path": str(a)},
        "output_dir": str(tmp_path / "o"),
        "steps": [{"type": "bench", "runs": 5, "trials": 1, "baseline": "base.json"}],
    }
    with pytest.raises(InputError, match="no model to compare"):
        run_pipeline(parse_config(config), tmp_path)  # the baseline resolves beside the config


def test_bad_baseline_and_bad_flags(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    (tmp_path / "x.json").write_text('{"schema": "other"}')
    proc = run_cli("bench", a, *FAST, "--baseline", tmp_path / "x.json")
    assert proc.returncode == ExitCode.USAGE
    assert "expected a bench report with schema" in error_line(proc)
    proc = run_cli("bench", a, "--max-regression", "ten")
    assert proc.returncode == ExitCode.USAGE
    assert "max_regression" in error_line(proc)
    proc = run_cli("bench", a, "--shape", "nope=1,2")
    assert proc.returncode == ExitCode.USAGE
    assert "are not inputs of a.onnx" in error_line(proc)
    proc = run_cli("bench", a, "--provider", "cuda", "--strict")
    assert proc.returncode == ExitCode.USAGE
    assert "not available" in error_line(proc)


def test_concurrency_returns_every_result(tmp_path: Path, two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    proc = run_cli("bench", a, "--runs", "30", "--trials", "1", "--concurrency", "1,3", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["concurrency"]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {
        ("threads", 1),
        ("threads", 3),
        ("async", 1),
        ("async", 3),
    }
    assert all(r["requests"] == 30 for r in rows)
    assert all(r["throughput_rps"] > 0 for r in rows)


def test_sweeps_give_one_row_per_configuration(two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    proc = run_cli(
        "bench",
        a,
        "--runs",
        "5",
        "--trials",
        "1",
        "--sweep-threads",
        "1,2",
        "--sweep-batch",
        "1,4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert sorted((r["threads"], r["batch"]) for r in rows) == [(1, 1), (1, 4), (2, 1), (2, 4)]


def test_placement_in_report(two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    proc = run_cli("bench", a, "--runs", "5", "--trials", "1", "--placement", "--json")
    assert proc.returncode == 0, proc.stderr
    place = json.loads(proc.stdout)["placement"]["cpu"]["a"]
    assert place["by_provider"] == {"CPUExecutionProvider": place["executed_nodes"]}


def test_bench_pipeline_step_compares_every_artifact(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    data = {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [
            {"type": "simplify"},
            {"type": "simplify", "backend": "ort"},
            {"type": "bench", "runs": 10, "trials": 1, "warmup": 1},
        ],
    }
    manifest = run_pipeline(parse_config(data), tmp_path)
    entry = manifest["steps"][2]
    assert entry["type"] == "bench" and entry["status"] == "ok"
    assert [m["label"] for m in entry["models"]] == ["source", "01-simplify", "02-simplify"]
    report = load_report(out / entry["report_file"]["path"])
    assert [r["model"] for r in report["results"]] == ["source", "01-simplify", "02-simplify"]
    assert (out / "03-bench.md").is_file()
    assert manifest["final_artifact"] == manifest["steps"][1]["output"]["path"]
    again = run_pipeline(parse_config(data), tmp_path)
    assert again["steps"][2]["status"] == "cached"


def test_bench_step_gate_failure_exits_4(tmp_path: Path) -> None:
    from tests.conftest import write_yaml

    src = models.add_relu(tmp_path / "m.onnx")
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(src)},
            "output_dir": str(tmp_path / "out"),
            "steps": [{"type": "bench", "runs": 5, "trials": 1, "latency_budget_ms": "1us"}],
        },
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.GATE
    assert "benchmark gate failed" in error_line(proc)


def test_guard_decision_needs_tolerance_and_noise() -> None:
    assert stats.slower_beyond(1.10, 1.05, 0.03) is True
    assert stats.slower_beyond(1.02, 1.01, 0.03) is False  # within tolerance
    assert stats.slower_beyond(1.10, 0.98, 0.03) is False  # within noise
    assert stats.slower_beyond(0.80, 0.75, 0.03) is False


def _guarded(src: Path, out: Path, on_slower: str) -> dict:
    return {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [
            {
                "type": "simplify",
                "backend": "ort",
                "guard": {"tolerance": "3%", "runs": 10, "trials": 1, "on_slower": on_slower},
            },
            {"type": "bench", "runs": 5, "trials": 1},
        ],
    }


def test_guard_measures_and_records_its_decision(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    manifest = run_pipeline(parse_config(_guarded(src, tmp_path / "o", "keep_parent")), tmp_path)
    speed, guard = manifest["steps"][0]["speed"], manifest["steps"][0]["guard"]
    assert speed["parent_median_ms"] > 0 and speed["median_ms"] > 0
    low, high = speed["ratio_ci"]
    assert low <= speed["ratio"] <= high
    assert guard["kept_parent"] == stats.slower_beyond(speed["ratio"], low, 0.03)


def test_guard_keeps_the_parent_or_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's handling of a 'slower' decision; the decision itself is tested above."""
    from onnxopt.errors import GateError

    monkeypatch.setattr(stats, "slower_beyond", lambda ratio, low, tolerance: True)
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    out = tmp_path / "o"
    manifest = run_pipeline(parse_config(_guarded(src, out, "keep_parent")), tmp_path)
    step = manifest["steps"][0]
    assert step["kept_parent"] is True and step["output"] is None
    assert any("kept the parent" in w for w in step["warnings"])
    assert manifest["final_artifact"] == str(src)
    assert [m["label"] for m in manifest["steps"][1]["models"]] == ["source"]
    assert not list(out.glob("*.onnx"))
    again = run_pipeline(parse_config(_guarded(src, out, "keep_parent")), tmp_path)
    assert again["steps"][0]["status"] == "cached" and again["steps"][0]["kept_parent"]
    with pytest.raises(GateError, match="slower than its parent"):
        run_pipeline(parse_config(_guarded(src, tmp_path / "o2", "fail")), tmp_path)
    assert not list((tmp_path / "o2").glob("*.onnx"))


def test_guard_is_rejected_on_export() -> None:
    from onnxopt.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot carry one"):
        parse_config(
            {
                "model": "a.py:b",
                "inputs": [{"name": "x", "shape": [1]}],
                "steps": [{"type": "export", "guard": {}}],
            }
        )


def test_io_binding_path_runs_and_is_reported(two_models: tuple[Path, Path]) -> None:
    # CPU IO binding is real here; the GPU device names are the part this machine lacks.
    a, _ = two_models
    from onnxopt.bench.core import Candidate, measure, uses_io_binding
    from onnxopt.config import BenchStep, Target

    cfg = BenchStep(type="bench", runs=5, trials=1, warmup=1, io_binding="on")
    feeds = {"x": np.ones((2, 64), np.float32)}
    measured = measure([Candidate("a", a)], feeds, cfg, Target())
    assert len(measured[0].samples_ms) == 5
    auto = BenchStep(type="bench")
    assert uses_io_binding(auto, "cuda") and uses_io_binding(auto, "tensorrt")
    assert not uses_io_binding(auto, "cpu")
    proc = run_cli("bench", a, "--runs", "3", "--trials", "1", "--json")
    row = json.loads(proc.stdout)["results"][0]
    assert row["io_binding"] is False and row["copies_timed"] is False


def test_provider_options_reach_the_session(two_models: tuple[Path, Path]) -> None:
    a, _ = two_models
    proc = run_cli(
        "bench",
        a,
        "--runs",
        "3",
        "--trials",
        "1",
        "--json",
        "--provider-option",
        "cpu.arena_extend_strategy=kSameAsRequested",
    )
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    assert settings["provider_options"] == {"cpu": {"arena_extend_strategy": "kSameAsRequested"}}
    bad = run_cli("bench", a, "--provider-option", "nodot=1")
    assert bad.returncode == ExitCode.USAGE
    assert "PROVIDER.KEY=VALUE" in error_line(bad)
