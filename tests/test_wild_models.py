"""Models from other exporters through every step: each works, or fails with a precise reason.

The models (tests/wild_models.py) hold weights in Constant nodes, read outer-scope values in
If/Loop bodies, name dims oddly ('?', 'unk__12', 'SomeExporter.DynamicDimension.0', none),
take int64/int32/bool/scalar/state inputs, return sequences and maps, and use ai.onnx.ml.
Each command runs in process (the real CLI code through Typer's runner) to keep the matrix
quick; the process-level behaviour of the CLI is covered elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxopt.cli import app
from onnxopt.errors import ExitCode
from onnxopt.runtime import make_session, run_session
from onnxopt.verify import make_inputs, specs_from_model
from tests.wild_models import WILD

# the only failures accepted, each with the words that must explain it
EXPECTED_FAILURES = {
    # channel pruning needs a channel it may remove; these models' only groups feed an
    # output (whose shape must not change) or ops it does not understand
    ("prune-channel", "*"): (ExitCode.FAILURE, "channel pruning removed nothing"),
}

COMMANDS: dict[str, list[str]] = {
    "simplify": ["simplify"],
    "simplify-ort": ["simplify", "--backend", "ort"],
    "quantize-dynamic": ["quantize", "--mode", "dynamic", "--min-cosine", "0.9"],
    "quantize-static": [
        "quantize",
        "--mode",
        "static",
        "--allow-synthetic-calibration",
        "--calibration-samples",
        "4",
        "--min-cosine",
        "0.9",
    ],
    "quantize-fp16": ["quantize", "--mode", "fp16"],
    "quantize-int4": ["quantize", "--mode", "int4", "--min-cosine", "0.9"],
    "prune-magnitude": ["prune", "--method", "magnitude", "--ratio", "0.3"],
    "prune-channel": ["prune", "--ratio", "0.25"],
}


@pytest.fixture(scope="module")
def wild(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("wild")
    return {name: build(folder / f"{name}.onnx") for name, build in WILD.items()}


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def _error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("name", sorted(WILD))
def test_inspect_reports_every_input_and_output(wild: dict[str, Path], name: str) -> None:
    code, output = _invoke("inspect", wild[name], "--json")
    assert code == ExitCode.OK, output
    info = json.loads(output)
    model = onnx.load(str(wild[name]))
    assert [i["name"] for i in info["inputs"]] == [i.name for i in model.graph.input]
    assert [o["name"] for o in info["outputs"]] == [o.name for o in model.graph.output]
    assert info["compute"]["macs"] > 0
    if name == "ml_classifier":
        assert info["outputs"][1]["dtype"] == "sequence<map<int64,float32>>"
        assert info["ops"]["ai.onnx.ml::ZipMap"] == 1


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(WILD))
def test_every_step_works_or_says_why(
    wild: dict[str, Path], tmp_path: Path, name: str, command: str
) -> None:
    src = wild[name]
    out = tmp_path / f"{name}-{command}.onnx"
    code, output = _invoke(*COMMANDS[command][:1], src, *COMMANDS[command][1:], "-o", out, "-q")
    expected = EXPECTED_FAILURES.get((command, name)) or EXPECTED_FAILURES.get((command, "*"))
    if code != ExitCode.OK:
        line = _error_line(output)
        assert "internal error" not in line, line
        assert expected is not None, f"{command} on {name} failed: {line}"
        assert code == expected[0] and expected[1] in line, line
        assert not out.exists()
        return
    # the artifact runs in ONNX Runtime and keeps the model's interface
    model = onnx.load(str(src))
    result = onnx.load(str(out))
    assert [i.name for i in result.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in result.graph.output] == [o.name for o in model.graph.output]
    specs = specs_from_model(model)
    dims = {d: 3 for s in specs for d in s.shape if isinstance(d, str)}
    feeds = make_inputs(specs, dims, seed=5)
    got = run_session(make_session(out), feeds, out.name)
    ref = run_session(make_session(src), feeds, src.name)
    assert [g.shape for g in got] == [r.shape for r in ref]
    if command in ("simplify", "simplify-ort"):  # no precision is given up here
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(WILD))
def test_bench_measures_and_compares(wild: dict[str, Path], tmp_path: Path, name: str) -> None:
    simplified = tmp_path / "s.onnx"
    code, output = _invoke("simplify", wild[name], "-o", simplified, "-q")
    assert code == ExitCode.OK, output
    report = tmp_path / "b.json"
    code, output = _invoke(
        "bench",
        wild[name],
        simplified,
        "--runs",
        "5",
        "--trials",
        "1",
        "--warmup",
        "1",
        "-o",
        report,
        "-q",
    )
    assert code == ExitCode.OK, output
    rows = json.loads(report.read_text())["results"]
    assert len(rows) == 2 and all(r["latency_ms"]["p50"] > 0 for r in rows)
