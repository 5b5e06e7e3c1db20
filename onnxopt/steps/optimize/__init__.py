"""optimize: search chains of the other steps for the fastest model within the budget.

The search (:mod:`.search`) runs its candidates as ordinary cached steps in a work folder,
verifies each against the source on the held-out inputs and times it interleaved with the
source; :mod:`.stages` holds the stages and the final choice, :mod:`.report` the files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from onnxopt.config import OptimizeStep
from onnxopt.modelio import copy_model
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.candidates import speed_of
from onnxopt.steps.optimize import report as files
from onnxopt.steps.optimize.search import Row, Search
from onnxopt.steps.optimize.stages import STAGES, choose, singles


def work_dir(cfg: OptimizeStep, ctx: StepContext) -> Path:
    """The folder that keeps the candidates (the search's cache)."""
    if cfg.work_dir is not None:
        return Path(cfg.work_dir)
    assert ctx.out_dir is not None
    return ctx.out_dir / f"{cfg.name or 'optimize'}.search"


def run(src: Path | None, dst: Path, cfg: OptimizeStep, ctx: StepContext) -> StepResult:
    """Search, choose, and write the winner (or an unchanged copy of the source) to ``dst``."""
    assert src is not None
    work = work_dir(cfg, ctx)
    work.mkdir(parents=True, exist_ok=True)
    search = Search(src, cfg, ctx, work)
    if ctx.input_set.synthetic and ctx.evaluator is None:
        search.notes.append(
            "no data: candidates were judged and timed on generated inputs, which prove the "
            "graph, not the task; give --data (and --evaluate) to judge the task"
        )
    if "structure" in cfg.stages:
        singles(search)  # on the source first; the structure stage's models after it
    for stage in cfg.stages:
        if search.out_of_time():
            search.skip(stage, stage, search.source, search.stopped or "")
            continue
        STAGES[stage](search)
    winner = choose(search)
    report = _report(search, winner)
    warnings: list[str] = []
    if winner is None:
        copy_model(src, dst)
        warnings.append(report["outcome"])
    else:
        copy_model(search.paths[winner["id"]], dst)
        if cfg.latency_budget is not None:
            report["serving_plan"] = _serving_plan(dst, cfg, ctx)
    written = _companions(dst, report, search, winner)
    verification = None if winner is None else search.verifications[winner["id"]]
    speed = None if winner is None else speed_of(winner)
    return StepResult(
        report=report, verification=verification, warnings=warnings, files=written, speed=speed
    )


def _outcome(search: Search, winner: Row | None) -> str:
    if winner is not None:
        chain = " > ".join(s["type"] for s in winner["chain"])
        return (
            f"chose {winner['label']} ({chain}): {winner['speedup']:.2f}x the source's speed, "
            f"score {winner['score']:.4f} (source {search.source['score']:.4f})"
        )
    faster_outside = [
        r for r in search.rows if r["status"] == "outside budget" and r.get("verdict") == "faster"
    ]
    why = "no candidate within the budget was faster than the source beyond the noise"
    if faster_outside:
        best = max(faster_outside, key=lambda r: r["speedup"])
        why += f" (fastest outside the budget: {best['label']}, {best['reason']})"
    return f"the output is an unchanged copy of the source: {why}"


def _report(search: Search, winner: Row | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "outcome": _outcome(search, winner),
        "chosen": None if winner is None else winner["id"],
        "chain": [] if winner is None else winner["chain"],
        "unchanged": winner is None,
        "notes": search.notes,
        "candidates": [files.public(r) for r in search.rows],
        "search_seconds": round(time.monotonic() - search.started, 1),
        "work_dir": str(search.work),
    }
    if search.stopped:
        report["stopped"] = search.stopped
    if search.refused_structure:
        report["structure_refused"] = search.refused_structure
    if winner is not None:
        runner_up = [r for r in search.rows if r.get("retimed") and r is not winner]
        if runner_up:
            report["runner_up"] = runner_up[0]["id"]
    return report


def _companions(
    dst: Path, report: dict[str, Any], search: Search, winner: Row | None
) -> list[Path]:
    """The report as JSON and Markdown, the Pareto figure and (with a winner) the chain's
    pipeline file, beside ``dst`` and named after it."""
    stem = dst.name.removesuffix(".onnx")
    written = []
    png = dst.with_name(f"{stem}.pareto.png")
    why = files.pareto_png(report["candidates"], png)
    if why is None:
        written.append(png)
    else:
        report["notes"].append(why)
    if winner is not None:
        chain = dst.with_name(f"{stem}.pipeline.yaml")
        chain.write_text(files.chain_yaml(search.cfg, search.ctx, winner["chain"]))
        written.append(chain)
    md = dst.with_name(f"{stem}.optimize.md")
    md.write_text(files.markdown(report))
    js = dst.with_name(f"{stem}.optimize.json")
    js.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return [*written, md, js]


def _serving_plan(model: Path, cfg: OptimizeStep, ctx: StepContext) -> dict[str, Any]:
    """bench --plan's search for the chosen model, at the data's shapes."""
    from onnxopt.bench.core import Candidate
    from onnxopt.bench.plan import serving_plan
    from onnxopt.config import BenchStep

    bench = BenchStep(type="bench", latency_budget_ms=cfg.latency_budget, percentile=cfg.percentile)
    return serving_plan(
        Candidate("optimized", model), lambda batch: ctx.inputs, [1], bench, ctx.target
    )
