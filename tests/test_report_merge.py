"""`onnxopt report merge`: bench reports from several machines into one comparison."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from onnxopt.errors import ExitCode
from tests import models
from tests.conftest import Untouched, error_line, run_cli


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A real bench report of two models, and one measured on other inputs (another seed)."""
    folder = tmp_path_factory.mktemp("merge")
    a = models.matmul_chain(folder / "a.onnx", 2, 64, external=False)
    b = models.add_relu(folder / "b.onnx")
    common = ["--runs", "5", "--trials", "2", "--warmup", "1", "-q"]
    first = folder / "box-a.json"
    proc = run_cli("bench", a, a, "--labels", "base,copy", *common, "-o", first)
    assert proc.returncode == 0, proc.stderr
    other_inputs = folder / "seed.json"
    proc = run_cli(
        "bench", a, a, "--labels", "base,copy", *common, "--seed", "3", "-o", other_inputs
    )
    assert proc.returncode == 0, proc.stderr
    other_model = folder / "other.json"
    proc = run_cli("bench", b, *common, "-o", other_model)
    assert proc.returncode == 0, proc.stderr
    return first, other_inputs, other_model


def _slower_machine(report: Path, factor: float, out: Path) -> Path:
    """The same report as if measured on another machine, `factor` times slower."""
    data = json.loads(report.read_text())
    other = copy.deepcopy(data)
    other["machine"]["cpu"] = "Other CPU"
    for row in other["results"]:
        row["latency_ms"] = {
            k: (v * factor if k not in ("runs", "throughput") else v)
            for k, v in row["latency_ms"].items()
        }
        row["median_ci_ms"] = [v * factor for v in row["median_ci_ms"]]
    out.write_text(json.dumps(other))
    return out


def test_merge_compares_machines_and_writes_every_format(
    measured: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first = measured[0]
    # a tiny model timed 5 x 2 times on a loaded machine can have a median CI wider than 3x:
    # the slower machine is made slower than that spread, so "slower" is the right verdict
    spread = max(
        hi / lo for lo, hi in (r["median_ci_ms"] for r in json.loads(first.read_text())["results"])
    )
    factor = max(3.0, 2.0 * spread)
    slow = _slower_machine(first, factor, tmp_path / "box-b.json")
    same = _slower_machine(first, 1.0, tmp_path / "box-c.json")
    out = tmp_path / "merged.json"
    with Untouched(first, slow, same):
        proc = run_cli(
            "report", "merge", first, slow, same,
            "-o", out, "--markdown", tmp_path / "m.md", "--csv", tmp_path / "m.csv",
            "--plot", tmp_path / "m.png",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(out.read_text())
    assert merged["reference"] == "box-a"
    assert [s["label"] for s in merged["sources"]] == ["box-a", "box-b", "box-c"]
    rows = {(r["model"], r["source"]): r for r in merged["rows"]}
    assert len(rows) == 6
    for model in ("base", "copy"):
        assert rows[(model, "box-a")]["verdict"] == "reference"
        assert rows[(model, "box-b")]["verdict"] == "slower"
        assert rows[(model, "box-b")]["ratio"] == pytest.approx(factor)
        assert rows[(model, "box-c")]["verdict"] == "same"
    md = (tmp_path / "m.md").read_text()
    assert "Other CPU" in md and "| base | cpu |" in md
    assert (tmp_path / "m.csv").read_text().count("\n") == 7
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "box-b" in proc.stdout and "slower" in proc.stdout


def test_merge_refuses_different_models_or_inputs_unless_told(
    measured: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first, other_inputs, other_model = measured
    for allow in ([], ["--allow-different-models"]):  # nothing to compare: never allowed
        proc = run_cli("report", "merge", first, other_model, *allow)
        assert proc.returncode == ExitCode.USAGE
        line = error_line(proc)
        assert "no model to compare ['b'] with" in line and "['base', 'copy']" in line
        assert "--labels" in line
    proc = run_cli("report", "merge", first, other_inputs)
    assert proc.returncode == ExitCode.USAGE
    assert "measured different inputs" in error_line(proc)
    proc = run_cli("report", "merge", first, other_inputs, "--allow-different-inputs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "different inputs" in json.loads(proc.stdout)["notes"][0]
    # a model file edited between runs has the same label but another digest
    edited = json.loads(first.read_text())
    edited["models"][1]["sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    proc = run_cli("report", "merge", first, tmp_path / "edited.json")
    assert proc.returncode == ExitCode.USAGE
    assert "'copy' is a different file" in error_line(proc)


def test_merge_bad_input(measured: tuple[Path, Path, Path], tmp_path: Path) -> None:
    first = measured[0]
    (tmp_path / "x.json").write_text('{"not": "a report"}')
    for args, words in (
        ((first,), "at least two reports"),
        ((first, tmp_path / "missing.json"), "not found"),
        ((first, tmp_path / "x.json"), "expected a bench report"),
        ((first, first), "labels must differ"),
        ((first, first, "--labels", "one"), "gives 1 names for 2 reports"),
    ):
        proc = run_cli("report", "merge", *args)
        assert proc.returncode == ExitCode.USAGE, (args, proc.stderr)
        assert words in error_line(proc)


def test_merge_matches_a_renamed_model(measured: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """One model on each side under other labels: matched by sha256, or as the only pair."""
    _, _, other_model = measured
    renamed = json.loads(other_model.read_text())
    for part in (renamed["models"], renamed["results"]):
        for item in part:
            item["label" if "label" in item else "model"] = "relabelled"
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    proc = run_cli("report", "merge", other_model, tmp_path / "renamed.json", "--json")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)
    assert "the same sha256" in merged["notes"][0]
    row = next(r for r in merged["rows"] if r["model"] == "relabelled")
    assert row["compared_with"] == "b" and row["verdict"] in ("same", "faster", "slower")
    renamed["models"][0]["sha256"] = "1" * 64
    (tmp_path / "changed.json").write_text(json.dumps(renamed))
    proc = run_cli("report", "merge", other_model, tmp_path / "changed.json")
    assert proc.returncode == ExitCode.USAGE  # paired as the only models, but other files
    assert "'relabelled' is a different file than 'b'" in error_line(proc)


def test_merge_shows_the_machines_serving_plans_side_by_side(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    reports = []
    for name in ("box-a", "box-b"):
        out = tmp_path / f"{name}.json"
        proc = run_cli(
            "bench", mlp_onnx, "--plan", "--latency-budget", "50ms", "--concurrency-requests",
            "30", "--plan-seconds", "3", "--runs", "5", "--trials", "1", "-q", "-o", out,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        reports.append(out)
    md = tmp_path / "m.md"
    proc = run_cli("report", "merge", *reports, "--json", "--markdown", md)
    assert proc.returncode == 0, proc.stderr
    plans = json.loads(proc.stdout)["plans"]
    assert [p["source"] for p in plans] == ["box-a", "box-b"]
    assert all(p["chosen"] is not None and p["budget_ms"] == 50 for p in plans)
    text = md.read_text()
    assert "Serving plans:" in text
    assert text.count("| mlp | box-") == 2
