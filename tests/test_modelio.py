"""Loading, saving, hashing and moving models, external data included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import InputError
from onnxopt.modelio import (
    external_data_files,
    load_model,
    model_digest,
    model_size,
    move_model,
    save_model,
)
from tests import models
from tests.conftest import error_line, run_cli


def test_external_data_round_trip_through_pipeline(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "chain.onnx", 3, 64, external=True)
    assert external_data_files(src) == [tmp_path / "chain.onnx.data"]
    out = tmp_path / "out"
    cfg = parse_config(
        {
            "model": {"path": str(src)},
            "output_dir": str(out),
            "external_data": "always",
            "steps": [
                {"type": "simplify", "guard": None},
                {"type": "simplify", "backend": "ort", "guard": None},
            ],
        }
    )
    manifest = run_pipeline(cfg, tmp_path)
    for entry in manifest["steps"]:
        path = out / entry["output"]["path"]
        assert entry["output"]["external_data"] == [path.name + ".data"]
        assert entry["output"]["size_bytes"] == model_size(path) > 3 * 64 * 64 * 4
        assert path.stat().st_size < 4096  # the weights are in the .data file
    # the parent's digest covers its external data
    assert manifest["steps"][0]["input"]["sha256"] == model_digest(src)
    x = np.ones((2, 64), np.float32)
    final = out / manifest["final_artifact"]
    got = ort.InferenceSession(str(final)).run(None, {"x": x})[0]
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_digest_changes_with_external_data_bytes(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "chain.onnx", 1, 16, external=True)
    before = model_digest(src)
    data = tmp_path / "chain.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert model_digest(src) != before


def test_move_model_renames_data_without_loading_weights(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "a.onnx", 2, 32, external=True)
    model = load_model(src)
    saved = save_model(model, tmp_path / "b.onnx", external_data="always")
    dst = tmp_path / "final" / "c.onnx"
    move_model(saved, dst)
    assert not saved.exists() and not (tmp_path / "b.onnx.data").exists()
    assert external_data_files(dst) == [dst.parent / "c.onnx.data"]
    x = np.ones((1, 32), np.float32)
    np.testing.assert_allclose(
        ort.InferenceSession(str(dst)).run(None, {"x": x})[0],
        ort.InferenceSession(str(src)).run(None, {"x": x})[0],
    )


def test_cli_output_with_external_data(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "chain.onnx", 2, 32, external=True)
    out = tmp_path / "o" / "chain.simple.onnx"
    proc = run_cli("simplify", src, "-o", out, "--external-data", "always", "--no-guard", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "chain.simple.onnx",
        "chain.simple.onnx.data",
    ]
    onnx.checker.check_model(str(out))


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 1, 8, external=True)
    model = onnx.load(str(src), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
    onnx.save_model(model, str(src))
    with pytest.raises(InputError, match="points outside the model's folder"):
        load_model(src)
    proc = run_cli("inspect", src)
    assert proc.returncode == 2
    assert "refusing to read it" in error_line(proc)


def test_missing_external_data_file(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 1, 8, external=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(InputError, match="external data file 'm.onnx.data'.*is missing"):
        load_model(src)


def test_truncated_and_graphless_files(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="not a valid ONNX file"):
        load_model(src)
    empty = tmp_path / "g.onnx"
    empty.write_bytes(helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString())
    with pytest.raises(InputError, match="holds no ONNX graph"):
        load_model(empty)
    with pytest.raises(InputError, match="found a directory"):
        load_model(tmp_path)
