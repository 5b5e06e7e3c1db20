"""The ``onnxopt`` command. The only place that prints errors and exits.

Heavy libraries (onnx, onnxruntime, torch) are imported inside the commands, so that
``onnxopt --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from onnxopt import __version__
from onnxopt.errors import ConfigError, ExitCode, InputError, OnnxoptError, Terminated

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="onnxopt",
    help="Take a trained model to the fastest ONNX artifact that still gives the right "
    "answers, and prove both. Exit codes: 0 ok, 1 failure, 2 usage/config/input error, "
    "3 verification failed, 4 benchmark gate failed, 130 interrupted, 143 terminated.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

log = logging.getLogger("onnxopt")

# ---------------------------------------------------------------- shared options

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the manifest (or report) as JSON on stdout.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or table; warnings and errors only.")
]
DimOpt = Annotated[
    list[str] | None,
    typer.Option("--dim", help="Value of a symbolic dim, e.g. --dim batch=2 (repeatable)."),
]
ProviderOpt = Annotated[
    str, typer.Option("--provider", help="Execution provider that verification runs on.")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads of verification sessions.")
]
InputsFileOpt = Annotated[
    Path | None, typer.Option("--inputs-file", help="An .npz of inputs to verify on.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of generated inputs.")]
AtolOpt = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance override.")]
RtolOpt = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance override.")]
CosOpt = Annotated[float | None, typer.Option("--min-cosine", help="Lowest cosine accepted.")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Where to write the .onnx result.")]
ExternalOpt = Annotated[
    str, typer.Option("--external-data", help="auto (only over 2 GB), always or never.")
]
NoGuardOpt = Annotated[
    bool,
    typer.Option(
        "--no-guard",
        help="Hand the result over even if it is slower than its input (the speed guard, "
        "on by default, keeps the input then and -o gets an unchanged copy).",
    ),
]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="Write a CSV here.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")]


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _stdout(width: int) -> Console:
    """A console for tables on stdout: the terminal's width, or ``width`` when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def _setup_logging(debug: bool, quiet: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.WARNING
    handler = RichHandler(console=_stderr(), show_time=False, show_path=debug, markup=False)
    root = logging.getLogger("onnxopt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    del quiet


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _funnel(debug: bool) -> Iterator[None]:
    """Turn every failure into one 'error:' line and a documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as err:
        _interrupted(isinstance(err, Terminated))
    except Exception as err:
        if debug:
            traceback.print_exc()
        if "signum" in _SIGNALS:
            # The signal landed inside library code, which turned it into another error
            # (an extension module being imported reports "ImportError: initialization
            # failed"): the run was stopped, it did not fail.
            import signal

            _interrupted(_SIGNALS["signum"] == signal.SIGTERM)
        if isinstance(err, OnnxoptError):
            _error(str(err))
            raise typer.Exit(int(err.exit_code)) from None
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        _error(
            f"internal error: {type(err).__name__}: {text[:300]} "
            "(rerun with --debug for the traceback, and please report it)"
        )
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _interrupted(terminated: bool) -> None:
    _error(f"{'terminated' if terminated else 'interrupted'}; no unfinished artifact was kept")
    _SIGNALS["reported"] = 1
    code = ExitCode.TERMINATED if terminated else ExitCode.INTERRUPTED
    raise typer.Exit(int(code)) from None


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
        write_text_atomic(csv_out, renderers.to_csv(data))
    if plot_out is not None:
        renderers.plot(data, plot_out)


def _parse_dims(values: list[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ConfigError(f"--dim expects NAME=INT such as batch=2, found {item!r}")
        dims[name.strip()] = int(value)
    return dims


def _parse_input(text: str) -> dict[str, Any]:
    """'name:batch,3,224,224[:dtype[:low,high]]' -> an inputs-spec mapping."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(
            f"--input expects NAME:DIM,DIM,...[:DTYPE[:LOW,HIGH]] such as "
            f"x:batch,3,224,224:float32, found {text!r}"
        )
    shape: list[int | str] = [
        int(d) if d.strip().isdigit() else d.strip() for d in parts[1].split(",")
    ]
    spec: dict[str, Any] = {"name": parts[0], "shape": shape}
    if len(parts) > 2 and parts[2]:
        spec["dtype"] = parts[2]
    if len(parts) > 3:
        try:
            low, high = (float(v) for v in parts[3].split(","))
        except ValueError:
            raise ConfigError(f"--input range expects LOW,HIGH, found {parts[3]!r}") from None
        spec["range"] = [low, high]
    return spec


def _parse_kv_json(values: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, found {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _tolerance(
    atol: float | None, rtol: float | None, cos: float | None, top1: float | None = None
) -> dict[str, float]:
    tol = {"atol": atol, "rtol": rtol, "min_cosine": cos, "min_top1_agreement": top1}
    return {k: v for k, v in tol.items() if v is not None}


class _Progress:
    """Progress lines on stderr while a pipeline runs."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self.status: Any = None

    def __call__(self, event: str, **data: Any) -> None:
        if not self.enabled:
            return
        if event == "step_start":
            text = f"[{data['index']}/{data['total']}] {data['step']} ..."
            if self.status is None:
                self.status = self.console.status(text)
                self.status.start()
            else:
                self.status.update(text)
        elif event == "step_end":
            entry = data["entry"]
            mark = "cached" if entry["status"] == "cached" else f"{entry.get('duration_s', 0):.1f}s"
            what = (entry.get("output") or entry.get("report_file") or {}).get("path", "")
            self.console.print(
                f"  step {entry['index']} {entry['name']}: {what} ({mark})", highlight=False
            )

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _execute(
    config: Any,
    base_dir: Path,
    out_dir: Path | None,
    *,
    force: bool,
    as_json: bool,
    quiet: bool,
    wait: bool = True,
) -> dict[str, Any]:
    from onnxopt.engine import run_pipeline

    progress = _Progress(_stderr(), enabled=not quiet and not as_json)
    try:
        return run_pipeline(
            config, base_dir, out_dir=out_dir, force=force, on_event=progress, wait=wait
        )
    except OnnxoptError as err:
        _json_on_failure(err, as_json)
        raise
    finally:
        progress.stop()


def _json_on_failure(err: OnnxoptError, as_json: bool) -> None:
    if as_json and err.manifest:
        print(json.dumps(err.manifest, indent=2, default=str))


def _show(manifest: dict[str, Any], as_json: bool, quiet: bool) -> None:
    if as_json:
        print(json.dumps(manifest, indent=2, default=str))
    elif not quiet:
        from onnxopt.report.console import print_pipeline

        print_pipeline(_stdout(160), manifest)


def _one_step_config(
    step: dict[str, Any],
    model: dict[str, Any],
    dims: list[str] | None,
    provider: str,
    threads: int | None,
    external_data: str,
    seed: int,
    inputs_file: Path | None,
) -> dict[str, Any]:
    """The pipeline mapping of a step subcommand, from the options they all share."""
    return {
        "name": step["type"],
        "model": model,
        "dims": _parse_dims(dims),
        "target": {"provider": provider, "intra_op_threads": threads},
        "external_data": external_data,
        "verify": {"seed": seed, "inputs_file": str(inputs_file) if inputs_file else None},
        "steps": [step],
    }


def _on_onnx(
    step: dict[str, Any],
    model: Path,
    output: Path,
    dims: list[str] | None,
    provider: str,
    threads: int | None,
    external_data: str,
    seed: int,
    inputs_file: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Run a step subcommand whose input is an ONNX file."""
    data = _one_step_config(
        step,
        {"path": str(model.resolve())},
        dims,
        provider,
        threads,
        external_data,
        seed,
        inputs_file,
    )
    _single_step(data, output, source=model, as_json=as_json, quiet=quiet)


def _single_step(
    data: dict[str, Any], output: Path, *, source: Path | None, as_json: bool, quiet: bool
) -> None:
    """Run a one-step pipeline and put its verified artifact at ``output``."""
    from onnxopt.config import parse_config
    from onnxopt.engine import run_to_file

    config = parse_config(data, "command line")
    progress = _Progress(_stderr(), enabled=not quiet and not as_json)
    try:
        manifest = run_to_file(config, output, source=source, on_event=progress)
    except OnnxoptError as err:
        _json_on_failure(err, as_json)
        raise
    finally:
        progress.stop()
    _show(manifest, as_json, quiet)


# ---------------------------------------------------------------- commands


def _version(value: bool) -> None:
    if value:
        print(f"onnxopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """onnxopt: export, simplify and inspect ONNX models, proving every artifact."""


@app.command()
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Override the config's output_dir.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Ignore cached artifacts.")] = False,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Fail at once if another run uses the output folder."),
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run a YAML pipeline of steps; artifacts, inputs.npz and manifest.json go to output_dir."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        from onnxopt.config import load_config

        config, base_dir = load_config(pipeline)
        manifest = _execute(
            config,
            base_dir,
            output_dir,
            force=force,
            as_json=as_json,
            quiet=quiet,
            wait=not no_wait,
        )
        _show(manifest, as_json, quiet)


@app.command()
def export(
    factory: Annotated[
        str, typer.Argument(help="'package.module:function' or 'file.py:function'.")
    ],
    output: OutputOpt,
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input",
            "-i",
            help="NAME:DIM,DIM,...[:DTYPE[:LOW,HIGH]], e.g. x:batch,3,224,224:float32 "
            "(repeatable, in forward() order).",
        ),
    ],
    dims: DimOpt = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", help=".pt/.pth state_dict or .safetensors.")
    ] = None,
    factory_arg: Annotated[
        list[str] | None,
        typer.Option("--factory-arg", help="KEY=VALUE (JSON value) passed to the factory."),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 18,
    exporter: Annotated[
        str, typer.Option("--exporter", help="auto, dynamo or torchscript.")
    ] = "auto",
    output_name: Annotated[
        list[str] | None, typer.Option("--output-name", help="Output names (repeatable).")
    ] = None,
    provider: ProviderOpt = "cpu",
    threads: ThreadsOpt = None,
    inputs_file: InputsFileOpt = None,
    seed: SeedOpt = 0,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    external_data: ExternalOpt = "auto",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a PyTorch model to ONNX, validated against PyTorch (and at a second shape)."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        step: dict[str, Any] = {
            "type": "export",
            "opset": opset,
            "exporter": exporter,
            "tolerance": _tolerance(atol, rtol, min_cosine),
        }
        if output_name:
            step["output_names"] = output_name
        model: dict[str, Any] = {
            "factory": factory,
            "factory_args": _parse_kv_json(factory_arg, "--factory-arg"),
        }
        if weights is not None:
            model["weights"] = str(weights)
        data = _one_step_config(
            step, model, dims, provider, threads, external_data, seed, inputs_file
        )
        data["inputs"] = [_parse_input(t) for t in inputs]
        _single_step(data, output, source=None, as_json=as_json, quiet=quiet)


@app.command()
def simplify(
    model: Annotated[Path, typer.Argument(help="Input .onnx model.")],
    output: OutputOpt,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend", "-b", help="onnxsim (default), ort or transformers; repeat to chain."
        ),
    ] = None,
    ort_level: Annotated[
        str, typer.Option("--ort-level", help="ORT backend level: basic, extended, all.")
    ] = "basic",
    model_type: Annotated[
        str, typer.Option("--model-type", help="Transformers backend model type.")
    ] = "bert",
    num_heads: Annotated[int, typer.Option("--num-heads", help="Attention heads (0: detect).")] = 0,
    hidden_size: Annotated[int, typer.Option("--hidden-size", help="Hidden size (0: detect).")] = 0,
    skip_fuse_bn: Annotated[
        bool, typer.Option("--skip-fuse-bn", help="onnxsim: keep BatchNormalization.")
    ] = False,
    skip_constant_folding: Annotated[
        bool, typer.Option("--skip-constant-folding", help="onnxsim: no constant folding.")
    ] = False,
    skip_optimizer: Annotated[
        list[str] | None,
        typer.Option("--skip-optimizer", help="onnxsim: optimizer pass to skip (repeatable)."),
    ] = None,
    dims: DimOpt = None,
    provider: ProviderOpt = "cpu",
    threads: ThreadsOpt = None,
    inputs_file: InputsFileOpt = None,
    seed: SeedOpt = 0,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    external_data: ExternalOpt = "auto",
    no_guard: NoGuardOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Simplify an ONNX model (onnxsim, ORT offline optimization, transformer fusions)."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        step: dict[str, Any] = {
            "type": "simplify",
            "backend": backend or ["onnxsim"],
            "ort": {"level": ort_level},
            "transformers": {
                "model_type": model_type,
                "num_heads": num_heads,
                "hidden_size": hidden_size,
            },
            "onnxsim": {
                "skip_fuse_bn": skip_fuse_bn,
                "skip_constant_folding": skip_constant_folding,
                "skipped_optimizers": skip_optimizer or [],
            },
            "tolerance": _tolerance(atol, rtol, min_cosine),
        }
        if no_guard:
            step["guard"] = None
        _on_onnx(
            step,
            model,
            output,
            dims,
            provider,
            threads,
            external_data,
            seed,
            inputs_file,
            as_json,
            quiet,
        )


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Input .onnx model.")],
    output: OutputOpt,
    mode: Annotated[str, typer.Option("--mode", "-m", help="dynamic, static, fp16, int4 or auto.")],
    op_types: Annotated[
        str | None, typer.Option("--op-types", help="Op types to quantize, e.g. MatMul,Gemm.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Node name kept float (repeatable).")
    ] = None,
    per_channel: Annotated[
        bool, typer.Option("--per-channel/--per-tensor", help="Weight scales (int8 modes).")
    ] = True,
    weight_type: Annotated[str, typer.Option("--weight-type", help="int8 or uint8.")] = "int8",
    activation_type: Annotated[
        str, typer.Option("--activation-type", help="static: uint8 or int8.")
    ] = "uint8",
    quant_format: Annotated[
        str, typer.Option("--format", help="static: qdq or qoperator.")
    ] = "qdq",
    method: Annotated[
        str, typer.Option("--method", help="static: minmax, entropy, percentile, distribution.")
    ] = "minmax",
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", help="static: an .npz, a folder of .npz samples or of images."
        ),
    ] = None,
    calibration_callable: Annotated[
        str | None,
        typer.Option("--calibration-callable", help="static: module:function yielding dicts."),
    ] = None,
    diagnose: Annotated[
        bool, typer.Option("--diagnose", help="Find and exclude nodes that break the budget.")
    ] = False,
    require_speedup: Annotated[
        bool, typer.Option("--require-speedup", help="auto: fail (exit 4) if none is faster.")
    ] = False,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="static: samples to use.")
    ] = 16,
    allow_synthetic_calibration: Annotated[
        bool,
        typer.Option("--allow-synthetic-calibration", help="static: calibrate on generated data."),
    ] = False,
    block_size: Annotated[int, typer.Option("--block-size", help="int4: block size.")] = 32,
    keep_io_types: Annotated[
        bool, typer.Option("--keep-io-types/--fp16-io", help="fp16: keep float32 I/O.")
    ] = True,
    min_top1: Annotated[
        float | None, typer.Option("--min-top1", help="Lowest top-1 agreement accepted.")
    ] = None,
    measure_speed: Annotated[
        bool, typer.Option("--measure-speed/--no-measure-speed", help="Time against parent.")
    ] = True,
    dims: DimOpt = None,
    provider: ProviderOpt = "cpu",
    threads: ThreadsOpt = None,
    inputs_file: InputsFileOpt = None,
    seed: SeedOpt = 0,
    min_cosine: CosOpt = None,
    external_data: ExternalOpt = "auto",
    no_guard: NoGuardOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Quantize an ONNX model (INT8 dynamic/static, fp16, int4), verified and timed."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        tolerance = _tolerance(None, None, min_cosine, min_top1)
        step: dict[str, Any] = {
            "type": "quantize",
            "mode": mode,
            "nodes_to_exclude": exclude or [],
            "measure_speed": measure_speed,
            "tolerance": tolerance,
            "dynamic": {"weight_type": weight_type, "per_channel": per_channel},
            "static": {
                "format": quant_format,
                "activation_type": activation_type,
                "weight_type": weight_type,
                "per_channel": per_channel,
                "method": method,
                "allow_synthetic_calibration": allow_synthetic_calibration,
                "calibration": {
                    "source": _calibration_source(calibration, calibration_callable),
                    "path": str(calibration.resolve()) if calibration else None,
                    "callable": calibration_callable,
                    "samples": calibration_samples,
                },
            },
            "fp16": {"keep_io_types": keep_io_types},
            "int4": {"block_size": block_size},
            "auto": {"require_speedup": require_speedup},
            "diagnose": diagnose,
        }
        if op_types:
            step["op_types_to_quantize"] = [t.strip() for t in op_types.split(",") if t.strip()]
        if no_guard:
            step["guard"] = None
        _on_onnx(
            step,
            model,
            output,
            dims,
            provider,
            threads,
            external_data,
            seed,
            inputs_file,
            as_json,
            quiet,
        )


@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="Input .onnx model (float).")],
    output: OutputOpt,
    method: Annotated[
        str, typer.Option("--method", help="channel (structured) or magnitude (zeros).")
    ] = "channel",
    ratio: Annotated[
        str,
        typer.Option(
            "--ratio", help="Fraction to remove, or 'auto' (largest within --min-cosine)."
        ),
    ] = "0.5",
    layer_ratio: Annotated[
        list[str] | None,
        typer.Option("--layer-ratio", help="PATTERN=RATIO for producer names (repeatable)."),
    ] = None,
    criterion: Annotated[
        str, typer.Option("--criterion", help="l1, l2 or activation (data-driven).")
    ] = "l1",
    compensate: Annotated[
        bool, typer.Option("--compensate", help="Fold removed channels' means into biases.")
    ] = False,
    measure_speed: Annotated[
        bool, typer.Option("--measure-speed/--no-measure-speed", help="Time against parent.")
    ] = True,
    round_to: Annotated[
        int, typer.Option("--round-to", help="Keep a multiple of this many channels.")
    ] = 1,
    min_channels: Annotated[int, typer.Option("--min-channels", help="Keep at least.")] = 1,
    ignore: Annotated[
        list[str] | None, typer.Option("--ignore", help="Producer node left alone (repeatable).")
    ] = None,
    scope: Annotated[str, typer.Option("--scope", help="magnitude: global or layer.")] = "global",
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="magnitude: N:M such as 2:4.")
    ] = None,
    min_cosine: CosOpt = None,
    min_top1: Annotated[
        float | None, typer.Option("--min-top1", help="Lowest top-1 agreement accepted.")
    ] = None,
    dims: DimOpt = None,
    provider: ProviderOpt = "cpu",
    threads: ThreadsOpt = None,
    inputs_file: InputsFileOpt = None,
    seed: SeedOpt = 0,
    external_data: ExternalOpt = "auto",
    no_guard: NoGuardOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Prune an ONNX model: whole channels (smaller, faster) or smallest weights (sparser)."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        tolerance = _tolerance(None, None, min_cosine, min_top1)
        step: dict[str, Any] = {
            "type": "prune",
            "method": method,
            "ratio": ratio if ratio == "auto" else _float_arg(ratio, "--ratio"),
            "layer_ratios": {
                k: _float_arg(v, "--layer-ratio")
                for k, v in (_parse_kv_json(layer_ratio, "--layer-ratio")).items()
            },
            "criterion": criterion,
            "compensate": compensate,
            "measure_speed": measure_speed,
            "round_to": round_to,
            "min_channels": min_channels,
            "ignore": ignore or [],
            "scope": scope,
            "pattern": pattern,
            "tolerance": tolerance,
        }
        if no_guard:
            step["guard"] = None
        _on_onnx(
            step,
            model,
            output,
            dims,
            provider,
            threads,
            external_data,
            seed,
            inputs_file,
            as_json,
            quiet,
        )


def _float_arg(value: Any, flag: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} expects a number, found {value!r}") from None


def _calibration_source(path: Path | None, function: str | None) -> str:
    if function:
        return "callable"
    if path is None:
        return "synthetic"
    if path.is_dir() and not any(path.glob("*.npz")):
        return "images"
    return "npz"


def _csv_ints(text: str | None, flag: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, found {text!r}") from None


def _parse_provider_options(values: list[str] | None) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        provider, dot, name = key.partition(".")
        if not sep or not dot or not provider or not name:
            raise ConfigError(
                f"--provider-option expects PROVIDER.KEY=VALUE such as cuda.device_id=0, "
                f"found {item!r}"
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(provider, {})[name] = value
    return options


def _parse_shapes(values: list[str] | None) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for item in values or []:
        name, sep, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            shapes[name] = []
        if not sep or not name or not shapes[name]:
            raise ConfigError(f"--shape expects NAME=D,D,... such as x=8,3,224,224, found {item!r}")
    return shapes


@app.command()
def bench(
    models: Annotated[list[Path], typer.Argument(help="ONNX models; the first is the baseline.")],
    provider: Annotated[
        str, typer.Option("--provider", "-p", help="Comma-separated providers: cpu,cuda,...")
    ] = "cpu",
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
    seed: SeedOpt = 0,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up runs per model.")] = 10,
    warmup_seconds: Annotated[
        float | None, typer.Option("--warmup-seconds", help="Warm up for this long instead.")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per model per trial.")] = 50,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Seconds of timed runs per model per trial instead."),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", help="Independent trials, each with fresh sessions.")
    ] = 3,
    threads: ThreadsOpt = None,
    inter_threads: Annotated[
        int | None, typer.Option("--inter-threads", help="Inter-op threads.")
    ] = None,
    execution_mode: Annotated[
        str, typer.Option("--execution-mode", help="sequential or parallel.")
    ] = "sequential",
    opt_level: Annotated[
        str, typer.Option("--opt-level", help="disable, basic, extended or all.")
    ] = "all",
    no_mem_arena: Annotated[
        bool, typer.Option("--no-mem-arena", help="Disable the CPU memory arena.")
    ] = False,
    sweep_threads: Annotated[
        str | None, typer.Option("--sweep-threads", help="e.g. 1,2,4: one row per count.")
    ] = None,
    sweep_batch: Annotated[
        str | None, typer.Option("--sweep-batch", help="e.g. 1,8,32: one row per batch size.")
    ] = None,
    batch_dim: Annotated[str, typer.Option("--batch-dim", help="Name of the batch dim.")] = "batch",
    concurrency_levels: Annotated[
        str | None,
        typer.Option("--concurrency", help="Requests in flight on one session, e.g. 1,2,4."),
    ] = None,
    concurrency_mode: Annotated[
        str, typer.Option("--concurrency-mode", help="threads, async or both.")
    ] = "both",
    placement: Annotated[
        bool, typer.Option("--placement", help="Report which provider runs each node.")
    ] = False,
    io_binding: Annotated[
        str, typer.Option("--io-binding", help="auto (GPU providers), on or off.")
    ] = "auto",
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
        str, typer.Option("--percentile", help="Statistic the budget applies to (p50..p99).")
    ] = "p99",
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated names for the models.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON report here.")
    ] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write a Markdown summary here.")
    ] = None,
    csv_out: CsvOpt = None,
    plot_out: PlotOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Latency of one or more models per execution provider, interleaved, with gates."""
    _setup_logging(debug, quiet)
    with _funnel(debug):
        from onnxopt.bench import report as bench_report
        from onnxopt.bench.core import Candidate
        from onnxopt.bench.runner import InputSource, raise_for_gates, run_bench
        from onnxopt.config import BenchStep, Target
        from onnxopt.modelio import load_model
        from onnxopt.verify import load_inputs, resolve_dims, specs_from_model

        names = labels.split(",") if labels else [m.stem for m in models]
        if len(names) != len(models):
            raise ConfigError(f"--labels has {len(names)} names for {len(models)} models")
        if len(set(names)) != len(names):
            names = [str(m) for m in models]
        signatures = [
            [
                (s.name, s.dtype, len(s.shape))
                for s in specs_from_model(load_model(m, load_weights=False))
            ]
            for m in models  # loading also runs onnx.checker on each file
        ]
        for m, sig in zip(models[1:], signatures[1:], strict=True):
            if sig != signatures[0]:
                raise InputError(
                    f"{m.name} takes other inputs than {models[0].name} (name, dtype, rank: "
                    f"{sig} vs {signatures[0]}); bench compares models on the same inputs",
                    hint="bench models with the same inputs together, or in separate runs",
                )
        try:
            cfg = BenchStep.model_validate(
                {
                    "type": "bench",
                    "providers": [p.strip() for p in provider.split(",") if p.strip()],
                    "strict": strict,
                    "provider_options": _parse_provider_options(provider_option),
                    "warmup": warmup,
                    "warmup_seconds": warmup_seconds,
                    "runs": runs,
                    "duration_seconds": duration,
                    "trials": trials,
                    "threads": _csv_ints(sweep_threads, "--sweep-threads"),
                    "batch_sizes": _csv_ints(sweep_batch, "--sweep-batch"),
                    "batch_dim": batch_dim,
                    "concurrency": _csv_ints(concurrency_levels, "--concurrency"),
                    "concurrency_mode": concurrency_mode,
                    "session": {
                        "execution_mode": execution_mode,
                        "graph_optimization_level": opt_level,
                        "enable_mem_arena": not no_mem_arena,
                    },
                    "placement": placement,
                    "io_binding": io_binding,
                    "baseline": str(baseline) if baseline else None,
                    "max_regression": max_regression,
                    "latency_budget_ms": latency_budget,
                    "percentile": percentile,
                }
            )
        except Exception as err:
            from pydantic import ValidationError

            from onnxopt.config import format_validation_error

            if isinstance(err, ValidationError):
                raise format_validation_error(err, "command line", BenchStep) from None
            raise
        specs = specs_from_model(load_model(models[0], load_weights=False))
        overrides = _parse_shapes(shape)
        unknown = sorted(set(overrides) - {s.name for s in specs})
        if unknown:
            raise ConfigError(
                f"--shape names {unknown} are not inputs of {models[0].name}; "
                f"inputs: {[s.name for s in specs]}"
            )
        specs = [
            s.model_copy(update={"shape": overrides[s.name]}) if s.name in overrides else s
            for s in specs
        ]
        values, _ = resolve_dims(specs, _parse_dims(dims))
        source = InputSource(specs=specs, dims=values, seed=seed)
        if inputs_file is not None:
            source.fixed = load_inputs(inputs_file)
        target = Target(
            provider=cfg.providers[0] if cfg.providers else "cpu",
            intra_op_threads=threads,
            inter_op_threads=inter_threads,
        )
        _check_report_paths(output, markdown_out, csv_out, plot_out)
        progress = _stderr()
        if not quiet and not as_json:
            progress.print(f"measuring {len(models)} model(s) on {provider} ...", highlight=False)
        report = run_bench(
            [Candidate(n, m) for n, m in zip(names, models, strict=True)], source, cfg, target
        )
        _write_reports(report, bench_report, output, markdown_out, csv_out, plot_out)
        if as_json:
            print(json.dumps(report, indent=2, default=str))
        elif not quiet:
            console = _stdout(200)
            console.print(bench_report.table(report))
            for c in report["concurrency"]:
                console.print(
                    f"{c['model']} {c['provider']} threads={c.get('threads') or 'default'} "
                    f"{c['mode']} x{c['concurrency']}: "
                    f"{c['throughput_rps']:.1f} req/s, p50 {c['latency_ms']['p50']:.3f} ms, "
                    f"p99 {c['latency_ms']['p99']:.3f} ms",
                    highlight=False,
                )
            for s in report["skipped"]:
                console.print(f"skipped {s['provider']}: {s['reason']}", highlight=False)
            m = report["machine"]
            console.print(
                f"machine: {m['cpu']}, {m['usable_cores']} cores, flags "
                f"{' '.join(m['cpu_flags']) or '-'}, onnxruntime {m['onnxruntime']}",
                highlight=False,
            )
        raise_for_gates(report)


@app.command()
def package(
    model: Annotated[Path, typer.Argument(help="The ONNX model to package.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .ort file.")],
    target_platform: Annotated[
        str, typer.Option("--target-platform", help="arm (portable) or amd64.")
    ] = "arm",
    optimization_level: Annotated[
        str,
        typer.Option("--optimization-level", help="disable, basic, extended or all."),
    ] = "all",
    optimization_style: Annotated[
        str, typer.Option("--optimization-style", help="fixed or runtime.")
    ] = "fixed",
    type_reduction: Annotated[
        bool,
        typer.Option("--type-reduction", help="Also list per-op types in the build config."),
    ] = False,
    dims: DimOpt = None,
    threads: ThreadsOpt = None,
    inputs_file: InputsFileOpt = None,
    seed: SeedOpt = 0,
    min_cosine: CosOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """ORT format (.ort) for ORT Mobile / minimal builds, plus the operator config.

    Writes OUT.ort and OUT.required_operators.config (or
    OUT.required_operators_and_types.config with --type-reduction), after checking that the
    .ort file loads in ONNX Runtime and matches the ONNX model.
    """
    _setup_logging(debug, quiet)
    with _funnel(debug):
        step = {
            "type": "package",
            "target_platform": target_platform,
            "optimization_level": optimization_level,
            "optimization_style": optimization_style,
            "type_reduction": type_reduction,
            "tolerance": _tolerance(atol, rtol, min_cosine, None),
        }
        _on_onnx(
            step, model, output, dims, "cpu", threads, "auto", seed, inputs_file, as_json, quiet
        )


report_app = typer.Typer(
    help="Work with stored bench reports.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(report_app, name="report")


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
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Write a Markdown comparison here.")
    ] = None,
    csv_out: CsvOpt = None,
    plot_out: PlotOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Merge bench reports from several machines or CI jobs into one comparison.

    Reports whose models (sha256) or inputs (digest) differ are refused unless allowed.
    """
    _setup_logging(debug, quiet)
    with _funnel(debug):
        from onnxopt.bench import merge

        _check_report_paths(output, markdown_out, csv_out, plot_out)
        names = [n.strip() for n in labels.split(",")] if labels else None
        merged = merge.merge_reports(
            reports,
            names,
            allow_different_models=allow_models,
            allow_different_inputs=allow_inputs,
        )
        _write_reports(merged, merge, output, markdown_out, csv_out, plot_out)
        if as_json:
            print(json.dumps(merged, indent=2, default=str))
        elif not quiet:
            console = _stdout(200)
            console.print(merge.table(merged))
            for source in merged["sources"]:
                console.print(merge.machine_line(source), highlight=False)
            for note in merged["notes"]:
                console.print(f"note: {note}", highlight=False)


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
    _setup_logging(debug, False)
    with _funnel(debug):
        from onnxopt.inspection import inspect_model

        info = inspect_model(model, dims=_parse_dims(dims), provider=provider)
        if as_json:
            print(json.dumps(info, indent=2, default=str))
        else:
            from onnxopt.report.console import print_inspect

            print_inspect(_stdout(160), info)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the pipeline YAML (for editor autocompletion)."""
    from onnxopt.config import json_schema

    print(json.dumps(json_schema(), indent=2))


_SIGNALS: dict[str, float] = {}  # the last signal acted on, when, and whether it was reported
_CLEANUP_S = 3.0
_REDELIVER_S = 0.05


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: unwind, removing unfinished work (exit code 130/143).

    A repeat within a few seconds is ignored, so that a double Ctrl-C, or a SIGTERM right
    after one, cannot cut the cleanup short (it takes well under a second). A later repeat
    interrupts again, in case the first was swallowed by library code; SIGKILL always works.
    """
    import signal
    import time

    now = time.monotonic()
    if now - _SIGNALS.get("at", -_CLEANUP_S) < _CLEANUP_S:
        return
    if _importing(frame):
        # An exception raised while an extension module initialises can leave it half
        # made: seen as "ImportError: initialization failed" and, rarely, a segmentation
        # fault. The signal is delivered again once the import is done.
        _redeliver(signum)
        return
    _SIGNALS.update(at=now, signum=signum)
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _importing(frame: Any) -> bool:
    """Whether the interrupted code is inside Python's import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    import threading

    timer = threading.Timer(_REDELIVER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def main() -> None:
    """Console-script entry point (SIGTERM is handled like Ctrl-C, with exit code 143)."""
    import signal

    from onnxopt._fs import process_temp

    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    temp = contextlib.ExitStack()  # closed before every exit, os._exit included
    try:
        temp.enter_context(process_temp())  # every library's temporary files, removed at exit
        app()
    except KeyboardInterrupt as err:  # while Typer was still building the command line
        temp.close()
        _error("stopped before any work started; nothing was written")
        sys.stderr.flush()
        os._exit(int(ExitCode.TERMINATED if isinstance(err, Terminated) else ExitCode.INTERRUPTED))
    except SystemExit as done:
        if done.code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
            # The cleanup is done. Exit now: if the interrupt landed while an extension
            # module was evaluating Python code, CPython has flagged it "unhandled" and
            # would otherwise end the process by SIGINT, hiding the documented exit code.
            code = int(done.code)
            if "signum" in _SIGNALS:  # typer reports any interrupt before a command as 130
                code = int(
                    ExitCode.TERMINATED
                    if _SIGNALS["signum"] == signal.SIGTERM
                    else ExitCode.INTERRUPTED
                )
            if not _SIGNALS.get("reported"):
                _error("stopped before any work started; nothing was written")
            temp.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
    finally:
        temp.close()
