"""An output folder that cannot be written: a one-line usage error before any work, nothing lost.

Sessions and CI run as root, where permission bits do not stop writes, so the folder is made
read-only for real with a read-only bind mount inside a private user + mount namespace
(``unshare -rm``). As a normal user, ``chmod`` is enough and is used instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from onnxopt.errors import ExitCode
from tests import models
from tests.conftest import error_line, finished_artifacts, run_cli_read_only, write_yaml


def test_unwritable_output_folder_is_a_usage_error(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    locked = tmp_path / "locked"
    locked.mkdir()
    kept = locked / "keep.onnx"
    shutil.copy(src, kept)
    before = kept.read_bytes()
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {"model": {"path": str(src)}, "output_dir": str(locked), "steps": [{"type": "simplify"}]},
    )
    cases = [
        (("run", cfg), "choose a writable output_dir"),
        (("simplify", src, "-o", locked / "s.onnx"), "choose a writable folder"),
        (("quantize", src, "-o", locked / "keep.onnx", "--mode", "dynamic"), "writable"),
        (("bench", src, "-o", locked / "b.json", "--runs", "3", "--trials", "1"), "writable"),
    ]
    for args, hint in cases:
        proc = run_cli_read_only(locked, *args, cwd=tmp_path)
        assert proc.returncode == ExitCode.USAGE, (args, proc.stderr)
        line = error_line(proc)
        assert "cannot write" in line and str(locked.name) in line and hint in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
        assert finished_artifacts(locked) == ["keep.onnx"]
        assert kept.read_bytes() == before
        assert sorted(p.name for p in locked.iterdir()) == ["keep.onnx"]
