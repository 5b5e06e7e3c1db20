"""The registry is the one table of steps; the quantize backends are one record each."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from onnxopt import registry
from onnxopt.config import AutoOptions, QuantizeStep, parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ConfigError
from onnxopt.steps.quantize.backend import BACKENDS, backends
from tests import models


@pytest.fixture
def rename_step() -> Iterator[None]:
    """One registry line makes tests/plugin_step.py a step."""
    registry.register(
        registry.StepSpec("rename", "tests.plugin_step:RenameStep", "tests.plugin_step:run")
    )
    try:
        yield
    finally:
        registry.unregister("rename")


def test_a_new_step_is_a_module_a_config_class_and_a_registry_line(
    rename_step: None, tmp_path: Path
) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    data = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "out"),
        "steps": [{"type": "rename", "graph_name": "plugged"}, {"type": "bench", "runs": 3}],
    }
    manifest = run_pipeline(parse_config(data), tmp_path)
    entry = manifest["steps"][0]
    assert entry["status"] == "ok" and entry["verification"]["passed"]
    assert entry["report"]["renamed_from"] == "add_relu"
    out = tmp_path / "out" / entry["output"]["path"]
    assert out.name.startswith("01-rename-") and onnx.load(str(out)).graph.name == "plugged"
    assert [m["label"] for m in manifest["steps"][1]["models"]] == ["source", "01-rename"]
    again = run_pipeline(parse_config(data), tmp_path)
    assert again["steps"][0]["status"] == "cached"
    with pytest.raises(ConfigError, match="graph_nam: unknown key; did you mean 'graph_name'"):
        parse_config({**data, "steps": [{"type": "rename", "graph_nam": "x"}]})


def test_an_unregistered_step_is_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown step type 'rename'"):
        parse_config({"model": "m.onnx", "steps": [{"type": "rename"}]})


def test_every_quantize_backend_has_its_config_and_its_recipes_are_named() -> None:
    modes = typing.get_args(QuantizeStep.model_fields["mode"].annotation)
    recipes = typing.get_args(
        typing.get_args(AutoOptions.model_fields["candidates"].annotation)[0]
    )[0]
    assert set(BACKENDS) | {"auto"} == set(modes)
    for b in backends():
        assert b.mode in QuantizeStep.model_fields, f"{b.mode} has no options field"
        for recipe in b.recipes:
            assert recipe.name in typing.get_args(recipes), recipe.name
