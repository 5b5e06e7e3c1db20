"""A model over 2 GB (external data) through inspect, simplify, prune, dynamic INT8 and bench.

Slow; CI runs it. Int4 and onnxsim on the same model, and the time and peak memory of every
step, are measured by benchmarks/large_model.py (in docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.inspection import inspect_model
from onnxopt.modelio import TWO_GB, external_data_files
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
            "steps": [
                {"type": "simplify", "backend": "ort", "guard": None},  # no timing of 2 GB
                {"type": "prune", "method": "magnitude", "ratio": 0.5, "measure_speed": False},
                {
                    "type": "quantize",
                    "mode": "dynamic",
                    "measure_speed": False,
                    "tolerance": {"min_cosine": 0.95},
                },
                {"type": "bench", "runs": 3, "trials": 1, "warmup": 1},
            ],
        }
    )
    manifest = run_pipeline(cfg, tmp_path)
    entry = manifest["steps"][0]
    assert entry["verification"]["passed"] is True
    assert entry["output"]["size_bytes"] > TWO_GB
    assert entry["output"]["external_data"] == [entry["output"]["path"] + ".data"]
    pruned = manifest["steps"][1]
    assert pruned["verification"]["passed"] is True
    assert pruned["report"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruned["output"]["external_data"] == [pruned["output"]["path"] + ".data"]
    int8 = manifest["steps"][2]
    assert int8["verification"]["passed"] is True
    assert int8["report"]["engine"] == "streaming"  # weights one at a time, not onnxruntime's
    assert int8["report"]["new_quantized_ops"]["MatMulInteger"] == 9
    assert int8["output"]["size_bytes"] < entry["output"]["size_bytes"] / 3
    bench = manifest["steps"][3]
    assert [r["model"] for r in bench["report"]["results"]] == [
        "source",
        "01-simplify",
        "02-prune",
        "03-quantize",
    ]
    # re-running is a cache hit, even for 2 GB of weights
    again = run_pipeline(cfg, tmp_path)
    assert [s["status"] for s in again["steps"]] == ["cached"] * 4
