"""inspect: I/O, ops, parameters, MACs against hand-computed values, placement."""

from __future__ import annotations

import json
from pathlib import Path

from onnxopt.errors import ExitCode
from onnxopt.inspection import inspect_model
from tests import models
from tests.conftest import Untouched, error_line, run_cli


def test_macs_match_hand_computation(tmp_path: Path) -> None:
    path = models.compute_model(tmp_path / "c.onnx")
    info = inspect_model(path, dims={"batch": 3})
    compute = info["compute"]
    assert compute["macs"] == models.compute_model_macs(3)
    assert compute["flops"] == 2 * models.compute_model_macs(3)
    assert compute["macs_by_op"]["Conv"] == 3 * 8 * 6 * 6 * 27
    assert compute["nodes_not_counted"] == []
    assert info["parameters"] == 8 * 3 * 3 * 3 + 16 * 288 + 16 * 5
    assert info["weight_bytes"] == 4 * info["parameters"]
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 3, 8, 8], "dtype": "float32"}]
    assert info["ops"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1}
    assert info["opset"] == 18


def test_macs_through_contrib_ops_use_a_runtime_run(tmp_path: Path, mlp_onnx: Path) -> None:
    fused = tmp_path / "mlp.all.onnx"
    proc = run_cli(
        "simplify", mlp_onnx, "-o", fused, "-b", "ort", "--ort-level", "all", "--no-guard", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    info = inspect_model(fused, dims={"batch": 3})
    assert "com.microsoft::FusedGemm" in info["ops"]
    assert info["compute"]["shapes_from"] == "shape inference + one ONNX Runtime run"
    assert info["compute"]["macs"] == 3 * (64 * 128 + 128 * 128 + 128 * 10)


def test_layout_specific_convs_are_listed_not_guessed(tmp_path: Path) -> None:
    src = models.compute_model(tmp_path / "c.onnx")
    fused = tmp_path / "c.all.onnx"
    proc = run_cli(
        "simplify", src, "-o", fused, "-b", "ort", "--ort-level", "all", "--no-guard", "-q"
    )
    assert proc.returncode == 0, proc.stderr
    info = inspect_model(fused, dims={"batch": 2})
    if "com.microsoft.nchwc::Conv" in info["ops"]:
        assert len(info["compute"]["nodes_not_counted"]) == 1
        assert info["compute"]["macs"] == models.compute_model_macs(2) - 2 * 8 * 6 * 6 * 27
    else:
        assert info["compute"]["macs"] == models.compute_model_macs(2)


def test_cli_json_and_placement(tmp_path: Path) -> None:
    path = models.compute_model(tmp_path / "c.onnx")
    with Untouched(path):
        proc = run_cli("inspect", path, "--json", "--provider", "cpu", "--dim", "batch=2")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["compute"]["macs"] == models.compute_model_macs(2)
    place = info["placement"]
    assert place["provider"] == "CPUExecutionProvider"
    assert place["executed_nodes"] >= 1
    assert place["by_provider"] == {"CPUExecutionProvider": place["executed_nodes"]}
    assert place["not_on_provider"] == {}


def test_human_output_mentions_the_essentials(tmp_path: Path) -> None:
    path = models.compute_model(tmp_path / "c.onnx")
    proc = run_cli("inspect", path)
    assert proc.returncode == 0, proc.stderr
    for text in ("opset 18", "Conv", "MACs", "batch"):
        assert text in proc.stdout


def test_unavailable_provider_lists_available(tmp_path: Path) -> None:
    path = models.compute_model(tmp_path / "c.onnx")
    proc = run_cli("inspect", path, "--provider", "cuda")
    assert proc.returncode == ExitCode.USAGE
    line = error_line(proc)
    assert "'cuda' (CUDAExecutionProvider) is not available" in line
    assert "available: " in line and "cpu" in line.split("available: ")[1]


def test_unknown_provider_name_suggests(tmp_path: Path) -> None:
    path = models.compute_model(tmp_path / "c.onnx")
    proc = run_cli("inspect", path, "--provider", "cdua")
    assert proc.returncode == ExitCode.USAGE
    assert "did you mean 'cuda'?" in error_line(proc)
