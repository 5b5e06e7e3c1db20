"""Entry points, --help cost, --version, schema, exit codes of usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from onnxopt import __version__
from onnxopt.errors import ExitCode
from tests.conftest import error_line, run_cli


def test_help_does_not_import_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "from onnxopt.cli import app\n"
        "sys.argv = ['onnxopt', '--help']\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'onnxsim') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "simplify" in proc.stdout and "export" in proc.stdout


def test_version_from_console_script_and_module() -> None:
    proc = run_cli("--version", process=True)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"onnxopt {__version__}"


def test_every_subcommand_has_help() -> None:
    for cmd in ("run", "export", "simplify", "inspect", "schema"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0, (cmd, proc.stderr)
        assert "Usage" in proc.stdout


def test_schema_is_json_schema_of_the_pipeline() -> None:
    proc = run_cli("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert {"model", "steps", "inputs", "target"} <= set(schema["properties"])
    assert "steps" in schema["required"]
    # every field carries a description, so editors can show help
    assert all("description" in p for p in schema["properties"].values())


def test_unknown_option_is_usage_error() -> None:
    proc = run_cli("simplify", "x.onnx", "-o", "y.onnx", "--no-such-flag")
    assert proc.returncode == ExitCode.USAGE


def test_bad_dim_flag_is_one_line_usage_error(tmp_path) -> None:
    proc = run_cli("inspect", tmp_path / "m.onnx", "--dim", "batch")
    assert proc.returncode == ExitCode.USAGE
    assert "--dim expects NAME=INT" in error_line(proc)


def test_completion_is_offered() -> None:
    proc = run_cli("--help")
    assert "--install-completion" in proc.stdout


def test_only_the_flags_given_reach_the_config(tmp_path: Path) -> None:
    """Defaults live in the config models only: a subcommand without flags runs the step's
    defaults, and flags of another mode are refused rather than silently ignored."""
    from onnxopt.config import PruneStep, QuantizeStep, SimplifyStep
    from tests import models

    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    for args, cls, extra in (
        (["simplify"], SimplifyStep, {}),
        (["quantize", "-m", "dynamic"], QuantizeStep, {"mode": "dynamic"}),
        (["prune", "--method", "magnitude"], PruneStep, {"method": "magnitude"}),
    ):
        proc = run_cli(*args[:1], src, *args[1:], "-o", tmp_path / "o.onnx", "--json")
        assert proc.returncode == 0, proc.stderr
        config = json.loads(proc.stdout)["steps"][0]["config"]
        default = cls.model_validate({"type": args[0], **extra}).model_dump(mode="json")
        assert config == default, (args, config, default)
    proc = run_cli(
        "quantize", src, "-o", tmp_path / "q.onnx", "-m", "dynamic", "--block-size", "64"
    )
    assert proc.returncode == ExitCode.USAGE
    assert "mode dynamic does not read int4.block_size" in error_line(proc)
