"""The bench pipeline step: measure every model of the pipeline so far against the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt.bench.core import Candidate
from onnxopt.bench.runner import InputSource, run_bench
from onnxopt.config import BenchStep
from onnxopt.steps.base import StepContext


def run(chain: list[tuple[str, Path]], cfg: BenchStep, ctx: StepContext) -> dict[str, Any]:
    """Benchmark the chain of models (source first) on the pipeline's shared inputs.

    Returns:
        The bench report (gates evaluated, not raised).
    """
    candidates = [Candidate(label, path) for label, path in chain]
    if cfg.baseline is not None:  # relative to the pipeline file, like every path in it
        baseline = Path(cfg.baseline)
        resolved = baseline if baseline.is_absolute() else ctx.base_dir / baseline
        cfg = cfg.model_copy(update={"baseline": str(resolved)})
    source = InputSource(specs=ctx.specs, dims=ctx.dims, seed=ctx.config.verify.seed)
    if not cfg.batch_sizes:
        source.fixed = ctx.inputs
    return run_bench(candidates, source, cfg, ctx.target)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a bench report kept in the manifest."""
    rows = []
    for r in report["results"]:
        cmp_ = r.get("compare") or {}
        rows.append(
            {
                "model": r["model"],
                "provider": r["provider"],
                "threads": r.get("threads"),
                "batch": r.get("batch"),
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "ratio": cmp_.get("ratio"),
                "ratio_ci": cmp_.get("ratio_ci"),
                "verdict": cmp_.get("verdict", "baseline"),
            }
        )
    return {"results": rows, "gates": report["gates"], "passed": report["passed"]}
