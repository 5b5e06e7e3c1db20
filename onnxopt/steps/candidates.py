"""One candidate machinery for every search (quantize auto, optimize, prune's ratio search):
judge a candidate against a reference, record a failure on its row, time rows against a
baseline. A candidate's failure, whatever raised it, is its row's; only the user's own
errors (a bad config, a missing extra) end a search.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from onnxopt.errors import (
    ConfigError,
    MissingDependencyError,
    VerificationError,
    failure_reason,
    without_folder,
)
from onnxopt.records import CandidateRow
from onnxopt.steps.base import StepContext
from onnxopt.verify import Reference, Tol, Verification

log = logging.getLogger("onnxopt")


def user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's own, which ends a search (not one candidate's)."""
    return isinstance(err, ConfigError | MissingDependencyError)


def record_failure(row: CandidateRow, where: str, err: Exception, scratch: Path | None) -> None:
    """A candidate that raised at ``where`` (build, load, run, verify, timing): its row says
    so, with the error (an internal one asks to be reported; ``scratch`` is never named).
    Re-raises the user's own errors."""
    if user_error(err):
        raise err
    if isinstance(err, VerificationError):
        row.update({"status": "outside budget", "reason": err.message})
        return
    log.debug("candidate %s failed at %s", row.get("label") or row.get("recipe"), where,
              exc_info=True)  # fmt: skip
    row.update({"status": "failed", "failed_at": where, "reason": failure_reason(err, scratch)})


def judge(row: CandidateRow, verification: Verification, tol: Tol) -> bool:
    """Fill ``row`` from a verification: cosine, task score and drop, the score a search
    ranks by, and the status (with the first failure as the reason); True when verified."""
    compared = verification.main is not None and verification.main["outputs"]
    row["cosine"] = verification.min_cosine if compared else 1.0
    row["min_cosine"] = tol.min_cosine
    if verification.task is not None:
        row["task_score"] = verification.task["score"]
        row["task_drop"] = verification.task["drop"]
    row["score"] = row.get("task_score", row["cosine"])
    if verification.passed:
        row["status"] = "verified"
        return True
    row.update({"status": "outside budget", "reason": verification.first_failure()})
    return False


def verify_candidate(
    row: CandidateRow, path: Path, ctx: StepContext, reference: Reference, tol: Tol
) -> Verification | None:
    """Verify the candidate at ``path`` against ``reference`` into its row; the verification
    when it was made (within the budget or not), None when verifying raised."""
    try:
        verification = ctx.verify(path, reference, tol)
    except Exception as err:  # noqa: BLE001 - recorded; the search goes on
        record_failure(row, "verify", err, path.parent)
        return None
    judge(row, verification, tol)
    return verification


def apply_timing(row: CandidateRow, cmp_: dict[str, Any]) -> None:
    """One comparison of :func:`onnxopt.bench.compare.time_candidates` into a row."""
    row.update(
        {
            "median_ms": cmp_["median_ms"],
            "baseline_median_ms": cmp_["parent_median_ms"],
            "speedup": cmp_["speedup"],
            "ratio_ci": cmp_["ratio_ci"],
            "verdict": cmp_["verdict"],
        }
    )


def time_rows(
    baseline: Path,
    rows: list[tuple[CandidateRow, Path]],
    ctx: StepContext,
    *,
    warmup: int,
    runs: int,
    trials: int,
    scratch: Path | None = None,
) -> dict[int, dict[str, Any]]:
    """Time the candidates against ``baseline``, interleaved in fresh sessions on the target
    at the held-out inputs' shapes, into their rows (a candidate that fails to run there is
    marked failed at ``timing``). Returns row index -> its comparison."""
    from onnxopt.bench.compare import time_candidates

    if not rows:
        return {}
    labels = [(str(i), path) for i, (_, path) in enumerate(rows)]
    timed, failed = time_candidates(
        baseline, labels, ctx.inputs, ctx.target, warmup=warmup, runs=runs, trials=trials
    )
    result = {}
    for i, (row, path) in enumerate(rows):
        if str(i) in failed:
            reason = without_folder(failed[str(i)], scratch or path.parent)
            row.update({"status": "failed", "failed_at": "timing", "reason": reason})
        elif str(i) in timed:
            apply_timing(row, timed[str(i)])
            result[i] = timed[str(i)]
    return result


def speed_of(row: CandidateRow) -> dict[str, Any]:
    """A timed candidate's figures as a step's ``speed`` record (against its baseline)."""
    return {
        "parent_median_ms": row["baseline_median_ms"],
        "median_ms": row["median_ms"],
        "ratio": row["median_ms"] / row["baseline_median_ms"],
        "ratio_ci": row["ratio_ci"],
        "speedup": row["speedup"],
    }
