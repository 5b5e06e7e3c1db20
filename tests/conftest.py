"""Shared fixtures: run the real CLI, build tiny models, export sample models once."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def python() -> list[str]:
    """The command that starts this test run's Python: under ``make test-avx2`` the same
    emulator (``ONNXOPT_TEST_EMULATOR``, e.g. qemu-x86_64 -cpu Haswell-v4), so that a CLI
    run in a child process takes the same CPU's kernels as the test itself."""
    return [*shlex.split(os.environ.get("ONNXOPT_TEST_EMULATOR", "")), sys.executable]


def run_cli(
    *args: str | Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the command line ``onnxopt ARGS``; return it as a completed process.

    In this process by default, through ``onnxopt.cli.main(argv)`` (stdout and stderr
    captured, ``cwd`` and ``env`` applied for the call): what a test of a command's
    behaviour needs, without starting Python again. ``process=True`` starts ``python -m
    onnxopt`` for what only a process shows: its exit status as the shell sees it, its
    imports, its signals, and a ``timeout``.
    """
    if process:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("COLUMNS", "160")
        return subprocess.run(
            [*python(), "-m", "onnxopt", *map(str, args)],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return _in_process([str(a) for a in args], cwd, {"COLUMNS": "160", **(env or {})})


def _in_process(
    argv: list[str], cwd: Path | None, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``onnxopt.cli.main(argv)`` with the call's working folder, environment and streams."""
    import contextlib
    import io

    from onnxopt.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with (
            contextlib.chdir(cwd or Path.cwd()),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            code = main(argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["onnxopt", *argv], code, out.getvalue(), err.getvalue())


def file_states(*paths: Path) -> dict[Path, tuple[str, int, int]]:
    """sha256, size and mtime (ns) of every file under ``paths``.

    A path may be a file or a folder (every file below it); an ONNX model brings the
    external data files it refers to.
    """
    from onnxopt.modelio import external_data_files

    files: set[Path] = set()
    for path in paths:
        if path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            files.add(path)
            if path.suffix == ".onnx":
                files.update(p for p in external_data_files(path) if p.is_file())
        else:
            raise AssertionError(f"{path} does not exist before the command")
    states = {}
    for f in sorted(files):
        stat = f.stat()
        states[f] = (hashlib.sha256(f.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns)
    return states


class Untouched:
    """The user's input files before a command; :meth:`check` asserts they are unchanged.

    Use it around every command a test runs: ``with Untouched(model, cal, yaml): ...``.
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self.before = file_states(*paths)

    def check(self) -> None:
        """Every input file still exists with the same bytes, size and mtime; none was added."""
        missing = [str(p) for p in self.before if not p.is_file()]
        assert not missing, f"input files gone: {missing}"
        after = {p: s for p, s in file_states(*self.paths).items()}
        changed = [str(p) for p in self.before if after.get(p) != self.before[p]]
        assert not changed, f"input files changed: {changed}"
        added = sorted(str(p) for p in set(after) - set(self.before))
        assert not added, f"files appeared among the inputs: {added}"

    def __enter__(self) -> Untouched:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None or exc[0] is AssertionError:
            self.check()


def listing(folder: Path) -> set[str]:
    """Every path below ``folder`` (files and folders), relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


_MOUNT_RO = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def namespaces_work() -> bool:
    """Whether ``unshare -rm`` can make a folder read-only for a child (root in CI)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", "/tmp", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def run_cli_read_only(
    folder: Path, *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``folder`` read-only for it (and only for it).

    Sessions and CI run as root, where permission bits do not stop writes, so the folder is
    made read-only with a read-only bind mount inside a private user + mount namespace
    (``unshare -rm``); as a normal user ``chmod`` is used. Skips the test when neither works.
    """
    cli = [*python(), "-m", "onnxopt", *map(str, args)]
    full_env = {**os.environ, "COLUMNS": "160", **(env or {})}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(
                cli, cwd=cwd, env=full_env, capture_output=True, text=True, check=False
            )
        finally:
            folder.chmod(0o755)
    if not namespaces_work():
        pytest.skip("running as root without user namespaces: no way to make a folder read-only")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", str(folder), *cli],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
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
