"""Summary statistics and bootstrap confidence intervals of latency samples (milliseconds)."""

from __future__ import annotations

from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def summarize(samples_ms: np.ndarray | list[float], batch: int = 1) -> dict[str, Any]:
    """min, mean, std, p50/p90/p95/p99, max and throughput of latency samples.

    Args:
        samples_ms: one latency per run, in milliseconds.
        batch: items per run, for throughput (items per second at the median latency).
    """
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no samples")
    out: dict[str, Any] = {
        "runs": int(arr.size),
        "min": float(arr.min()),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "max": float(arr.max()),
    }
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p))
    out["throughput"] = batch * 1000.0 / out["p50"] if out["p50"] > 0 else float("inf")
    return out


def bootstrap_median_ci(
    samples_ms: np.ndarray | list[float], seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """95% percentile-bootstrap confidence interval of the median."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    medians = np.median(arr[idx], axis=1)
    low, high = np.percentile(medians, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)])
    return float(low), float(high)


def bootstrap_ratio_ci(
    baseline_ms: np.ndarray | list[float],
    candidate_ms: np.ndarray | list[float],
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float, float]:
    """Ratio median(candidate) / median(baseline) with its 95% bootstrap interval.

    Returns:
        (ratio, low, high). A ratio below 1 means the candidate is faster.
    """
    a = np.asarray(baseline_ms, dtype=np.float64)
    b = np.asarray(candidate_ms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    ratios = mb / ma
    low, high = np.percentile(ratios, [50 * (1 - CONFIDENCE), 100 - 50 * (1 - CONFIDENCE)])
    return float(np.median(b) / np.median(a)), float(low), float(high)


def slower_beyond(ratio: float, low: float, tolerance: float) -> bool:
    """True when a candidate is slower than its baseline beyond tolerance *and* noise.

    Args:
        ratio: median(candidate) / median(baseline).
        low: lower end of the ratio's 95% interval.
        tolerance: accepted slowdown as a fraction (0.03 = 3%).
    """
    return ratio > 1.0 + tolerance and low > 1.0


def verdict(low: float, high: float) -> str:
    """'faster', 'slower' or 'same' (within noise) from a ratio interval."""
    if high < 1.0:
        return "faster"
    if low > 1.0:
        return "slower"
    return "same"
