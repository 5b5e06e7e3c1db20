"""The provider recipes in configs/targets: CPU ones run here end to end on an existing ONNX
model; GPU/OpenVINO ones are validated as configuration and refuse cleanly without the
provider (this machine has none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from onnxopt.config import load_config
from onnxopt.errors import ExitCode
from onnxopt.runtime import available_providers
from tests.conftest import REPO, error_line, run_cli

TARGETS = REPO / "configs" / "targets"
RECIPES = sorted(TARGETS.glob("*.yaml"))
CPU_RECIPES = ["cpu-x86-vnni", "cpu-arm64"]


@pytest.fixture()
def model_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlp_onnx: Path) -> dict[str, str]:
    """An existing ONNX model (the MLP sample, exported once) and calibration samples."""
    cal = np.random.default_rng(0).standard_normal((16, 1, 64)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", features=cal)
    env = {"MODEL": str(mlp_onnx), "CALIB": str(tmp_path / "cal.npz"), "OUT": str(tmp_path / "out")}
    # the sample's random weights and data: the recipes' plumbing, not their accuracy (held-out
    # samples of random data put a random MLP's int8 near cosine 0.99, by CPU)
    env["MIN_COSINE"] = "0.95"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_every_recipe_is_a_valid_pipeline(model_env: dict[str, str]) -> None:
    assert {p.stem for p in RECIPES} >= {*CPU_RECIPES, "cuda-fp16", "tensorrt", "openvino"}
    for path in RECIPES:
        cfg, _ = load_config(path)
        assert cfg.model.path == model_env["MODEL"], path
        text = path.read_text()
        assert "Tested here" in text, f"{path.name} must say what was tested on this machine"


@pytest.mark.parametrize("name", CPU_RECIPES)
def test_cpu_recipe_runs_end_to_end(model_env: dict[str, str], name: str) -> None:
    proc = run_cli("run", TARGETS / f"{name}.yaml", "--json", env=model_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["status"] == "ok"
    assert manifest["pipeline"]["config"]["model"]["path"] == model_env["MODEL"]
    quantize = next(s for s in manifest["steps"] if s["type"] == "quantize")
    assert quantize["verification"]["passed"]
    if name == "cpu-arm64":
        package = next(s for s in manifest["steps"] if s["type"] == "package")
        assert [f["path"] for f in package["files"]][0].endswith(".ort")


@pytest.mark.parametrize("name", ["cuda-fp16", "tensorrt", "openvino"])
def test_accelerator_recipes_refuse_cleanly_without_their_provider(
    model_env: dict[str, str], name: str
) -> None:
    provider = yaml.safe_load((TARGETS / f"{name}.yaml").read_text())["target"]["provider"]
    if any(provider.lower() in p.lower() for p in available_providers()):
        pytest.skip(f"{provider} is available here: the recipe would really run")
    proc = run_cli("run", TARGETS / f"{name}.yaml", env=model_env)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert f"provider {provider!r}" in line and "not available" in line and "cpu" in line, line
    assert not Path(model_env["OUT"]).exists() or not list(Path(model_env["OUT"]).glob("*.onnx"))
