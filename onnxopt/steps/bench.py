"""The bench pipeline step: measure every model of the pipeline so far against the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt._fs import write_json_atomic, write_text_atomic
from onnxopt.bench import report as bench_report
from onnxopt.bench.core import Candidate
from onnxopt.bench.runner import InputSource, raise_for_gates, run_bench
from onnxopt.config import BenchStep
from onnxopt.errors import GateError
from onnxopt.records import BenchReport
from onnxopt.steps.base import StepContext, StepResult


def run(src: Path | None, dst: Path, cfg: BenchStep, ctx: StepContext) -> StepResult:
    """Benchmark the chain of models so far (source first) on the pipeline's shared inputs.

    Writes the report to ``dst`` (JSON, schema ``onnxopt.bench/1``) and its Markdown beside
    it; a failed gate is returned as the result's failure, raised once both are kept.
    """
    del src  # the whole chain is measured
    candidates = [Candidate(label, path) for label, path in ctx.chain]
    source = InputSource(specs=ctx.specs, dims=ctx.dims, seed=ctx.config.verify.seed)
    if not cfg.batch_sizes:
        source.fixed = ctx.inputs
    report = run_bench(candidates, source, cfg, ctx.target)
    write_json_atomic(dst, report)
    markdown = dst.with_suffix(".md")
    write_text_atomic(markdown, bench_report.markdown(report))
    failure = None
    try:
        raise_for_gates(report)
    except GateError as err:
        failure = err
    return StepResult(report=summary(report), files=[markdown], failure=failure)


def summary(report: BenchReport) -> dict[str, Any]:
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
