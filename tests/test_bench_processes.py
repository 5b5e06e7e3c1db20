"""bench's multi-process concurrency: every request served, start-up apart, workers gone
afterwards; a failing or killed worker fails the run cleanly."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from onnxopt.api import bench
from onnxopt.bench.processes import process_concurrency
from onnxopt.config import BenchStep, Target
from onnxopt.errors import StepError
from tests.conftest import default_sigint, run_cli

FEEDS = [{"features": np.ones((1, 64), np.float32)}]


def test_processes_mode_serves_every_request_and_leaves_nothing_running(mlp_onnx: Path) -> None:
    report = bench(
        [mlp_onnx], concurrency=[1, 2], concurrency_mode="processes", runs=24, trials=1,
        warmup=2,
    )  # fmt: skip
    rows = [r for r in report["concurrency"] if r["mode"] == "processes"]
    assert [r["processes"] for r in rows] == [1, 2]
    for row in rows:
        assert row["requests"] == 24
        assert row["throughput_rps"] > 0 and row["latency_ms"]["p99"] >= row["latency_ms"]["p50"]
        assert 0 < row["startup_s"]["first_ready"] <= row["startup_s"]["all_ready"]
        assert row["threads_per_process"] >= 1
    assert mp.active_children() == []


def test_processes_for_a_duration(mlp_onnx: Path) -> None:
    cfg = BenchStep(type="bench", runs=1, warmup=1, concurrency_seconds=1.5)
    started = time.monotonic()
    row = process_concurrency(mlp_onnx, FEEDS, cfg, Target(), 2, threads=1)
    assert row["requests"] > 2  # far more than `runs`: it served for the duration
    assert time.monotonic() - started < 60
    assert mp.active_children() == []


def test_all_modes_from_the_command_line(mlp_onnx: Path) -> None:
    proc = run_cli(
        "bench", mlp_onnx, "--concurrency", "2", "--concurrency-mode", "all",
        "--process-threads", "1", "--runs", "10", "--trials", "1", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["concurrency"]
    assert sorted(r["mode"] for r in rows) == ["async", "processes", "threads"]
    assert next(r for r in rows if r["mode"] == "processes")["threads_per_process"] == 1


def test_a_worker_that_fails_is_reported_and_the_others_stopped(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    cfg = BenchStep(type="bench", runs=10, warmup=1)
    with pytest.raises(StepError) as err:
        process_concurrency(broken, FEEDS, cfg, Target(), 2, threads=1)
    assert "bench worker process" in err.value.message and "failed" in err.value.message
    assert mp.active_children() == []


def test_a_killed_worker_fails_the_run_cleanly(mlp_onnx: Path) -> None:
    cfg = BenchStep(type="bench", runs=10_000_000, warmup=1)
    outcome: dict[str, BaseException] = {}

    def drive() -> None:
        try:
            process_concurrency(mlp_onnx, FEEDS, cfg, Target(), 2, threads=1)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    deadline = time.monotonic() + 120
    while len(mp.active_children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # serving by now
    victim = mp.active_children()[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    driver.join(timeout=60)
    assert not driver.is_alive()
    error = outcome["error"]
    assert isinstance(error, StepError) and "died (signal 9)" in error.message
    assert mp.active_children() == []


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_ctrl_c_stops_every_worker(mlp_onnx: Path) -> None:
    import subprocess
    import sys
    import uuid

    mark = f"ONNXOPT_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt", "bench", str(mlp_onnx), "--concurrency", "2",
         "--concurrency-mode", "processes", "--concurrency-seconds", "600", "--runs", "5",
         "--trials", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509 - the child only resets SIGINT
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(_marked(mark)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_marked(mark)) >= 3, "driver and two workers running"
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Seen once on a CI machine (not reproduced in 30 tries here): the first SIGINT was
        # not acted on. The handler acts on a repeat (as a user's second Ctrl-C), so the run
        # must still stop cleanly; what the driver's signal state was is recorded.
        status = Path(f"/proc/{proc.pid}/status").read_text()
        state = [line for line in status.splitlines() if line.startswith(("State", "Sig"))]
        warnings.warn(f"the first SIGINT was not acted on within 30 s: {state}", stacklevel=1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert _marked(mark) == []
