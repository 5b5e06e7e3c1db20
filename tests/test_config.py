"""Strict config validation: field paths, did-you-mean, env vars, YAML errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxopt.config import ExportStep, SimplifyStep, load_config, parse_config
from onnxopt.errors import ConfigError, ExitCode
from tests.conftest import error_line, finished_artifacts, run_cli, write_yaml

BASE = {
    "model": {"path": "m.onnx"},
    "steps": [{"type": "simplify"}],
}


def _err(data: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "p.yaml")
    assert info.value.exit_code == ExitCode.USAGE
    return str(info.value)


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(BASE)
    step = cfg.steps[0]
    assert isinstance(step, SimplifyStep)
    assert step.backend == ["onnxsim"]
    assert cfg.target.provider == "cpu"
    assert cfg.verify.second_shape is True


def test_model_shorthand_string() -> None:
    assert parse_config({**BASE, "model": "a/b.onnx"}).model.path == "a/b.onnx"
    cfg = parse_config(
        {
            "model": "pkg.mod:build",
            "inputs": [{"name": "x", "shape": ["batch", 3]}],
            "steps": [{"type": "export"}],
        }
    )
    assert cfg.model.factory == "pkg.mod:build"
    assert isinstance(cfg.steps[0], ExportStep)


def test_typo_in_nested_key_names_path_and_suggests() -> None:
    data = {**BASE, "steps": [{"type": "simplify", "onnxsim": {"skip_fuse_bm": True}}]}
    msg = _err(data)
    assert "p.yaml: steps[0].onnxsim.skip_fuse_bm: unknown key" in msg
    assert "did you mean 'skip_fuse_bn'?" in msg


def test_typo_in_top_level_key() -> None:
    msg = _err({**BASE, "targt": {"provider": "cpu"}})
    assert "targt: unknown key; did you mean 'target'?" in msg


def test_unknown_step_type_suggests() -> None:
    msg = _err({**BASE, "steps": [{"type": "simplfy"}]})
    assert "steps[0].type: unknown step type 'simplfy'; did you mean 'simplify'?" in msg


def test_planned_step_is_not_available_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxopt import registry

    monkeypatch.setitem(registry.PLANNED, "serve", 9)
    msg = _err({**BASE, "steps": [{"type": "simplify"}, {"type": "serve"}]})
    assert "steps[1]: step type 'serve' is not available yet" in msg
    assert "(planned, issue 9)" in msg


def test_wrong_type_names_field_and_found_value() -> None:
    msg = _err({**BASE, "steps": [{"type": "simplify", "ort": {"level": "max"}}]})
    assert "steps[0].ort.level" in msg and "'max'" in msg


def test_missing_required_field() -> None:
    assert "model: required field is missing" in _err({"steps": [{"type": "simplify"}]})


def test_factory_needs_export_first_and_inputs() -> None:
    msg = _err({"model": {"factory": "a:b"}, "steps": [{"type": "simplify"}]})
    assert "first step must be 'export'" in msg
    msg = _err({"model": {"factory": "a:b"}, "steps": [{"type": "export"}]})
    assert "needs an 'inputs' list" in msg


def test_export_on_onnx_source_is_rejected() -> None:
    assert "'export' may appear once" in _err({**BASE, "steps": [{"type": "export"}]})


def test_empty_steps_and_empty_file() -> None:
    assert "steps" in _err({**BASE, "steps": []})
    assert "the file is empty" in _err(None)


def test_env_var_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_DIR", "/models")
    cfg = parse_config(
        {**BASE, "model": {"path": "${MODEL_DIR}/m.onnx"}, "output_dir": "${OUT:-o}"}
    )
    assert cfg.model.path == "/models/m.onnx"
    assert cfg.output_dir == "o"


def test_unset_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    msg = _err({**BASE, "output_dir": "${NOPE_NOT_SET}/x"})
    assert "output_dir: environment variable ${NOPE_NOT_SET} is not set" in msg


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: m.onnx\nsteps: [\n  {type: simplify\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "YAML syntax error at line" in str(info.value)
    assert "column" in str(info.value)


def test_cli_config_error_exit_code_and_nothing_written(tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {**BASE, "output_dir": "out", "steps": [{"type": "simplify", "bakend": "ort"}]},
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.USAGE
    line = error_line(proc)
    assert "steps[0].bakend: unknown key; did you mean 'backend'?" in line
    assert str(cfg) in line
    assert not (tmp_path / "out").exists()


def test_missing_pipeline_file(tmp_path: Path) -> None:
    proc = run_cli("run", tmp_path / "nope.yaml")
    assert proc.returncode == ExitCode.USAGE
    assert "pipeline file not found" in error_line(proc)
    assert finished_artifacts(tmp_path) == []


def test_every_problem_is_named_on_a_line_of_its_own(tmp_path: Path) -> None:
    """`stepz:` for `steps:` reported only "steps: required field is missing (and 1 more
    problem(s))", hiding the line that names the typo."""
    text = _err({"model": {"path": "m.onnx"}, "stepz": []})
    lines = text.splitlines()
    assert lines[0].startswith("p.yaml: stepz: unknown key; did you mean 'steps'?"), text
    assert "(and 1 more problem(s), below)" in lines[0]
    assert lines[1].strip() == "p.yaml: steps: required field is missing"
    # problems in several steps and outside them: every one, each with its did-you-mean
    text = _err(
        {
            "model": {"path": "m.onnx"},
            "dimz": {},
            "steps": [
                {"type": "simplify", "onnxsim": {"skip_fuse_bm": True}},
                {"type": "quantise"},
                {"type": "prune", "ratio": 2},
            ],
        }
    )
    assert "steps[0].onnxsim.skip_fuse_bm: unknown key; did you mean 'skip_fuse_bn'?" in text
    assert "steps[1].type: unknown step type 'quantise'; did you mean 'quantize'?" in text
    assert "steps[2].ratio" in text
    assert "dimz: unknown key; did you mean 'dims'?" in text
    assert len(text.splitlines()) == 4
    # the CLI shows them all: the first on the error line, the others below it
    cfg = tmp_path / "p.yaml"
    cfg.write_text("model: {path: m.onnx}\nstepz: []\n")
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.USAGE
    assert "did you mean 'steps'?" in error_line(proc)
    assert "steps: required field is missing" in proc.stderr


def test_another_quantize_modes_options_are_refused_in_yaml_and_the_api(tmp_path: Path) -> None:
    """The rule lives in the config: YAML, the API and the CLI get the same error."""
    import onnxopt

    step = {"type": "quantize", "mode": "dynamic", "int4": {"block_size": 64}}
    msg = _err({**BASE, "steps": [step]})
    assert "steps[0]: mode dynamic does not read int4.block_size" in msg
    # a section given with its defaults only, and auto reading every section, are fine
    parse_config({**BASE, "steps": [{**step, "int4": {"block_size": 32}}]})
    parse_config({**BASE, "steps": [{**step, "mode": "auto"}]})
    with pytest.raises(ConfigError, match=r"mode fp16 does not read static\.per_channel"):
        onnxopt.quantize(
            tmp_path / "m.onnx", tmp_path / "q.onnx", mode="fp16", static={"per_channel": False}
        )
    assert not list(tmp_path.iterdir())
