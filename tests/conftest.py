"""Shared fixtures: run the real CLI, build tiny models, export sample models once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m onnxopt ARGS`` in a real process; return the completed process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "160")
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def default_sigint() -> None:
    """preexec_fn for a child that must react to SIGINT even if this process ignores it.

    A shell starts background jobs (as some CI runners do) with SIGINT ignored; children
    inherit that, and Python then leaves SIGINT ignored, as it should.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write_yaml(path: Path, data: dict) -> Path:
    """Write a pipeline mapping as YAML."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single 'error:' line a failed command printed; asserts there is no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def finished_artifacts(folder: Path) -> list[str]:
    """Names of files in a folder that look like finished artifacts."""
    if not folder.exists():
        return []
    return sorted(
        p.name for p in folder.iterdir() if p.suffix == ".onnx" and not p.name.startswith(".")
    )


def wait_for_first_step(out: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Block until a running pipeline's manifest shows its first step under way."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((out / "manifest.json").read_text())["steps"]:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the pipeline never started its first step")


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MLP sample exported once (dynamic batch)."""
    out = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    proc = run_cli(
        "export",
        f"{SAMPLES / 'mlp.py'}:build",
        "-o",
        out,
        "-i",
        "features:batch,64",
        "--dim",
        "batch=2",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    return out
