"""``onnxopt optimize``: the search over chains of the steps, as a one-step pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxopt.cli.app import app
from onnxopt.cli.options import Common, CosOpt, Top1Opt, given, on_onnx, step_command, tolerance


@app.command()
@step_command()
def optimize(
    model: Annotated[Path, typer.Argument(help="The ONNX model to optimize.")],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Where to write the fastest model within the budget."),
    ],
    time_budget: Annotated[
        str | None,
        typer.Option(
            "--time-budget", help="How long the search may take (default 30m), e.g. 10m or 90s."
        ),
    ] = None,
    latency_budget: Annotated[
        str | None,
        typer.Option(
            "--latency-budget",
            help="Also search the chosen model's serving plan within this latency, e.g. 20ms.",
        ),
    ] = None,
    percentile: Annotated[
        str | None,
        typer.Option("--percentile", help="p50, p90 or p99 (default): what the budget bounds."),
    ] = None,
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage", help="structure, graph or precision (repeatable; default: all three)."
        ),
    ] = None,
    prune_target: Annotated[
        list[float] | None,
        typer.Option(
            "--prune-target",
            help="A share of the MACs for channel pruning to remove, spent where it costs "
            "least (repeatable; default 0.1 0.2 0.35 0.5 0.65 0.8).",
        ),
    ] = None,
    prune_ratio: Annotated[
        list[float] | None,
        typer.Option(
            "--prune-ratio", help="A uniform channel-pruning ratio to try instead (repeatable)."
        ),
    ] = None,
    recover: Annotated[
        str | None,
        typer.Option(
            "--recover", help="auto (default), distill, compensate or none: after pruning."
        ),
    ] = None,
    beam: Annotated[
        int | None, typer.Option("--beam", help="Pareto candidates expanded per stage (2).")
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="Where the candidates are kept (default: OUT.search beside -o)."
        ),
    ] = None,
    min_cosine: CosOpt = None,
    min_top1: Top1Opt = None,
    *,
    common: Common,
) -> None:
    """Search prune/distill, graph rewrites and int8 recipes for the fastest model whose
    task (--evaluate) or outputs stay within budget; the report, Pareto figure and the
    chosen chain as a pipeline file are written beside -o."""
    from onnxopt.api import search_folder

    step = {
        "type": "optimize",
        **given(
            time_budget=time_budget,
            latency_budget=latency_budget,
            percentile=percentile,
            stages=stage or None,
            prune_targets=prune_target or None,
            prune_ratios=prune_ratio or None,
            recover=recover,
            beam=beam,
        ),
        "work_dir": str((work_dir or search_folder(output)).expanduser().resolve()),
        "tolerance": tolerance(min_cosine=min_cosine, min_top1_agreement=min_top1),
    }
    on_onnx(step, model, output, common)
