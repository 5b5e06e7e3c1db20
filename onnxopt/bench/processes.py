"""Requests served by several worker processes, each with its own session.

A driver keeps one request per worker in flight on one shared request queue and measures
every request end to end (from its submission to its result reaching the driver, queueing
included). Workers are spawned (never forked: ONNX Runtime's thread pools do not survive a
fork), create their session, run the warm-up and report ready; the time until then is the
start-up cost, reported apart. The input sets go to each worker once at start; a request
names which one to run. A worker that fails reports its error; one that dies (a crash, a
kill) is noticed by its exit code; either way the others are stopped and the run fails with
that worker's error. Ctrl-C stops every worker. Nothing is left running.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import time
from pathlib import Path
from typing import Any

from onnxopt.bench.stats import summarize
from onnxopt.config import BenchStep, Target
from onnxopt.errors import StepError, described
from onnxopt.records import ConcurrencyRow

#: how long a worker may take to start (spawn, import, session, warm-up)
START_TIMEOUT_S = 300.0
#: how long one request may take before the run is declared stuck
REQUEST_TIMEOUT_S = 300.0
#: how often the workers' liveness is checked while results keep coming
CHECK_EVERY_S = 0.2


def _worker(
    index: int,
    path: str,
    feeds: list[dict[str, Any]],
    cfg: BenchStep,
    target: Target,
    requests: Any,
    results: Any,
    shared: bool,
) -> None:
    """A worker process: make the session, warm up, then serve requests until told to stop."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    try:
        from onnxopt.bench.core import bench_session_options
        from onnxopt.runtime import make_session

        # spinning threads of one worker steal the cores of the others; one worker keeps it
        opts = bench_session_options(cfg, target, shared_process=shared)
        session = make_session(Path(path), target, options=opts)
        for _ in range(max(cfg.warmup, 1)):
            session.run(None, feeds[0])
        results.put(("ready", index, time.perf_counter()))
        while True:
            item = requests.get()
            if item is None:
                return
            request, which = item
            session.run(None, feeds[which])
            results.put(("done", index, request))
    except Exception as err:  # reported to the driver, which fails the run
        results.put(("error", index, described(err)))


def _threads_per_worker(target: Target, workers: int, given: int | None) -> int:
    if given:
        return given
    if target.intra_op_threads:
        return target.intra_op_threads
    return max(1, (os.cpu_count() or 1) // workers)


def process_concurrency(
    path: Path,
    feeds: list[dict[str, Any]],
    cfg: BenchStep,
    target: Target,
    workers: int,
    *,
    threads: int | None = None,
) -> ConcurrencyRow:
    """Throughput and end-to-end latency with ``workers`` processes serving one queue.

    Args:
        feeds: the input sets; requests cycle through them.
        threads: intra-op threads per worker (default: the target's, else cores / workers).

    The step's ``concurrency_requests`` (default: ``runs``; at least one per worker) are
    served, or, with ``concurrency_seconds``, as many as that time allows.
    """
    per = _threads_per_worker(target, workers, threads)
    worker_target = target.model_copy(update={"intra_op_threads": per})
    total = max(cfg.concurrency_requests or cfg.runs, workers)
    seconds = cfg.concurrency_seconds
    ctx = mp.get_context("spawn")
    request_q: Any = ctx.Queue()
    result_q: Any = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(i, str(path), feeds, cfg, worker_target, request_q, result_q, workers > 1),
            daemon=True,
            name=f"onnxopt-bench-worker-{i}",
        )
        for i in range(workers)
    ]
    spawned = time.perf_counter()
    try:
        for p in procs:
            p.start()
        ready = _wait_ready(procs, result_q, spawned)
        latencies, wall = _serve(procs, request_q, result_q, total, len(feeds), seconds)
    finally:
        _stop(procs, request_q)
    stats = summarize(latencies)
    return {
        "mode": "processes",
        "concurrency": workers,
        "processes": workers,
        "threads_per_process": per,
        "requests": len(latencies),
        "throughput_rps": len(latencies) / wall,
        "latency_ms": {k: stats[k] for k in ("p50", "p90", "p99", "mean", "max")},
        "startup_s": {"first_ready": min(ready), "all_ready": max(ready)},
    }


def _check_alive(procs: list[Any]) -> None:
    for i, p in enumerate(procs):
        if p.exitcode is not None:
            how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            raise StepError(
                f"bench worker process {i} died ({how}) while serving requests",
                hint="the other workers were stopped; run with fewer processes, or check "
                "the machine's memory",
            )


def _next(
    procs: list[Any], results: Any, deadline: float, what: str, checked: list[float]
) -> tuple[Any, ...]:
    """The next message from the workers; a failed or dead worker fails the run (checked
    every CHECK_EVERY_S, also while the others keep answering; ``checked`` holds when)."""
    while True:
        now = time.perf_counter()
        if now - checked[0] >= CHECK_EVERY_S:
            _check_alive(procs)
            checked[0] = now
        try:
            message = results.get(timeout=CHECK_EVERY_S)
        except queue.Empty:  # liveness is checked at the top of the loop
            if time.perf_counter() > deadline:
                raise StepError(
                    f"bench worker processes: no {what} within the time limit"
                ) from None
            continue
        if message[0] == "error":
            raise StepError(
                f"bench worker process {message[1]} failed: {message[2]}",
                hint="the other workers were stopped",
            )
        return tuple(message)


def _wait_ready(procs: list[Any], results: Any, spawned: float) -> list[float]:
    """Seconds from spawning until each worker was ready (session made, warmed up)."""
    ready: list[float] = []
    deadline = time.perf_counter() + START_TIMEOUT_S
    while len(ready) < len(procs):
        _, _, when = _next(procs, results, deadline, "start-up", [0.0])
        ready.append(when - spawned)
    return ready


def _serve(
    procs: list[Any], requests: Any, results: Any, total: int, sets: int, seconds: float | None
) -> tuple[list[float], float]:
    """Keep one request per worker in flight until ``total`` are served (or, with
    ``seconds``, until that time is up and the requests in flight are back)."""
    submitted: dict[int, float] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    sent = 0
    checked = [0.0]
    if seconds is not None:
        total = 2**62
    for _ in range(min(len(procs), total)):
        submitted[sent] = time.perf_counter()
        requests.put((sent, sent % sets))
        sent += 1
    while submitted:
        deadline = time.perf_counter() + REQUEST_TIMEOUT_S
        _, _, request = _next(procs, results, deadline, "result", checked)
        latencies.append((time.perf_counter() - submitted.pop(request)) * 1000.0)
        out_of_time = seconds is not None and time.perf_counter() - started >= seconds
        if sent < total and not out_of_time:
            submitted[sent] = time.perf_counter()
            requests.put((sent, sent % sets))
            sent += 1
    return latencies, time.perf_counter() - started


def _stop(procs: list[Any], requests: Any) -> None:
    """Ask every worker to stop, then make sure: nothing is left running."""
    for _ in procs:
        with contextlib.suppress(Exception):
            requests.put(None)
    deadline = time.perf_counter() + 5.0
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout=max(0.0, deadline - time.perf_counter()))
    for p in procs:
        if p.pid is not None and p.is_alive():
            p.terminate()
            p.join(timeout=5.0)
        if p.pid is not None and p.is_alive():
            p.kill()
            p.join()
    with contextlib.suppress(Exception):
        requests.close()
        requests.join_thread()
