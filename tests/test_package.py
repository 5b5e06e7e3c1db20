"""The package step: ORT format for ORT Mobile / minimal builds, with its operator config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ConfigError, ExitCode
from onnxopt.verify import make_inputs, specs_from_model
from tests import models
from tests.conftest import Untouched, error_line, run_cli


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in session.run(None, feeds)]


def test_cli_package_writes_a_matching_ort_file_and_operator_config(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    out = tmp_path / "dist" / "c.ort"
    with Untouched(src):
        proc = run_cli("package", src, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    entry = manifest["steps"][0]
    assert entry["verification"]["passed"] is True
    assert out.read_bytes()[4:8] == b"ORTM"  # the flatbuffer identifier of the ORT format
    config = tmp_path / "dist" / "c.required_operators.config"
    assert str(tmp_path) not in config.read_text()  # no scratch path in a deliverable
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("#")]
    ops = {op for ln in lines if ln for op in ln.split(";")[2].split(",")}
    assert "Conv" in ops
    assert entry["report"]["operators"], entry["report"]
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == [
        "c.ort",
        "c.required_operators.config",
    ]
    # the .ort file computes what the ONNX model computes
    import onnx

    feeds = make_inputs(specs_from_model(onnx.load(str(src))), {"batch": 2}, seed=1)
    for got, want in zip(_outputs(out, feeds), _outputs(src, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_type_reduction_and_bad_output_name(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    proc = run_cli("package", src, "-o", tmp_path / "m.ort", "--type-reduction", "-q")
    assert proc.returncode == 0, proc.stderr
    config = (tmp_path / "m.required_operators_and_types.config").read_text()
    assert '"inputs"' in config or "Relu" in config
    proc = run_cli("package", src, "-o", tmp_path / "other.onnx")
    assert proc.returncode == ExitCode.USAGE
    assert "ending in .ort" in error_line(proc)


def test_pipeline_packages_the_quantized_model_and_caches_it(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 3, 64, external=False)
    out = tmp_path / "out"
    data = {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [
            {"type": "simplify", "backend": "ort"},
            # no guard: int8 of a tiny model may be slower; this tests what package does with it
            {
                "type": "quantize",
                "mode": "dynamic",
                "tolerance": {"min_cosine": 0.95},
                "guard": None,
            },
            {"type": "package"},
            {"type": "bench", "runs": 5, "trials": 1, "warmup": 1},
        ],
    }
    manifest = run_pipeline(parse_config(data), tmp_path)
    entry = manifest["steps"][2]
    assert entry["status"] == "ok" and entry["verification"]["passed"]
    names = [f["path"] for f in entry["files"]]
    assert names == ["03-package.ort", "03-package.required_operators.config"]
    assert all((out / n).is_file() for n in names)
    assert manifest["final_artifact"] == manifest["steps"][1]["output"]["path"]
    ops = entry["report"]["operators"]
    assert any("MatMulInteger" in op or "DynamicQuantizeMatMul" in op for op in ops), ops
    again = run_pipeline(parse_config(data), tmp_path)
    assert [s["status"] for s in again["steps"]] == ["cached"] * 4
    (out / names[0]).write_bytes(b"tampered")
    third = run_pipeline(parse_config(data), tmp_path)
    assert third["steps"][2]["status"] == "ok"  # rebuilt, not trusted
    assert (out / names[0]).read_bytes()[4:8] == b"ORTM"


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ([{"type": "package"}, {"type": "simplify"}], "must come after every step"),
        (
            [{"type": "quantize", "mode": "dynamic"}, {"type": "quantize", "mode": "fp16"}],
            "'quantize' appears more than once",
        ),
    ],
)
def test_step_lists_that_make_no_sense(tmp_path: Path, steps: list[dict], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config({"model": {"path": "m.onnx"}, "output_dir": "o", "steps": steps})
