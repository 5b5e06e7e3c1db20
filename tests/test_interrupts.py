"""SIGINT and SIGTERM at random moments of a pipeline, then resume: nothing half-written.

One output folder is interrupted again and again at random delays (seeded, so a failure
can be replayed); after every interruption the folder must be consistent, and every run
must re-use what the runs before it finished. When a run finishes before its signal, the
folder is emptied and the sequence starts again. A last, uninterrupted run must complete.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onnxopt.errors import ExitCode
from onnxopt.modelio import model_digest
from tests import models
from tests.conftest import default_sigint, run_cli, write_yaml

STEPS = [
    {"type": "simplify"},
    {"type": "simplify", "backend": "ort"},
    {"type": "prune", "method": "magnitude", "ratio": 0.3},
    {"type": "quantize", "mode": "dynamic"},
    {"type": "bench", "runs": 10, "trials": 1, "warmup": 2},
]


def _done(manifest: dict) -> dict[tuple[int, str], str | None]:
    """(index, key) -> artifact sha256 of every finished entry, carried-over ones included."""
    entries = [*manifest.get("steps", []), *manifest.get("carried_over", [])]
    return {
        (e["index"], e["key"]): (e.get("output") or e.get("report_file") or {}).get("sha256")
        for e in entries
        if e.get("status") in ("ok", "cached")
    }


def _check_consistent(out: Path) -> dict:
    """The folder after any run: a parseable manifest that accounts for every file."""
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.endswith((".partial", ".tmp"))], names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] in ("ok", "interrupted"), manifest.get("error")
    finished = {
        (e.get("output") or {}).get("path"): (e.get("output") or {}).get("sha256")
        for e in [*manifest["steps"], *manifest.get("carried_over", [])]
        if e.get("status") in ("ok", "cached")
    }
    for name in names:
        if name.endswith(".onnx"):
            assert name in finished, (name, manifest["status"])
            assert model_digest(out / name) == finished[name], name
            assert name in manifest["artifacts_on_disk"], name
    for entry in manifest["steps"]:
        assert entry["status"] in ("ok", "cached", "interrupted"), entry
        if entry["status"] == "interrupted":
            assert not entry.get("output"), entry
    return manifest


def test_random_interrupts_never_leave_a_half_written_folder_and_resume(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 8, 512, external=False)
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {"model": {"path": str(src)}, "output_dir": str(out), "dims": {"batch": 8}, "steps": STEPS},
    )
    rng = random.Random(6)
    env = {**os.environ, "COLUMNS": "160", "PYTHONFAULTHANDLER": "1"}  # a crash shows where
    started = time.perf_counter()  # one uninterrupted run elsewhere sets the range of delays
    reference = run_cli(
        "run", cfg, "-q", "-o", tmp_path / "ref", env=env, timeout=300, process=True
    )  # timed as the runs it is compared with: a process each
    assert reference.returncode == ExitCode.OK, reference.stderr
    full = time.perf_counter() - started
    done: dict[tuple[int, str], str | None] = {}
    codes = []
    finished = resumed = 0
    last_text = ""
    both = {ExitCode.INTERRUPTED, ExitCode.TERMINATED}
    for attempt in range(20):
        # at least 10 attempts, more until both signals have landed in a run: on a loaded
        # machine a signal can still arrive before the handlers are installed
        if attempt >= 10 and both <= set(codes):
            break
        proc = subprocess.Popen(
            [sys.executable, "-m", "onnxopt", "run", str(cfg), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=default_sigint,
        )
        time.sleep(rng.uniform(0.5, full))
        first = signal.SIGINT if attempt % 2 else signal.SIGTERM
        proc.send_signal(first)
        if attempt % 3 == 2:  # a second signal while the first one is being handled
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGTERM if first == signal.SIGINT else signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        expected = {ExitCode.INTERRUPTED if first == signal.SIGINT else ExitCode.TERMINATED}
        if attempt % 3 == 2:  # signals that arrive together are handled in number order
            expected = {ExitCode.INTERRUPTED, ExitCode.TERMINATED}
        # killed by the signal itself while the interpreter shuts down after the run: a
        # shell reports that as the same 130/143
        expected |= {ExitCode.OK, -signal.SIGINT, -signal.SIGTERM}
        if proc.returncode not in expected:  # the whole stderr: pytest cuts long asserts
            pytest.fail(f"attempt {attempt}: exit {proc.returncode}\n{stderr}")
        assert "Traceback" not in stderr, stderr
        if not (out / "manifest.json").exists():  # stopped before the run had started
            continue
        manifest = _check_consistent(out)
        text = (out / "manifest.json").read_text()
        if text == last_text:  # stopped before it wrote a manifest of its own
            continue
        last_text = text
        for entry in manifest["steps"]:  # what an earlier run finished is re-used, not rebuilt
            if (entry["index"], entry["key"]) in done and entry["status"] != "interrupted":
                assert entry["status"] == "cached", (attempt, entry, stderr)
                resumed += 1
        now = _done(manifest)
        assert done.items() <= now.items(), attempt  # nothing finished is forgotten
        done = now
        if proc.returncode == ExitCode.OK:  # finished before the signal: start over
            finished += 1
            shutil.rmtree(out)
            done = {}
    assert both <= set(codes), codes

    proc = run_cli("run", cfg, "-q", "--json", env=env, timeout=300)
    assert proc.returncode == ExitCode.OK, proc.stderr
    manifest = _check_consistent(out)
    assert manifest["status"] == "ok" and len(manifest["steps"]) == len(STEPS)
    for entry in manifest["steps"]:
        if (entry["index"], entry["key"]) in done:
            assert entry["status"] == "cached", entry["index"]
    assert resumed, "no run ever re-used a step: the delays are too short for this machine"
