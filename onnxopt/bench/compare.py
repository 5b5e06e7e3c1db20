"""Compare new models with their parent: the timing behind the speed guard and quantize auto.

The parent and the candidates are timed interleaved (A B C A B C ...) in fresh sessions on
the target, and each candidate gets its median, its ratio to the parent's with a bootstrap
95% interval, and a verdict that is ``faster`` or ``slower`` only when the interval
excludes 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from onnxopt.bench import stats
from onnxopt.bench.core import Candidate, measure, summarize_measured
from onnxopt.config import BenchStep, Guard, Target
from onnxopt.errors import GateError, OnnxoptError
from onnxopt.verify import Inputs

log = logging.getLogger("onnxopt")


def compare_with_parent(
    parent: Path,
    candidates: list[tuple[str, Path]],
    feeds: Inputs,
    target: Target,
    *,
    warmup: int,
    runs: int,
    trials: int,
) -> dict[str, dict[str, Any]]:
    """Time ``candidates`` against ``parent``; label -> the comparison.

    Each comparison has ``parent_median_ms``, ``median_ms``, ``ratio`` (candidate median /
    parent median), ``ratio_ci``, ``speedup`` and ``verdict``.
    """
    timing = BenchStep(type="bench", warmup=warmup, runs=runs, trials=trials)
    measured = measure(
        [Candidate("parent", parent)] + [Candidate(label, path) for label, path in candidates],
        feeds,
        timing,
        target,
    )
    rows = summarize_measured(measured, batch=1)
    parent_ms = rows[0]["latency_ms"]["p50"]
    result = {}
    for row in rows[1:]:
        cmp_ = row["compare"]
        result[row["model"]] = {
            "parent_median_ms": parent_ms,
            "median_ms": row["latency_ms"]["p50"],
            "ratio": cmp_["ratio"],
            "ratio_ci": cmp_["ratio_ci"],
            "speedup": cmp_["speedup"] if cmp_["ratio"] > 0 else None,
            "verdict": cmp_["verdict"],
        }
    return result


def time_candidates(
    parent: Path,
    candidates: list[tuple[str, Path]],
    feeds: Inputs,
    target: Target,
    *,
    warmup: int,
    runs: int,
    trials: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """:func:`compare_with_parent`, robust to a candidate that fails to run: (label -> the
    comparison, label -> the error of those that failed in a timing session). When the joint
    run fails, each candidate is timed with the parent on its own, so that one failure drops
    only itself."""

    def run(group: list[tuple[str, Path]]) -> dict[str, dict[str, Any]]:
        return compare_with_parent(
            parent, group, feeds, target, warmup=warmup, runs=runs, trials=trials
        )

    if not candidates:
        return {}, {}
    try:
        return run(candidates), {}
    except OnnxoptError as err:
        if len(candidates) == 1:
            return {}, {candidates[0][0]: err.message}
    timed: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for label, path in candidates:
        try:
            timed.update(run([(label, path)]))
        except OnnxoptError as err:
            failed[label] = err.message
    return timed, failed


def speed_guard(
    parent: Path, child: Path, feeds: Inputs, target: Target, guard: Guard | None, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time ``child`` against ``parent`` and decide whether the parent is to be kept.

    ``guard`` None: only measure (no decision that keeps the parent). Returns the
    measurement (the manifest's ``speed``) and the decision (its ``guard``).

    Raises:
        GateError: the child is slower and the guard says ``on_slower: fail``.
    """
    settings = guard or Guard(not_slower=False)
    comparison = compare_with_parent(
        parent,
        [("candidate", child)],
        feeds,
        target,
        warmup=settings.warmup,
        runs=settings.runs,
        trials=settings.trials,
    )["candidate"]
    speed = {k: v for k, v in comparison.items() if k != "verdict"}
    ratio = speed["ratio"]
    low, high = speed["ratio_ci"]
    slower = settings.not_slower and stats.slower_beyond(ratio, low, settings.tolerance)
    decision = {
        "tolerance": settings.tolerance,
        "on_slower": settings.on_slower,
        "slower": slower,
        "kept_parent": slower and settings.on_slower == "keep_parent",
    }
    if slower:
        text = (
            f"{where}: the new artifact is {(ratio - 1) * 100:.1f}% slower than its parent "
            f"(95% CI of the ratio [{low:.3f}, {high:.3f}], tolerance "
            f"{settings.tolerance * 100:.1f}%)"
        )
        if settings.on_slower == "fail":
            raise GateError(text, hint="drop the step, or set guard.on_slower: keep_parent")
        log.warning("%s; keeping the parent", text)
    return speed, decision
