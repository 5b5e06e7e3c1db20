"""A model over 2 GB (external data) through inspect and simplify. Slow; CI runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxopt.artifacts import external_data_files
from onnxopt.config import parse_config
from onnxopt.inspection import inspect_model
from onnxopt.modelio import TWO_GB
from onnxopt.pipeline import run_pipeline
from tests import models

pytestmark = pytest.mark.slow


def test_model_over_2gb_through_simplify(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "big.onnx", 9, 8192, external=True)
    data = external_data_files(src)
    assert sum(p.stat().st_size for p in data) > TWO_GB

    info = inspect_model(src, dims={"batch": 1})
    assert info["weight_bytes"] > TWO_GB
    assert info["compute"]["macs"] == 9 * 8192 * 8192

    out = tmp_path / "out"
    cfg = parse_config(
        {
            "model": {"path": str(src)},
            "output_dir": str(out),
            "steps": [{"type": "simplify", "backend": "ort"}],
        }
    )
    manifest = run_pipeline(cfg, tmp_path)
    entry = manifest["steps"][0]
    assert entry["verification"]["passed"] is True
    assert entry["output"]["size_bytes"] > TWO_GB
    assert entry["output"]["external_data"] == [entry["output"]["path"] + ".data"]
    # re-running is a cache hit, even for 2 GB of weights
    again = run_pipeline(cfg, tmp_path)
    assert again["steps"][0]["status"] == "cached"
