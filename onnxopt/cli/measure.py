"""The commands that write no model: bench, report merge, inspect, schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.app import app, funnel, report_app, setup_logging, stderr, stdout
from onnxopt.cli.options import (
    CsvOpt,
    DebugOpt,
    DimOpt,
    InputsFileOpt,
    JsonOpt,
    PlotOpt,
    QuietOpt,
    RangeOpt,
    SeedOpt,
    ThreadsOpt,
    ValueOpt,
    csv_ints,
    float_arg,
    given,
    parse_dims,
    parse_provider_options,
    parse_shapes,
    parse_values,
)

MarkdownOpt = Annotated[
    Path | None, typer.Option("--markdown", help="Write a Markdown summary here.")
]


def _check_report_paths(*paths: Path | None) -> None:
    """Before measuring: every report path asked for must be writable (exit 2 now, not later)."""
    from onnxopt._fs import check_writable

    for path in paths:
        if path is not None:
            check_writable(path)


def _write_reports(
    data: dict[str, Any],
    renderers: Any,
    output: Path | None,
    markdown_out: Path | None,
    csv_out: Path | None,
    plot_out: Path | None,
) -> None:
    """Write a report (bench or merged) as JSON, Markdown, CSV and PNG where asked."""
    from onnxopt._fs import write_json_atomic, write_text_atomic

    if output is not None:
        write_json_atomic(output, data)
    if markdown_out is not None:
        write_text_atomic(markdown_out, renderers.markdown(data))
    if csv_out is not None:
        write_text_atomic(csv_out, renderers.csv(data))
    if plot_out is not None:
        renderers.plot(data, plot_out)


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models; the first is the baseline.")],
    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="Comma-separated providers (cpu).")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="An unavailable provider is an error, not a skip.")
    ] = False,
    provider_option: Annotated[
        list[str] | None,
        typer.Option(
            "--provider-option",
            help="PROVIDER.KEY=VALUE, e.g. tensorrt.trt_fp16_enable=true (repeatable).",
        ),
    ] = None,
    inputs_file: InputsFileOpt = None,
    shape: Annotated[
        list[str] | None,
        typer.Option("--shape", help="Input shape override, e.g. --shape x=8,3,224,224."),
    ] = None,
    dims: DimOpt = None,
    value: ValueOpt = None,
    range_: RangeOpt = None,
    seed: SeedOpt = None,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Warm-up runs (10).")] = None,
    warmup_seconds: Annotated[
        float | None, typer.Option("--warmup-seconds", help="Warm up for this long instead.")
    ] = None,
    runs: Annotated[
        int | None, typer.Option("--runs", help="Timed runs per model per trial (50).")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Seconds of timed runs per model per trial instead."),
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="Trials, each with fresh sessions (3).")
    ] = None,
    threads: ThreadsOpt = None,
    inter_threads: Annotated[
        int | None, typer.Option("--inter-threads", help="Inter-op threads.")
    ] = None,
    execution_mode: Annotated[
        str | None, typer.Option("--execution-mode", help="sequential (default) or parallel.")
    ] = None,
    opt_level: Annotated[
        str | None, typer.Option("--opt-level", help="disable, basic, extended or all (default).")
    ] = None,
    no_mem_arena: Annotated[
        bool, typer.Option("--no-mem-arena", help="Disable the CPU memory arena.")
    ] = False,
    sweep_threads: Annotated[
        str | None, typer.Option("--sweep-threads", help="e.g. 1,2,4: one row per count.")
    ] = None,
    sweep_batch: Annotated[
        str | None, typer.Option("--sweep-batch", help="e.g. 1,8,32: one row per batch size.")
    ] = None,
    batch_dim: Annotated[
        str | None, typer.Option("--batch-dim", help="Name of the batch dim (batch).")
    ] = None,
    concurrency_levels: Annotated[
        str | None,
        typer.Option("--concurrency", help="Requests in flight on one session, e.g. 1,2,4."),
    ] = None,
    concurrency_mode: Annotated[
        str | None,
        typer.Option(
            "--concurrency-mode",
            help="threads, async, both (default), processes (one session per worker "
            "process; --concurrency is the process count) or all.",
        ),
    ] = None,
    process_threads: Annotated[
        int | None,
        typer.Option("--process-threads", help="processes: intra-op threads per worker."),
    ] = None,
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Search the serving configuration with the most throughput within "
            "--latency-budget (exit 4 when none).",
        ),
    ] = False,
    plan_seconds: Annotated[
        str | None, typer.Option("--plan-seconds", help="Time budget of the search (120).")
    ] = None,
    concurrency_requests: Annotated[
        int | None,
        typer.Option("--concurrency-requests", help="Requests per concurrency level (runs)."),
    ] = None,
    concurrency_seconds: Annotated[
        str | None,
        typer.Option("--concurrency-seconds", help="processes: serve this long instead."),
    ] = None,
    placement: Annotated[
        bool, typer.Option("--placement", help="Report which provider runs each node.")
    ] = False,
    io_binding: Annotated[
        str | None, typer.Option("--io-binding", help="auto (GPU providers, default), on or off.")
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Stored report JSON to compare with.")
    ] = None,
    max_regression: Annotated[
        str | None, typer.Option("--max-regression", help="e.g. 10%: exit 4 when slower.")
    ] = None,
    latency_budget: Annotated[
        str | None, typer.Option("--latency-budget", help="e.g. 15ms: exit 4 when exceeded.")
    ] = None,
    percentile: Annotated[
        str | None, typer.Option("--percentile", help="Statistic the budget applies to (p99).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated names for the models.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON report here.")
    ] = None,
    markdown_out: MarkdownOpt = None,
    csv_out: CsvOpt = None,
    plot_out: PlotOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Latency of one or more models per execution provider, interleaved, with gates."""
    setup_logging(debug, quiet)
    with funnel(debug):
        from onnxopt.api import bench as run_bench
        from onnxopt.bench.report import BENCH, print_bench
        from onnxopt.bench.runner import raise_for_gates

        settings = given(
            providers=provider and [p.strip() for p in provider.split(",") if p.strip()],
            strict=strict or None,
            provider_options=parse_provider_options(provider_option) or None,
            warmup=warmup,
            warmup_seconds=warmup_seconds,
            runs=runs,
            duration_seconds=duration,
            trials=trials,
            threads=csv_ints(sweep_threads, "--sweep-threads"),
            batch_sizes=csv_ints(sweep_batch, "--sweep-batch"),
            batch_dim=batch_dim,
            concurrency=csv_ints(concurrency_levels, "--concurrency"),
            concurrency_mode=concurrency_mode,
            process_threads=process_threads,
            plan=plan or None,
            plan_seconds=None
            if plan_seconds is None
            else float_arg(plan_seconds, "--plan-seconds"),
            concurrency_requests=concurrency_requests,
            concurrency_seconds=None
            if concurrency_seconds is None
            else float_arg(concurrency_seconds, "--concurrency-seconds"),
            session=given(
                execution_mode=execution_mode,
                graph_optimization_level=opt_level,
                enable_mem_arena=False if no_mem_arena else None,
            )
            or None,
            placement=placement or None,
            io_binding=io_binding,
            baseline=baseline and str(baseline),
            max_regression=max_regression,
            latency_budget_ms=latency_budget,
            percentile=percentile,
        )
        _check_report_paths(output, markdown_out, csv_out, plot_out)
        if not quiet and not as_json:
            stderr().print(
                f"measuring {len(models)} model(s) on {provider or 'cpu'} ...", highlight=False
            )
        report = run_bench(
            models,
            labels=labels.split(",") if labels else None,
            inputs_file=inputs_file,
            shapes=parse_shapes(shape),
            dims=parse_dims(dims),
            ranges=parse_values(value or [], range_ or []),
            seed=seed or 0,
            intra_op_threads=threads,
            inter_op_threads=inter_threads,
            **settings,
        )
        _write_reports(report, BENCH, output, markdown_out, csv_out, plot_out)
        if as_json:
            print(json.dumps(report, indent=2, default=str))
        elif not quiet:
            print_bench(stdout(200), report)
        raise_for_gates(report)


@report_app.command("merge")
def report_merge(
    reports: Annotated[
        list[Path], typer.Argument(help="Bench report JSON files; the first is the reference.")
    ],
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Comma-separated names of the reports (default: stems)."),
    ] = None,
    allow_models: Annotated[
        bool,
        typer.Option("--allow-different-models", help="Merge even if the models differ."),
    ] = False,
    allow_inputs: Annotated[
        bool,
        typer.Option("--allow-different-inputs", help="Merge even if the inputs differ."),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the merged JSON here.")
    ] = None,
    markdown_out: MarkdownOpt = None,
    csv_out: CsvOpt = None,
    plot_out: PlotOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge bench reports from several machines or CI jobs into one comparison.

    Reports whose models (sha256) or inputs (digest) differ are refused unless allowed.
    """
    setup_logging(debug, quiet)
    with funnel(debug):
        from onnxopt.bench import merge
        from onnxopt.bench.report import MERGED, print_merged

        _check_report_paths(output, markdown_out, csv_out, plot_out)
        names = [n.strip() for n in labels.split(",")] if labels else None
        merged = merge.merge_reports(
            reports,
            names,
            allow_different_models=allow_models,
            allow_different_inputs=allow_inputs,
        )
        _write_reports(merged, MERGED, output, markdown_out, csv_out, plot_out)
        if as_json:
            print(json.dumps(merged, indent=2, default=str))
        elif not quiet:
            print_merged(stdout(200), merged)


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="The .onnx model.")],
    dims: DimOpt = None,
    provider: Annotated[
        str | None,
        typer.Option("--provider", help="Also report which provider runs each node."),
    ] = None,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Inputs/outputs, opset, op histogram, parameters, MACs/FLOPs and node placement."""
    setup_logging(debug, False)
    with funnel(debug):
        from onnxopt.inspection import inspect_model

        info = inspect_model(model, dims=parse_dims(dims), provider=provider)
        if as_json:
            print(json.dumps(info, indent=2, default=str))
        else:
            from onnxopt.report.console import print_inspect

            print_inspect(stdout(160), info)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline YAML (for editor autocompletion)."""
    from onnxopt.config import json_schema

    print(json.dumps(json_schema(), indent=2))
