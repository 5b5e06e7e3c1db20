"""``onnxopt run`` and the step subcommands: export, simplify, quantize, prune, package.

Each step subcommand is a one-step pipeline run by the same engine as ``onnxopt run``;
only the flags a user gave reach its config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.app import app
from onnxopt.cli.options import (
    AtolOpt,
    Common,
    CosOpt,
    NoGuardOpt,
    Output,
    OutputOpt,
    RtolOpt,
    Top1Opt,
    float_arg,
    given,
    on_onnx,
    parse_input,
    parse_kv_json,
    run_with_progress,
    show,
    single_step,
    step_command,
    tolerance,
    with_groups,
)
from onnxopt.config.data import folder_or_file_source


@app.command()
@with_groups
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
    *,
    out: Output,
) -> None:
    """Run a YAML pipeline of steps; artifacts, inputs.npz and manifest.json go to output_dir."""
    from onnxopt.config import load_config
    from onnxopt.engine import run_pipeline

    config, base_dir = load_config(pipeline)
    manifest = run_with_progress(
        lambda progress: run_pipeline(
            config,
            base_dir,
            out_dir=output_dir,
            force=force,
            on_event=progress,
            wait=not no_wait,
        ),
        out,
    )
    show(manifest, out.as_json, out.quiet)


@app.command()
@step_command()
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
    weights: Annotated[
        Path | None, typer.Option("--weights", help=".pt/.pth state_dict or .safetensors.")
    ] = None,
    factory_arg: Annotated[
        list[str] | None,
        typer.Option("--factory-arg", help="KEY=VALUE (JSON value) passed to the factory."),
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset version (18).")] = None,
    exporter: Annotated[
        str | None, typer.Option("--exporter", help="auto (default), dynamo or torchscript.")
    ] = None,
    output_name: Annotated[
        list[str] | None, typer.Option("--output-name", help="Output names (repeatable).")
    ] = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    *,
    common: Common,
) -> None:
    """Export a PyTorch model to ONNX, validated against PyTorch (and at a second shape)."""
    step = {
        "type": "export",
        **given(opset=opset, exporter=exporter, output_names=output_name or None),
        "tolerance": tolerance(atol=atol, rtol=rtol, min_cosine=min_cosine),
    }
    model: dict[str, Any] = {
        "factory": factory,
        "factory_args": parse_kv_json(factory_arg, "--factory-arg"),
        **given(weights=weights and str(weights)),
    }
    single_step(step, model, output, None, common, inputs=[parse_input(t) for t in inputs])


@app.command()
@step_command()
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
        str | None, typer.Option("--ort-level", help="ORT backend level: basic, extended, all.")
    ] = None,
    model_type: Annotated[
        str | None, typer.Option("--model-type", help="Transformers backend model type (bert).")
    ] = None,
    num_heads: Annotated[
        int | None, typer.Option("--num-heads", help="Attention heads (0: detect).")
    ] = None,
    hidden_size: Annotated[
        int | None, typer.Option("--hidden-size", help="Hidden size (0: detect).")
    ] = None,
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
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    min_cosine: CosOpt = None,
    no_guard: NoGuardOpt = False,
    *,
    common: Common,
) -> None:
    """Simplify an ONNX model (onnxsim, ORT offline optimization, transformer fusions)."""
    step: dict[str, Any] = {
        "type": "simplify",
        **given(backend=backend or None),
        "ort": given(level=ort_level),
        "transformers": given(model_type=model_type, num_heads=num_heads, hidden_size=hidden_size),
        "onnxsim": given(
            skip_fuse_bn=skip_fuse_bn or None,
            skip_constant_folding=skip_constant_folding or None,
            skipped_optimizers=skip_optimizer or None,
        ),
        "tolerance": tolerance(atol=atol, rtol=rtol, min_cosine=min_cosine),
    }
    if no_guard:
        step["guard"] = None
    on_onnx(step, model, output, common)


@dataclass(frozen=True)
class StaticFlags:
    """quantize's static-only options: the ``static`` section of its config."""

    activation_type: Annotated[
        str | None, typer.Option("--activation-type", help="static: uint8 (default) or int8.")
    ] = None
    quant_format: Annotated[
        str | None, typer.Option("--format", help="static: qdq (default) or qoperator.")
    ] = None
    method: Annotated[
        str | None,
        typer.Option(
            "--method", help="static: minmax (default), entropy, percentile, distribution."
        ),
    ] = None
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration", help="static: an .npz, a folder of .npz samples or of images."
        ),
    ] = None
    calibration_callable: Annotated[
        str | None,
        typer.Option("--calibration-callable", help="static: module:function yielding dicts."),
    ] = None
    calibration_samples: Annotated[
        int | None,
        typer.Option(
            "--calibration-samples", help="static: samples to read at most (all; synthetic: 16)."
        ),
    ] = None
    allow_synthetic_calibration: Annotated[
        bool,
        typer.Option("--allow-synthetic-calibration", help="static: calibrate on generated data."),
    ] = False

    def section(self) -> dict[str, Any]:
        """The static options given, calibration included."""
        cal = given(
            source=_calibration_source(self.calibration, self.calibration_callable),
            path=self.calibration and str(self.calibration.resolve()),
            callable=self.calibration_callable,
            samples=self.calibration_samples,
        )
        return given(
            format=self.quant_format,
            activation_type=self.activation_type,
            method=self.method,
            allow_synthetic_calibration=self.allow_synthetic_calibration or None,
            calibration=cal if len(cal) > 1 or "samples" in cal else None,
        )


@app.command()
@step_command()
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
        bool | None,
        typer.Option("--per-channel/--per-tensor", help="Weight scales (int8; per-channel)."),
    ] = None,
    weight_type: Annotated[
        str | None, typer.Option("--weight-type", help="int8 (default) or uint8.")
    ] = None,
    diagnose: Annotated[
        bool, typer.Option("--diagnose", help="Find and exclude nodes that break the budget.")
    ] = False,
    require_speedup: Annotated[
        bool, typer.Option("--require-speedup", help="auto: fail (exit 4) if none is faster.")
    ] = False,
    block_size: Annotated[
        int | None, typer.Option("--block-size", help="int4: block size (32).")
    ] = None,
    keep_io_types: Annotated[
        bool | None, typer.Option("--keep-io-types/--fp16-io", help="fp16: keep float32 I/O.")
    ] = None,
    min_top1: Top1Opt = None,
    measure_speed: Annotated[
        bool | None,
        typer.Option("--measure-speed/--no-measure-speed", help="Time against parent."),
    ] = None,
    min_cosine: CosOpt = None,
    no_guard: NoGuardOpt = False,
    *,
    static: StaticFlags,
    common: Common,
) -> None:
    """Quantize an ONNX model (INT8 dynamic/static, fp16, int4), verified and timed."""
    sections = {
        "static": static.section(),
        "fp16": given(keep_io_types=keep_io_types),
        "int4": given(block_size=block_size),
        "auto": given(require_speedup=require_speedup or None),
    }
    # the int8 weight flags: the mode's own section (both int8 sections for auto)
    weights = given(weight_type=weight_type, per_channel=per_channel)
    for section in ("dynamic", "static") if mode == "auto" else (_int8_section(mode),):
        sections[section] = {**sections.get(section, {}), **weights}
    step: dict[str, Any] = {
        "type": "quantize",
        "mode": mode,
        **given(
            nodes_to_exclude=exclude or None,
            measure_speed=measure_speed,
            diagnose=diagnose or None,
            op_types_to_quantize=[t.strip() for t in op_types.split(",") if t.strip()]
            if op_types
            else None,
        ),
        **{name: options for name, options in sections.items() if options},
        "tolerance": tolerance(min_cosine=min_cosine, min_top1_agreement=min_top1),
    }
    if no_guard:
        step["guard"] = None
    on_onnx(step, model, output, common)


def _int8_section(mode: str) -> str:
    """Where the int8 weight flags go: static's own section, else dynamic's (whose rule then
    names them for fp16 and int4)."""
    return "static" if mode == "static" else "dynamic"


def _calibration_source(path: Path | None, function: str | None) -> str | None:
    if function:
        return "callable"
    return None if path is None else folder_or_file_source(path)


@app.command()
@step_command()
def prune(
    model: Annotated[Path, typer.Argument(help="Input .onnx model (float).")],
    output: OutputOpt,
    method: Annotated[
        str | None, typer.Option("--method", help="channel (default) or magnitude (zeros).")
    ] = None,
    ratio: Annotated[
        str | None,
        typer.Option(
            "--ratio", help="Fraction to remove (0.5), or 'auto' (largest within --min-cosine)."
        ),
    ] = None,
    layer_ratio: Annotated[
        list[str] | None,
        typer.Option("--layer-ratio", help="PATTERN=RATIO for producer names (repeatable)."),
    ] = None,
    macs_target: Annotated[
        str | None,
        typer.Option(
            "--macs-target",
            help="channel: share of the MACs to remove (0.3), spent on the groups whose "
            "measured output change costs least (instead of --ratio).",
        ),
    ] = None,
    criterion: Annotated[
        str | None, typer.Option("--criterion", help="l1 (default), l2 or activation.")
    ] = None,
    compensate: Annotated[
        bool, typer.Option("--compensate", help="Fold removed channels' means into biases.")
    ] = False,
    measure_speed: Annotated[
        bool | None,
        typer.Option("--measure-speed/--no-measure-speed", help="Time against parent."),
    ] = None,
    round_to: Annotated[
        int | None, typer.Option("--round-to", help="Keep a multiple of this many channels.")
    ] = None,
    min_channels: Annotated[int | None, typer.Option("--min-channels", help="Keep at least.")] = (
        None
    ),
    ignore: Annotated[
        list[str] | None, typer.Option("--ignore", help="Producer node left alone (repeatable).")
    ] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="magnitude: global (default) or layer.")
    ] = None,
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="magnitude: N:M such as 2:4.")
    ] = None,
    min_cosine: CosOpt = None,
    min_top1: Top1Opt = None,
    no_guard: NoGuardOpt = False,
    *,
    common: Common,
) -> None:
    """Prune an ONNX model: whole channels (smaller, faster) or smallest weights (sparser)."""
    step: dict[str, Any] = {
        "type": "prune",
        **given(
            method=method,
            ratio=None
            if ratio is None
            else ratio
            if ratio == "auto"
            else float_arg(ratio, "--ratio"),
            layer_ratios={
                k: float_arg(v, "--layer-ratio")
                for k, v in parse_kv_json(layer_ratio, "--layer-ratio").items()
            }
            or None,
            macs_target=None if macs_target is None else float_arg(macs_target, "--macs-target"),
            criterion=criterion,
            compensate=compensate or None,
            measure_speed=measure_speed,
            round_to=round_to,
            min_channels=min_channels,
            ignore=ignore or None,
            scope=scope,
            pattern=pattern,
        ),
        "tolerance": tolerance(min_cosine=min_cosine, min_top1_agreement=min_top1),
    }
    if no_guard:
        step["guard"] = None
    on_onnx(step, model, output, common)


@app.command()
@step_command(target=False)
def package(
    model: Annotated[Path, typer.Argument(help="The ONNX model to package.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .ort file.")],
    target_platform: Annotated[
        str | None, typer.Option("--target-platform", help="arm (portable, default) or amd64.")
    ] = None,
    optimization_level: Annotated[
        str | None,
        typer.Option("--optimization-level", help="disable, basic, extended or all (default)."),
    ] = None,
    optimization_style: Annotated[
        str | None, typer.Option("--optimization-style", help="fixed (default) or runtime.")
    ] = None,
    type_reduction: Annotated[
        bool,
        typer.Option("--type-reduction", help="Also list per-op types in the build config."),
    ] = False,
    min_cosine: CosOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    *,
    common: Common,
) -> None:
    """ORT format (.ort) for ORT Mobile / minimal builds, plus the operator config.

    Writes OUT.ort and OUT.required_operators.config (or
    OUT.required_operators_and_types.config with --type-reduction), after checking that the
    .ort file loads in ONNX Runtime and matches the ONNX model.
    """
    step = {
        "type": "package",
        **given(
            target_platform=target_platform,
            optimization_level=optimization_level,
            optimization_style=optimization_style,
            type_reduction=type_reduction or None,
        ),
        "tolerance": tolerance(atol=atol, rtol=rtol, min_cosine=min_cosine),
    }
    on_onnx(step, model, output, common)
