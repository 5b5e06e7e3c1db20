"""The commands that write no model: bench, report merge, inspect, schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.app import app, funnel, report_app, setup_logging, stderr, stdout
from onnxopt.cli.options import (
    DebugOpt,
    DimOpt,
    InputsFileOpt,
    JsonOpt,
    Output,
    RangeOpt,
    Reports,
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
    with_groups,
)


@dataclass(frozen=True)
class BenchInputs:
    """The inputs bench times on: a file, or generated at the shapes and values given."""

    inputs_file: InputsFileOpt = None
    shape: Annotated[
        list[str] | None,
        typer.Option("--shape", help="Input shape override, e.g. --shape x=8,3,224,224."),
    ] = None
    dims: DimOpt = None
    value: ValueOpt = None
    range: RangeOpt = None
    seed: SeedOpt = None

    def keywords(self) -> dict[str, Any]:
        """onnxopt.bench()'s input keywords."""
        return {
            "inputs_file": self.inputs_file,
            "shapes": parse_shapes(self.shape),
            "dims": parse_dims(self.dims),
            "ranges": parse_values(self.value or [], self.range or []),
            "seed": self.seed or 0,
        }


@dataclass(frozen=True)
class Providers:
    """Where the models run."""

    provider: Annotated[
        str | None, typer.Option("--provider", "-p", help="Comma-separated providers (cpu).")
    ] = None
    strict: Annotated[
        bool, typer.Option("--strict", help="An unavailable provider is an error, not a skip.")
    ] = False
    provider_option: Annotated[
        list[str] | None,
        typer.Option(
            "--provider-option",
            help="PROVIDER.KEY=VALUE, e.g. tensorrt.trt_fp16_enable=true (repeatable).",
        ),
    ] = None
    placement: Annotated[
        bool, typer.Option("--placement", help="Report which provider runs each node.")
    ] = False
    io_binding: Annotated[
        str | None, typer.Option("--io-binding", help="auto (GPU providers, default), on or off.")
    ] = None

    def settings(self) -> dict[str, Any]:
        return given(
            providers=self.provider and [p.strip() for p in self.provider.split(",") if p.strip()],
            strict=self.strict or None,
            provider_options=parse_provider_options(self.provider_option) or None,
            placement=self.placement or None,
            io_binding=self.io_binding,
        )


@dataclass(frozen=True)
class Timing:
    """How long each model is timed."""

    warmup: Annotated[int | None, typer.Option("--warmup", help="Warm-up runs (10).")] = None
    warmup_seconds: Annotated[
        float | None, typer.Option("--warmup-seconds", help="Warm up for this long instead.")
    ] = None
    runs: Annotated[
        int | None, typer.Option("--runs", help="Timed runs per model per trial (50).")
    ] = None
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Seconds of timed runs per model per trial instead."),
    ] = None
    trials: Annotated[
        int | None, typer.Option("--trials", help="Trials, each with fresh sessions (3).")
    ] = None

    def settings(self) -> dict[str, Any]:
        return given(
            warmup=self.warmup,
            warmup_seconds=self.warmup_seconds,
            runs=self.runs,
            duration_seconds=self.duration,
            trials=self.trials,
        )


@dataclass(frozen=True)
class Session:
    """The ONNX Runtime session's settings."""

    threads: ThreadsOpt = None
    inter_threads: Annotated[
        int | None, typer.Option("--inter-threads", help="Inter-op threads.")
    ] = None
    execution_mode: Annotated[
        str | None, typer.Option("--execution-mode", help="sequential (default) or parallel.")
    ] = None
    opt_level: Annotated[
        str | None, typer.Option("--opt-level", help="disable, basic, extended or all (default).")
    ] = None
    no_mem_arena: Annotated[
        bool, typer.Option("--no-mem-arena", help="Disable the CPU memory arena.")
    ] = False

    def settings(self) -> dict[str, Any]:
        session = given(
            execution_mode=self.execution_mode,
            graph_optimization_level=self.opt_level,
            enable_mem_arena=False if self.no_mem_arena else None,
        )
        return {
            "intra_op_threads": self.threads,
            "inter_op_threads": self.inter_threads,
            **given(session=session or None),
        }


def _seconds(value: str | None, flag: str) -> float | None:
    return None if value is None else float_arg(value, flag)


@dataclass(frozen=True)
class Load:
    """Sweeps, concurrency and the serving-plan search."""

    sweep_threads: Annotated[
        str | None, typer.Option("--sweep-threads", help="e.g. 1,2,4: one row per count.")
    ] = None
    sweep_batch: Annotated[
        str | None, typer.Option("--sweep-batch", help="e.g. 1,8,32: one row per batch size.")
    ] = None
    batch_dim: Annotated[
        str | None, typer.Option("--batch-dim", help="Name of the batch dim (batch).")
    ] = None
    concurrency_levels: Annotated[
        str | None,
        typer.Option("--concurrency", help="Requests in flight on one session, e.g. 1,2,4."),
    ] = None
    concurrency_mode: Annotated[
        str | None,
        typer.Option(
            "--concurrency-mode",
            help="threads, async, both (default), processes (one session per worker "
            "process; --concurrency is the process count) or all.",
        ),
    ] = None
    process_threads: Annotated[
        int | None,
        typer.Option("--process-threads", help="processes: intra-op threads per worker."),
    ] = None
    concurrency_requests: Annotated[
        int | None,
        typer.Option("--concurrency-requests", help="Requests per concurrency level (runs)."),
    ] = None
    concurrency_seconds: Annotated[
        str | None,
        typer.Option("--concurrency-seconds", help="processes: serve this long instead."),
    ] = None
    plan: Annotated[
        bool,
        typer.Option(
            "--plan",
            help="Search the serving configuration with the most throughput within "
            "--latency-budget (exit 4 when none).",
        ),
    ] = False
    plan_seconds: Annotated[
        str | None, typer.Option("--plan-seconds", help="Time budget of the search (120).")
    ] = None

    def settings(self) -> dict[str, Any]:
        return given(
            threads=csv_ints(self.sweep_threads, "--sweep-threads"),
            batch_sizes=csv_ints(self.sweep_batch, "--sweep-batch"),
            batch_dim=self.batch_dim,
            concurrency=csv_ints(self.concurrency_levels, "--concurrency"),
            concurrency_mode=self.concurrency_mode,
            process_threads=self.process_threads,
            concurrency_requests=self.concurrency_requests,
            concurrency_seconds=_seconds(self.concurrency_seconds, "--concurrency-seconds"),
            plan=self.plan or None,
            plan_seconds=_seconds(self.plan_seconds, "--plan-seconds"),
        )


@dataclass(frozen=True)
class Gates:
    """What makes bench exit 4."""

    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Stored report JSON to compare with.")
    ] = None
    max_regression: Annotated[
        str | None, typer.Option("--max-regression", help="e.g. 10%: exit 4 when slower.")
    ] = None
    latency_budget: Annotated[
        str | None, typer.Option("--latency-budget", help="e.g. 15ms: exit 4 when exceeded.")
    ] = None
    percentile: Annotated[
        str | None, typer.Option("--percentile", help="Statistic the budget applies to (p99).")
    ] = None

    def settings(self) -> dict[str, Any]:
        return given(
            baseline=self.baseline and str(self.baseline),
            max_regression=self.max_regression,
            latency_budget_ms=self.latency_budget,
            percentile=self.percentile,
        )


@app.command()
@with_groups
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models; the first is the baseline.")],
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated names for the models.")
    ] = None,
    *,
    inputs: BenchInputs,
    providers: Providers,
    timing: Timing,
    session: Session,
    load: Load,
    gates: Gates,
    reports: Reports,
    out: Output,
) -> None:
    """Latency of one or more models per execution provider, interleaved, with gates."""
    from onnxopt.api import bench as run_bench
    from onnxopt.bench.report import BENCH, print_bench
    from onnxopt.bench.runner import raise_for_gates

    settings = {
        **providers.settings(),
        **timing.settings(),
        **session.settings(),
        **load.settings(),
        **gates.settings(),
    }
    reports.check()
    if out.table:
        where = providers.provider or "cpu"
        stderr().print(f"measuring {len(models)} model(s) on {where} ...", highlight=False)
    report = run_bench(
        models, labels=labels.split(",") if labels else None, **inputs.keywords(), **settings
    )
    reports.write(report, BENCH)
    if out.as_json:
        print(json.dumps(report, indent=2, default=str))
    elif not out.quiet:
        print_bench(stdout(200), report)
    raise_for_gates(report)


@report_app.command("merge")
@with_groups
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
    *,
    written: Reports,
    out: Output,
) -> None:
    """Merge bench reports from several machines or CI jobs into one comparison.

    Reports whose models (sha256) or inputs (digest) differ are refused unless allowed.
    """
    from onnxopt.bench import merge
    from onnxopt.bench.report import MERGED, print_merged

    written.check()
    names = [n.strip() for n in labels.split(",")] if labels else None
    merged = merge.merge_reports(
        reports, names, allow_different_models=allow_models, allow_different_inputs=allow_inputs
    )
    written.write(merged, MERGED)
    if out.as_json:
        print(json.dumps(merged, indent=2, default=str))
    elif not out.quiet:
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
    setup_logging(debug)
    with funnel(debug):
        from onnxopt.inspection import inspect_model

        info = inspect_model(model, dims=parse_dims(dims), provider=provider)
        if as_json:
            print(json.dumps(info, indent=2, default=str))
        else:
            from onnxopt.report.console import print_inspect

            print_inspect(stdout(160), info)


@app.command()
def schema(
    as_markdown: Annotated[
        bool, typer.Option("--markdown", help="The key reference as Markdown instead.")
    ] = False,
) -> None:
    """Print the JSON Schema of the pipeline YAML (for editor autocompletion)."""
    if as_markdown:
        from onnxopt.config.reference import markdown

        print(markdown(), end="")
        return
    from onnxopt.config import json_schema

    print(json.dumps(json_schema(), indent=2))
