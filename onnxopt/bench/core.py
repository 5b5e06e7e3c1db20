"""Interleaved latency measurement of one or more ONNX models on ONNX Runtime providers.

Models are timed in rounds (A B A B ...), so drift of a shared machine hits all alike. Each
trial builds fresh sessions: session creation and the first run are reported apart as cold
start, then warm-up runs are discarded, then timed runs are collected. Only the
``session.run`` call sits inside the timed region.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.bench.stats import bootstrap_median_ci, bootstrap_ratio_ci, summarize, verdict
from onnxopt.config import BenchStep, Target
from onnxopt.errors import InputError
from onnxopt.records import BenchRow, ConcurrencyRow
from onnxopt.registry import NO_BOUND
from onnxopt.runtime import (
    as_array,
    make_session,
    provider_id,
    require_feeds,
    session_options,
    short_name,
)

log = logging.getLogger("onnxopt")

Feeds = dict[str, np.ndarray]


@dataclass
class Candidate:
    """A model to measure: a label for reports and its path."""

    label: str
    path: Path


@dataclass
class Measured:
    """Raw measurements of one candidate in one configuration."""

    candidate: Candidate
    samples_ms: list[float] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    first_run_ms: list[float] = field(default_factory=list)
    trial_medians_ms: list[float] = field(default_factory=list)
    outputs: list[np.ndarray] | None = None


def bench_session_options(cfg: BenchStep, target: Target, *, shared_process: bool) -> Any:
    """SessionOptions for a benchmark configuration: the target's (runtime.session_options)
    with the bench step's session settings."""
    import onnxruntime as ort

    s = cfg.session
    opts = session_options(target, level=s.graph_optimization_level)
    opts.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if s.execution_mode == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    opts.enable_cpu_mem_arena = s.enable_mem_arena
    opts.enable_mem_pattern = s.enable_mem_pattern
    if shared_process:
        # Idle spinning workers of other sessions steal the cores (measured: 0.65x / 1.29x).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


#: Device name ONNX Runtime uses for OrtValues of each GPU provider.
DEVICE_OF = {"cuda": "cuda", "tensorrt": "cuda", "rocm": "cuda", "migraphx": "cuda", "dml": "dml"}


def uses_io_binding(cfg: BenchStep, provider: str) -> bool:
    """Whether a configuration times runs through IO binding."""
    if cfg.io_binding == "auto":
        return short_name(provider_id(provider)) in DEVICE_OF
    return cfg.io_binding == "on"


def binding_runner(session: Any, feeds: Feeds, provider: str, device_id: int = 0) -> Any:
    """A ``run(None, feeds)``-shaped callable that runs through IO binding on the device.

    Inputs are copied to the device once, outputs stay there, so the timed call is the
    model's work and not host<->device copies.
    """
    import onnxruntime as ort

    device = DEVICE_OF.get(short_name(provider_id(provider)), "cpu")
    binding = session.io_binding()
    values = {}
    for name in (i.name for i in session.get_inputs()):
        values[name] = ort.OrtValue.ortvalue_from_numpy(feeds[name], device, device_id)
        binding.bind_ortvalue_input(name, values[name])
    for out in session.get_outputs():
        binding.bind_output(out.name, device, device_id)

    def run(_names: Any, _feeds: Any) -> None:
        session.run_with_iobinding(binding)

    run.values = values  # type: ignore[attr-defined]  # keep device inputs alive
    return run


def _timed_loop(run: Any, feeds: Feeds, count: int, out: list[float]) -> None:
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        run(None, feeds)
        out.append((clock() - start) * 1000.0)


def measure(
    candidates: list[Candidate],
    feeds: Feeds,
    cfg: BenchStep,
    target: Target,
) -> list[Measured]:
    """Time every candidate, interleaved, over ``cfg.trials`` fresh-session trials."""
    results = [Measured(c) for c in candidates]
    shared = len(candidates) > 1
    for trial in range(cfg.trials):
        sessions = []
        for res in results:
            opts = bench_session_options(cfg, target, shared_process=shared)
            start = time.perf_counter()
            session = make_session(res.candidate.path, target, options=opts)
            res.create_ms.append((time.perf_counter() - start) * 1000.0)
            require_feeds(
                session,
                feeds,
                res.candidate.label,
                hint="benchmarked models must share input names; pass --inputs-file or --shape",
            )
            start = time.perf_counter()
            outputs = session.run(None, feeds)
            res.first_run_ms.append((time.perf_counter() - start) * 1000.0)
            if trial == 0:
                res.outputs = [as_array(o) for o in outputs]
            sessions.append(session)
        if uses_io_binding(cfg, target.provider):
            device_id = int(target.provider_options.get("device_id", 0))
            runs = [binding_runner(s, feeds, target.provider, device_id) for s in sessions]
        else:
            runs = [s.run for s in sessions]
        # warm-up, interleaved
        if cfg.warmup_seconds:
            end = time.perf_counter() + cfg.warmup_seconds * len(runs)
            while time.perf_counter() < end:
                for run in runs:
                    run(None, feeds)
        else:
            for _ in range(cfg.warmup):
                for run in runs:
                    run(None, feeds)
        # timed, interleaved A B A B ...
        per_trial: list[list[float]] = [[] for _ in runs]
        if cfg.duration_seconds:
            end = time.perf_counter() + cfg.duration_seconds * len(runs)
            while time.perf_counter() < end:
                for run, out in zip(runs, per_trial, strict=True):
                    _timed_loop(run, feeds, 1, out)
        else:
            for _ in range(cfg.runs):
                for run, out in zip(runs, per_trial, strict=True):
                    _timed_loop(run, feeds, 1, out)
        for res, samples in zip(results, per_trial, strict=True):
            res.samples_ms.extend(samples)
            res.trial_medians_ms.append(float(np.median(samples)))
        # drop every reference to this trial's sessions before the next trial builds fresh
        # ones: the loop variables would keep the last one alive, and a model over 2 GB
        # measured against its parent would have three sessions in memory instead of two
        del sessions, runs, session
        with contextlib.suppress(NameError):
            del run
    return results


def fidelity(baseline: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, Any]:
    """Cosine, max abs error and (for classifier-like outputs) top-1 agreement per output,
    from the same comparison verification uses (no bound applied: bench only reports)."""

    from onnxopt.verify import Tol, compare_outputs

    names = [str(i) for i in range(len(candidate))]
    result = compare_outputs(baseline, candidate, names, Tol(*NO_BOUND))
    rows = []
    for i, out in enumerate(result["outputs"]):
        row: dict[str, Any] = {"output": i}
        if "cosine" in out:
            row.update(cosine=out["cosine"], max_abs_err=out["max_abs_err"])
            if "top1_agreement" in out:
                row["top1_agreement"] = out["top1_agreement"]
        elif "mismatched" in out:
            row["exact_match"] = out["mismatched"] == 0
        else:
            row["problem"] = out.get("problem", "mismatch")
        rows.append(row)
    return {"outputs": rows}


def concurrency(
    path: Path,
    feeds: Feeds,
    cfg: BenchStep,
    target: Target,
    level: int,
    mode: str,
) -> ConcurrencyRow:
    """Throughput and latency with ``level`` requests in flight on one shared session."""
    opts = bench_session_options(cfg, target, shared_process=True)
    session = make_session(path, target, options=opts)
    for _ in range(max(cfg.warmup, 1)):
        session.run(None, feeds)
    total = max(cfg.concurrency_requests or cfg.runs, level)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    completed = [0]
    start_all = time.perf_counter()
    if mode == "threads":

        def worker(count: int) -> None:
            local: list[float] = []
            _timed_loop(session.run, feeds, count, local)
            with lock:
                latencies.extend(local)
                completed[0] += count

        shares = [total // level + (1 if i < total % level else 0) for i in range(level)]
        with ThreadPoolExecutor(max_workers=level) as pool:
            list(pool.map(worker, shares))
    else:
        slots = threading.Semaphore(level)
        done = threading.Event()

        def callback(results: Any, started: float, err: str) -> None:
            elapsed = (time.perf_counter() - started) * 1000.0
            with lock:
                if err:
                    errors.append(err)
                latencies.append(elapsed)
                completed[0] += 1
                if completed[0] == total:
                    done.set()
            slots.release()

        for _ in range(total):
            slots.acquire()
            session.run_async(None, feeds, callback, time.perf_counter())
        if not done.wait(timeout=600):
            raise InputError(f"run_async: only {completed[0]} of {total} requests completed")
    wall = time.perf_counter() - start_all
    if errors:
        raise InputError(f"run_async reported errors: {errors[0]}")
    stats = summarize(latencies)
    return {
        "mode": mode,
        "concurrency": level,
        "requests": completed[0],
        "throughput_rps": completed[0] / wall,
        "latency_ms": {k: stats[k] for k in ("p50", "p90", "p99", "mean", "max")},
    }


def resolve_providers(names: list[str], strict: bool) -> tuple[list[str], list[dict[str, str]]]:
    """Providers to measure and those skipped (unavailable), or an error with ``strict``."""
    from onnxopt.runtime import available_providers

    available = available_providers()
    chosen, skipped = [], []
    for name in names:
        full = provider_id(name)
        if full in available:
            chosen.append(name)
            continue
        reason = (
            f"{full} is not available in this onnxruntime build; available: "
            f"{', '.join(short_name(p) for p in available)}"
        )
        if strict:
            raise InputError(f"provider '{name}': {reason}", hint="drop --strict to skip it")
        skipped.append({"provider": name, "reason": reason})
        log.warning("skipping provider %s: %s", name, reason)
    return chosen, skipped


def summarize_measured(measured: list[Measured], batch: int, seed: int = 0) -> list[BenchRow]:
    """Statistics per candidate, with ratios and fidelity against the first one."""
    base = measured[0]
    rows = []
    for res in measured:
        stats = summarize(res.samples_ms, batch=batch)
        low, high = bootstrap_median_ci(res.samples_ms, seed=seed)
        row: BenchRow = {
            "model": res.candidate.label,
            "path": str(res.candidate.path),
            "latency_ms": stats,
            "median_ci_ms": [low, high],
            "cold_start": {
                "create_ms": float(np.median(res.create_ms)),
                "first_run_ms": float(np.median(res.first_run_ms)),
            },
            "trials": [
                {"create_ms": c, "first_run_ms": f, "median_ms": m}
                for c, f, m in zip(
                    res.create_ms, res.first_run_ms, res.trial_medians_ms, strict=True
                )
            ],
            "samples_ms": [round(s, 6) for s in res.samples_ms],
        }
        if res is not base:
            ratio, rlow, rhigh = bootstrap_ratio_ci(base.samples_ms, res.samples_ms, seed=seed)
            row["compare"] = {
                "baseline": base.candidate.label,
                "ratio": ratio,
                "ratio_ci": [rlow, rhigh],
                "speedup": 1.0 / ratio if ratio > 0 else float("inf"),
                "verdict": verdict(rlow, rhigh),
            }
            if base.outputs is not None and res.outputs is not None:
                row["fidelity"] = fidelity(base.outputs, res.outputs)
        rows.append(row)
    return rows
