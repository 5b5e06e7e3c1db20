"""Exit codes 1 (runtime failure), 2 (missing extra) and 130 (interrupted), end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onnxopt.errors import ExitCode
from tests import models
from tests.conftest import (
    SAMPLES,
    default_sigint,
    error_line,
    finished_artifacts,
    run_cli,
    wait_for_first_step,
    write_yaml,
)


def test_runtime_failure_exits_1(tmp_path: Path) -> None:
    src = models.reshape_fails_at_runtime(tmp_path / "r.onnx")
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(src)},
            "output_dir": str(out),
            "steps": [{"type": "simplify", "backend": "ort"}],
        },
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.FAILURE, proc.stderr
    assert "ONNX Runtime failed to run the model" in error_line(proc)
    assert finished_artifacts(out) == []


def test_debug_shows_traceback(tmp_path: Path) -> None:
    src = models.reshape_fails_at_runtime(tmp_path / "r.onnx")
    proc = run_cli("simplify", src, "-o", tmp_path / "o.onnx", "-b", "ort", "--debug")
    assert proc.returncode == ExitCode.FAILURE
    assert "Traceback" in proc.stderr


def test_missing_torch_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # this interpreter has no torch\n"
        "from onnxopt.cli import main\n"
        f"sys.argv = ['onnxopt', 'export', {str(SAMPLES / 'mlp.py') + ':build'!r}, '-o', "
        f"{str(tmp_path / 'm.onnx')!r}, '-i', 'features:batch,64']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert "needs the Python package 'torch'" in line
    assert "pip install 'onnxopt[torch]'" in line
    assert list(tmp_path.iterdir()) == []


def test_interrupt_exits_130_and_leaves_no_partial_artifact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"factory": f"{SAMPLES / 'resnet.py'}:build"},
            "inputs": [{"name": "image", "shape": ["batch", 3, 224, 224]}],
            "output_dir": str(out),
            "steps": [{"type": "export"}, {"type": "simplify"}],
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt", "run", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
        preexec_fn=default_sigint,
    )
    manifest = out / "manifest.json"
    wait_for_first_step(out, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert finished_artifacts(out) == []
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    state = json.loads(manifest.read_text())
    assert state["status"] == "interrupted"
    assert state["steps"][0]["status"] == "interrupted"


def _readme_exit_codes() -> dict[int, str]:
    """The README's exit-code table: code -> meaning."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")]
    return {int(cells[1]): cells[2].strip() for cells in rows if cells[1].strip().isdigit()}


def test_every_exit_code_is_documented_and_reached(tmp_path: Path) -> None:
    """The whole table, pinned: the README documents exactly ExitCode's values, and a
    command reaches each (0-4 in this process through main(argv), 130 and 143 in a process
    that receives the signal)."""
    assert set(_readme_exit_codes()) == {int(code) for code in ExitCode}
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    broken = models.reshape_fails_at_runtime(tmp_path / "r.onnx")
    decomposed = models.layernorm_decomposed(tmp_path / "ln.onnx")
    reached = {
        ExitCode.OK: run_cli("inspect", src),
        ExitCode.FAILURE: run_cli("simplify", broken, "-o", tmp_path / "a.onnx", "-b", "ort"),
        ExitCode.USAGE: run_cli("simplify", tmp_path / "missing.onnx", "-o", tmp_path / "b.onnx"),
        ExitCode.VERIFICATION: run_cli(
            "simplify", decomposed, "-o", tmp_path / "c.onnx", "-b", "transformers",
            "--atol", "0", "--rtol", "0", "--no-guard",
        ),
        ExitCode.GATE: run_cli(
            "bench", src, "--runs", "5", "--trials", "1", "--latency-budget", "1us",
            "--percentile", "p50",
        ),
    }  # fmt: skip
    for code, proc in reached.items():
        assert proc.returncode == code, (code, proc.stderr)
        if code != ExitCode.OK:
            assert error_line(proc)
    for signum, code in (
        (signal.SIGINT, ExitCode.INTERRUPTED),
        (signal.SIGTERM, ExitCode.TERMINATED),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "onnxopt", "bench", str(src), "--runs", "100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=default_sigint,  # noqa: PLW1509 - the child only resets SIGINT
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while "measuring" not in (proc.stderr.readline() if proc.stderr else ""):
            assert time.monotonic() < deadline and proc.poll() is None, "bench never started"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ln.onnx", "m.onnx", "r.onnx"]
