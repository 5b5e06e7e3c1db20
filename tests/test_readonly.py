"""An output folder that cannot be written: a one-line usage error before any work, nothing lost.

Sessions and CI run as root, where permission bits do not stop writes, so the folder is made
read-only for real with a read-only bind mount inside a private user + mount namespace
(``unshare -rm``). As a normal user, ``chmod`` is enough and is used instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxopt.errors import ExitCode
from tests import models
from tests.conftest import error_line, finished_artifacts, write_yaml

_MOUNT_RO = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", "/tmp", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _run_with_read_only(
    folder: Path, *args: str | Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``folder`` read-only for it (and only for it)."""
    cli = [sys.executable, "-m", "onnxopt", *map(str, args)]
    env = {**os.environ, "COLUMNS": "160"}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(
                cli, cwd=cwd, env=env, capture_output=True, text=True, check=False
            )
        finally:
            folder.chmod(0o755)
    if not _namespaces_work():
        pytest.skip("running as root without user namespaces: no way to make a folder read-only")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", str(folder), *cli],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


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
        proc = _run_with_read_only(locked, *args, cwd=tmp_path)
        assert proc.returncode == ExitCode.USAGE, (args, proc.stderr)
        line = error_line(proc)
        assert "cannot write" in line and str(locked.name) in line and hint in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
        assert finished_artifacts(locked) == ["keep.onnx"]
        assert kept.read_bytes() == before
        assert sorted(p.name for p in locked.iterdir()) == ["keep.onnx"]
