"""The engine: artifacts, manifest, verification, caching, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ExitCode, InputError, VerificationError
from onnxopt.modelio import model_digest
from tests import models
from tests.conftest import error_line, finished_artifacts, run_cli, write_yaml

GUARDED = ("simplify", "quantize", "prune")


def _config(src: Path, out: Path, steps: list[dict], **extra: object) -> dict:
    """A pipeline; its steps' default speed guard is off (these tests are about the engine's
    artifacts, caching and verification; the guard has its own tests in test_bench.py)."""
    return {
        "name": "t",
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [{"guard": None, **s} if s["type"] in GUARDED else s for s in steps],
        **extra,
    }


def test_two_steps_write_named_artifacts_and_manifest(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    cfg = parse_config(
        _config(src, out, [{"type": "simplify"}, {"type": "simplify", "backend": "ort"}])
    )
    manifest = run_pipeline(cfg, tmp_path)

    names = finished_artifacts(out)
    assert len(names) == 2
    assert re.fullmatch(r"01-simplify-[0-9a-f]{8}\.onnx", names[0])
    assert re.fullmatch(r"02-simplify-[0-9a-f]{8}\.onnx", names[1])
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["status"] == "ok"
    assert on_disk["final_artifact"] == names[1]
    first, second = on_disk["steps"]
    assert first["parent"] == str(src) and second["parent"] == names[0]
    assert first["output"]["sha256"] == model_digest(out / names[0])
    assert second["input"]["sha256"] == first["output"]["sha256"]
    assert first["versions"]["onnxruntime"] == ort.__version__
    assert first["verification"]["passed"] is True
    assert first["verification"]["main"]["outputs"][0]["cosine"] == pytest.approx(1.0)
    # the constant Add c1+c2 was folded: 3 nodes -> 2
    assert first["report"]["nodes_before"] == 3 and first["report"]["nodes_after"] == 2
    assert manifest["steps"][0]["key"] == first["key"]
    # the shared input set is saved and matches the spec read from the model
    with np.load(out / "inputs.npz") as data:
        assert data["x"].shape == (1, 4)
    assert on_disk["inputs"]["second_dims"] == {"batch": 2}
    assert "second_shape" in first["verification"]


def test_rerun_is_cache_hit_and_config_change_reruns_from_that_step(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    steps = [{"type": "simplify"}, {"type": "simplify", "backend": "ort"}]
    run_pipeline(parse_config(_config(src, out, steps)), tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")}

    again = run_pipeline(parse_config(_config(src, out, steps)), tmp_path)
    assert [s["status"] for s in again["steps"]] == ["cached", "cached"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.onnx")} == mtimes

    steps[1] = {"type": "simplify", "backend": "ort", "ort": {"level": "extended"}}
    changed = run_pipeline(parse_config(_config(src, out, steps)), tmp_path)
    assert [s["status"] for s in changed["steps"]] == ["cached", "ok"]
    assert changed["steps"][1]["output"]["path"] != again["steps"][1]["output"]["path"]

    forced = run_pipeline(parse_config(_config(src, out, steps)), tmp_path, force=True)
    assert [s["status"] for s in forced["steps"]] == ["ok", "ok"]


def test_changed_input_model_bytes_invalidate_cache(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    cfg = parse_config(_config(src, out, [{"type": "simplify"}]))
    first = run_pipeline(cfg, tmp_path)
    models.add_relu(src, batch="n")  # same graph, other dim name: other bytes
    second = run_pipeline(cfg, tmp_path)
    assert second["steps"][0]["status"] == "ok"
    assert second["steps"][0]["key"] != first["steps"][0]["key"]


def test_tampered_artifact_is_not_a_cache_hit(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    cfg = parse_config(_config(src, out, [{"type": "simplify"}]))
    first = run_pipeline(cfg, tmp_path)
    artifact = out / first["steps"][0]["output"]["path"]
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    second = run_pipeline(cfg, tmp_path)
    assert second["steps"][0]["status"] == "ok"
    assert model_digest(artifact) == first["steps"][0]["output"]["sha256"]


FUSE_EXACT = {
    "type": "simplify",
    "backend": "transformers",
    "tolerance": {"atol": 0.0, "rtol": 0.0},
}


def test_fusion_passes_default_tolerance(tmp_path: Path) -> None:
    src = models.layernorm_decomposed(tmp_path / "ln.onnx")
    step = {"type": "simplify", "backend": "transformers"}
    manifest = run_pipeline(parse_config(_config(src, tmp_path / "o", [step])), tmp_path)
    entry = manifest["steps"][0]
    assert entry["report"]["after"]["ops"] == {"LayerNormalization": 1}
    assert 0 < entry["verification"]["main"]["outputs"][0]["max_abs_err"] < 1e-4


def test_verification_failure_exits_3_and_leaves_no_artifact(tmp_path: Path) -> None:
    src = models.layernorm_decomposed(tmp_path / "ln.onnx")
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "p.yaml", _config(src, out, [FUSE_EXACT]))
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    line = error_line(proc)
    assert "step 1 (simplify): output differs from its parent" in line
    assert "output 'y'" in line
    assert finished_artifacts(out) == []
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["steps"][0]["status"] == "failed"
    assert manifest["steps"][0]["verification"]["passed"] is False


def test_verification_failure_in_api_raises(tmp_path: Path) -> None:
    src = models.layernorm_decomposed(tmp_path / "ln.onnx")
    cfg = parse_config(_config(src, tmp_path / "out", [FUSE_EXACT]))
    with pytest.raises(VerificationError):
        run_pipeline(cfg, tmp_path)


def test_earlier_artifacts_survive_a_later_failure(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    ok = parse_config(_config(src, out, [{"type": "simplify"}]))
    first = run_pipeline(ok, tmp_path)
    kept = out / first["steps"][0]["output"]["path"]
    digest = model_digest(kept)
    bad = write_yaml(
        tmp_path / "bad.yaml",
        _config(
            src,
            out,
            [
                {"type": "simplify"},
                {
                    "type": "simplify",
                    "backend": "transformers",
                    "transformers": {"model_type": "nope"},
                },
            ],
        ),
    )
    proc = run_cli("run", bad)
    assert proc.returncode == ExitCode.USAGE
    assert "transformers.model_type 'nope' is not known" in error_line(proc)
    assert model_digest(kept) == digest
    assert finished_artifacts(out) == [kept.name]


def test_missing_and_corrupt_models_are_usage_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for content, expected in (
        (None, "model file not found"),
        (b"", "the file is empty"),
        (b"\x08\x07garbage\xff\xfe" * 10, "not a valid ONNX file"),
    ):
        src = tmp_path / "m.onnx"
        if content is not None:
            src.write_bytes(content)
        cfg = write_yaml(tmp_path / "p.yaml", _config(src, out, [{"type": "simplify"}]))
        proc = run_cli("run", cfg)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert expected in error_line(proc)
        assert finished_artifacts(out) == []


def test_inputs_file_is_used_and_checked(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    np.savez(tmp_path / "good.npz", x=np.ones((3, 4), np.float32))
    cfg = parse_config(
        _config(src, tmp_path / "o", [{"type": "simplify"}], verify={"inputs_file": "good.npz"})
    )
    manifest = run_pipeline(cfg, tmp_path)
    assert manifest["inputs"]["dims"] == {"batch": 3}
    assert manifest["steps"][0]["verification"]["main"]["outputs"][0]["shape"] == [3, 4]

    np.savez(tmp_path / "bad.npz", x=np.ones((3, 4), np.float64))
    bad = parse_config(
        _config(src, tmp_path / "o2", [{"type": "simplify"}], verify={"inputs_file": "bad.npz"})
    )
    with pytest.raises(InputError, match="expects float32, the input set gives float64"):
        run_pipeline(bad, tmp_path)


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    (tmp_path / "out").write_text("not a folder")
    cfg = write_yaml(tmp_path / "p.yaml", _config(src, tmp_path / "out", [{"type": "simplify"}]))
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.USAGE
    assert "exists and is not a folder" in error_line(proc)
    assert (tmp_path / "out").read_text() == "not a folder"


def test_json_output_is_the_manifest(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    cfg = write_yaml(tmp_path / "p.yaml", _config(src, tmp_path / "out", [{"type": "simplify"}]))
    proc = run_cli("run", cfg, "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["status"] == "ok" and manifest["steps"][0]["status"] == "ok"
    again = json.loads(run_cli("run", cfg, "--json").stdout)
    assert again["steps"][0]["status"] == "cached"


def test_table_shows_cache_column(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    cfg = write_yaml(tmp_path / "p.yaml", _config(src, tmp_path / "out", [{"type": "simplify"}]))
    assert run_cli("run", cfg).returncode == 0
    proc = run_cli("run", cfg)
    assert proc.returncode == 0
    assert "cached" in proc.stdout and "yes" in proc.stdout
    quiet = run_cli("run", cfg, "--quiet")
    assert quiet.stdout == ""


def test_second_shape_check_runs_at_other_dims(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    cfg = parse_config(
        _config(
            src,
            tmp_path / "o",
            [{"type": "simplify"}],
            dims={"batch": 2},
            verify={"second_dims": {"batch": 7}},
        )
    )
    manifest = run_pipeline(cfg, tmp_path)
    second = manifest["steps"][0]["verification"]["second_shape"]
    assert second["dims"] == {"batch": 7}
    assert second["outputs"][0]["shape"] == [7, 4]


def test_unknown_dim_name_is_rejected(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    cfg = parse_config(_config(src, tmp_path / "o", [{"type": "simplify"}], dims={"bacth": 2}))
    with pytest.raises(InputError, match="not symbolic dims"):
        run_pipeline(cfg, tmp_path)


def test_python_api_simplify_and_export(tmp_path: Path) -> None:
    import onnxopt

    src = models.add_relu(tmp_path / "m.onnx")
    manifest = onnxopt.simplify(src, tmp_path / "s.onnx", backend=["onnxsim", "ort"])
    assert manifest["final_artifact"] == "s.onnx"
    assert (tmp_path / "s.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "s.onnx"]
    with pytest.raises(onnxopt.OnnxoptError, match="never overwrites its input"):
        onnxopt.simplify(src, src)


def test_artifacts_of_an_older_config_are_removed_on_success_only(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    old = run_pipeline(parse_config(_config(src, out, [{"type": "simplify"}])), tmp_path)
    old_name = old["steps"][0]["output"]["path"]
    (out / "notes.txt").write_text("mine")
    failing = [{"type": "simplify", "backend": "transformers", "tolerance": {"atol": 0, "rtol": 0}}]
    ln = models.layernorm_decomposed(tmp_path / "ln.onnx")
    with pytest.raises(VerificationError):
        run_pipeline(parse_config(_config(ln, out, failing)), tmp_path)
    assert (out / old_name).exists()  # a failed run removes nothing
    new = run_pipeline(
        parse_config(_config(src, out, [{"type": "simplify", "backend": "ort"}])), tmp_path
    )
    assert new["removed_stale"] == [old_name]
    assert finished_artifacts(out) == [new["steps"][0]["output"]["path"]]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_symbolic_dim_without_a_value_defaults_to_one_and_is_recorded(tmp_path: Path) -> None:
    from onnxopt.config import parse_config
    from onnxopt.engine import run_pipeline
    from tests import models

    src = models.add_relu(tmp_path / "m.onnx")
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "o"),
        "steps": [{"type": "simplify"}],
    }
    manifest = run_pipeline(parse_config(cfg), tmp_path)
    assert manifest["inputs"]["dims"] == {"batch": 1}
    assert manifest["inputs"]["defaulted_dims"] == ["batch"]
    assert manifest["inputs"]["second_dims"] == {"batch": 2}
    assert manifest["steps"][0]["verification"]["second_shape"]["passed"]
