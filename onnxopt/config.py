"""Pipeline configuration: strict pydantic models and the YAML loader.

Every field carries a description, so ``onnxopt schema`` and editors describe themselves.
Unknown keys, wrong types and unknown step types fail before any work is done, naming the
file and the field path.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from onnxopt.errors import ConfigError, did_you_mean

DType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(StrictModel):
    """One model input: its name, shape (ints or symbolic dim names), dtype and value range."""

    name: str = Field(
        description="Input name, as in the ONNX graph / the forward() argument order."
    )
    shape: list[int | str] = Field(
        description="Dimensions: integers, or names such as 'batch' for symbolic (dynamic) dims."
    )
    dtype: DType = Field("float32", description="Element type of the input tensor.")
    range: tuple[float, float] | None = Field(
        None,
        description="[low, high] of generated values (uniform; ints: low..high-1). "
        "Default: standard normal for floats, [0, 8) for integers.",
    )

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: list[int | str]) -> list[int | str]:
        for dim in shape:
            if isinstance(dim, int) and dim < 1:
                raise ValueError(f"fixed dims must be >= 1, found {dim}")
            if isinstance(dim, str) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", dim):
                raise ValueError(f"symbolic dim names must be identifiers, found {dim!r}")
        return shape


class ModelSource(StrictModel):
    """Where the model comes from: an existing ONNX file, or a PyTorch factory (for export)."""

    path: str | None = Field(None, description="An existing .onnx file to start from.")
    factory: str | None = Field(
        None,
        description="PyTorch factory 'package.module:function' or 'path/to/file.py:function' "
        "returning an nn.Module. Note: this runs that Python code.",
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    weights: str | None = Field(
        None,
        description="Optional state_dict for the factory's module: .pt/.pth (loaded with "
        "weights_only=True) or .safetensors.",
    )
    huggingface: str | None = Field(
        None,
        description="A local Hugging Face model folder (config.json, weights, tokenizer or "
        "image processor files), loaded offline; needs the 'hf' extra.",
    )
    task: Literal["feature-extraction", "text-classification", "image-classification"] = Field(
        "feature-extraction", description="huggingface: what the exported model computes."
    )
    pooling: Literal["auto", "none", "mean", "cls"] = Field(
        "auto",
        description="huggingface feature-extraction: sentence embedding pooling; auto follows "
        "a sentence-transformers folder (1_Pooling, Normalize), else last_hidden_state.",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"path": value} if value.endswith(".onnx") else {"factory": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("path", "factory", "huggingface") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'path' (an .onnx file), 'factory' or 'huggingface' "
                f"(a local model folder); found {given or 'none'}"
            )
        if self.weights is not None and self.factory is None:
            raise ValueError("'weights' goes with 'factory', not with an ONNX 'path'")
        return self

    @property
    def is_onnx(self) -> bool:
        """True when the model is an existing ONNX file."""
        return self.path is not None

    @property
    def is_pytorch(self) -> bool:
        """True when the model must be exported first (a factory or a Hugging Face folder)."""
        return self.path is None

    @property
    def label(self) -> str:
        """How the PyTorch source is named in manifests."""
        return f"huggingface:{self.huggingface}" if self.huggingface else f"{self.factory}"


class Target(StrictModel):
    """The execution provider and session settings that verification runs on."""

    provider: str = Field("cpu", description="Execution provider: cpu, cuda, tensorrt, ...")
    provider_options: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the execution provider."
    )
    intra_op_threads: int | None = Field(
        None, ge=0, description="Intra-op threads (0 or unset: ONNX Runtime's default)."
    )
    inter_op_threads: int | None = Field(None, ge=0, description="Inter-op threads.")


class Tolerance(StrictModel):
    """Overrides of a step's verification tolerance (unset fields keep the step's default)."""

    atol: float | None = Field(None, ge=0, description="Absolute tolerance.")
    rtol: float | None = Field(None, ge=0, description="Relative tolerance.")
    min_cosine: float | None = Field(
        None, ge=-1, le=1, description="Lowest cosine similarity accepted per output."
    )
    min_top1_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Lowest top-1 agreement accepted for classifier-like outputs "
        "(rank 2, more than one class).",
    )


class VerifyConfig(StrictModel):
    """How every artifact is checked against its parent."""

    seed: int = Field(0, description="Seed of the generated shared input set.")
    inputs_file: str | None = Field(
        None, description="An .npz of inputs to use instead of generated ones."
    )
    second_shape: bool = Field(
        True,
        description="Also run parent and child with every symbolic dim changed, "
        "to prove dynamic axes still work.",
    )
    second_dims: dict[str, int] = Field(
        default_factory=dict,
        description="Dim values for that second run (default: each dim's value + 1).",
    )


class ImagePreprocessing(StrictModel):
    """How images become one model input (RGB, resized, center-cropped, normalized)."""

    input: str | None = Field(None, description="Input that receives the image (default: first).")
    resize: int | None = Field(
        256, ge=1, description="Resize so the shorter side has this length (None: keep)."
    )
    crop: tuple[int, int] = Field((224, 224), description="Center crop [height, width].")
    scale: float = Field(1 / 255, description="Pixel values are multiplied by this first.")
    mean: list[float] = Field(
        default_factory=lambda: [0.485, 0.456, 0.406], description="Per-channel mean (RGB)."
    )
    std: list[float] = Field(
        default_factory=lambda: [0.229, 0.224, 0.225], description="Per-channel std (RGB)."
    )
    layout: Literal["nchw", "nhwc"] = Field("nchw", description="Tensor layout.")
    channels: Literal["rgb", "bgr"] = Field("rgb", description="Channel order.")


class CalibrationConfig(StrictModel):
    """Where calibration samples come from (kept apart from the verification inputs)."""

    source: Literal["synthetic", "npz", "images", "callable"] = Field(
        "synthetic",
        description="synthetic: generated from the inputs spec (needs "
        "allow_synthetic_calibration); npz: an .npz file or a folder of .npz files; images: "
        "a folder of images with 'preprocessing'; callable: 'module:function' or "
        "'file.py:function' returning an iterable of input dicts (runs that code).",
    )
    path: str | None = Field(
        None,
        description="npz: a file whose arrays are [samples, *input shape] (or one sample), "
        "or a folder of .npz files, one sample each; images: a folder of images.",
    )
    callable: str | None = Field(None, description="For source callable: the function.")
    preprocessing: ImagePreprocessing = Field(
        default_factory=ImagePreprocessing, description="For source images."
    )
    samples: int = Field(16, ge=1, description="Samples to use (synthetic: to generate).")
    seed: int = Field(1000, description="Seed of synthetic samples (apart from verification's).")


class StaticOptions(StrictModel):
    """INT8 static quantization with calibration."""

    format: Literal["qdq", "qoperator"] = Field("qdq", description="Quantized model format.")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8",
        description="Activation type. uint8 activations with int8 weights (U8S8) measured "
        "2.4x faster than fp32 on a VNNI CPU; int8/int8 per-tensor 0.97x.",
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
    per_channel: bool = Field(True, description="Per-channel weight scales.")
    reduce_range: bool = Field(False, description="7-bit weights (for CPUs without VNNI).")
    symmetric_activations: bool = Field(False, description="Symmetric activation ranges.")
    symmetric_weights: bool = Field(True, description="Symmetric weight ranges.")
    method: Literal["minmax", "entropy", "percentile", "distribution"] = Field(
        "minmax", description="Calibration method."
    )
    percentile: float = Field(99.999, gt=0, le=100, description="For method percentile.")
    num_bins: int | None = Field(
        None, ge=2, description="Histogram bins (entropy, percentile, distribution)."
    )
    preprocess: bool = Field(
        True, description="Run ONNX Runtime's quantization pre-processing first."
    )
    allow_synthetic_calibration: bool = Field(
        False,
        description="Calibrate on generated data. Measured trap: a CNN calibrated on noise kept "
        "cosine 0.998 on noise yet got every answer wrong on real input; opt in knowingly.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration data."
    )


class Fp16Options(StrictModel):
    """float16 conversion."""

    keep_io_types: bool = Field(True, description="Keep float32 inputs and outputs.")
    op_block_list: list[str] = Field(default_factory=list, description="Op types kept in float32.")
    node_block_list: list[str] = Field(
        default_factory=list, description="Node names kept in float32."
    )
    auto_block: bool = Field(
        True,
        description="Run the float32 model on the verification inputs and keep nodes whose "
        "values exceed the float16 range (or are inf/NaN) in float32.",
    )


class Int4Options(StrictModel):
    """4-bit weight-only quantization of MatMul weights (MatMulNBits)."""

    block_size: int = Field(32, ge=16, description="Block size (a power of 2, >= 16).")
    symmetric: bool = Field(True, description="Symmetric blocks.")
    accuracy_level: int | None = Field(
        None, ge=0, le=4, description="MatMulNBits accuracy level (compute type)."
    )


class DynamicOptions(StrictModel):
    """INT8 dynamic quantization (weights int8, activations quantized at run time)."""

    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight type.")
    per_channel: bool = Field(
        True, description="Per-channel weights (measured: same speed, cosine 0.894 -> 0.986)."
    )
    reduce_range: bool = Field(False, description="7-bit weights.")


def parse_fraction(value: Any) -> Any:
    """'10%' -> 0.1; numbers pass through."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"expected a fraction such as 0.1 or '10%', found {value!r}") from None
    return value


def parse_millis(value: Any) -> Any:
    """'15ms' -> 15.0, '1.5s' -> 1500.0, '200us' -> 0.2; numbers are milliseconds."""
    if isinstance(value, str):
        text = value.strip().lower()
        for unit, scale in (("ms", 1.0), ("us", 1e-3), ("s", 1000.0)):
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * scale
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a duration such as '15ms', found {value!r}") from None
    return value


class Guard(StrictModel):
    """Speed guard: time the new artifact against its parent, keep the faster one."""

    not_slower: bool = Field(True, description="Require the new artifact to be no slower.")
    tolerance: float = Field(
        0.03, ge=0, description="Slowdown accepted before acting, e.g. 3% (and beyond noise)."
    )
    on_slower: Literal["keep_parent", "fail"] = Field(
        "keep_parent",
        description="keep_parent: pass the parent on instead; fail: stop with exit code 4.",
    )
    warmup: int = Field(5, ge=0, description="Warm-up runs per model.")
    runs: int = Field(30, ge=1, description="Timed runs per model per trial.")
    trials: int = Field(2, ge=1, description="Trials, each with fresh sessions.")

    _fraction = field_validator("tolerance", mode="before")(parse_fraction)


class StepBase(StrictModel):
    """Fields common to every step."""

    name: str | None = Field(None, description="Optional label shown in reports.")
    tolerance: Tolerance = Field(
        default_factory=Tolerance, description="Override the step's verification tolerance."
    )
    guard: Guard | None = Field(
        None,
        description="Speed guard: time the artifact against its parent on the target and keep "
        "the parent when the new one is slower beyond tolerance and noise.",
    )


class GuardedStep(StepBase):
    """A step whose purpose is speed: guarded against handing over a slower model by default."""

    guard: Guard | None = Field(
        default_factory=Guard,
        description="Speed guard, on by default: the artifact is timed against its parent on "
        "the target (interleaved) and, when it is slower beyond the tolerance and the noise, "
        "the parent is kept (on_slower: keep_parent) or the run fails (on_slower: fail). "
        "null turns it off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_timing_no_guard(cls, value: Any) -> Any:
        # measure_speed: false asks for no timing at all, so no default guard either
        if isinstance(value, dict) and value.get("measure_speed") is False and "guard" not in value:
            return {**value, "guard": None}
        return value


class ExportStep(StepBase):
    """PyTorch -> ONNX, validated against PyTorch."""

    type: Literal["export"] = Field(description="Step type.")
    opset: int = Field(18, ge=7, le=23, description="ONNX opset version.")
    exporter: Literal["auto", "dynamo", "torchscript"] = Field(
        "auto",
        description="'auto' tries dynamo, validates, and falls back to torchscript.",
    )
    output_names: list[str] | None = Field(
        None, description="Output names (default: output_0, output_1, ...)."
    )
    keep_stack_traces: bool = Field(
        False,
        description="Keep the exporter's per-node Python stack traces. They hold absolute "
        "paths of the exporting machine, so by default they are removed and the artifact's "
        "bytes do not depend on where it was exported.",
    )


class OnnxsimOptions(StrictModel):
    """Options of the onnxsim backend."""

    skip_fuse_bn: bool = Field(False, description="Do not fuse BatchNormalization into Conv.")
    skip_constant_folding: bool = Field(False, description="Do not fold constants.")
    skipped_optimizers: list[str] = Field(
        default_factory=list, description="onnxoptimizer passes to skip, e.g. fuse_pad_into_conv."
    )


class OrtOptions(StrictModel):
    """Options of the ONNX Runtime offline-optimization backend."""

    level: Literal["basic", "extended", "all"] = Field(
        "basic",
        description="Graph optimization level. Above 'basic' the result is valid only for "
        "the provider it was made with.",
    )


class TransformersOptions(StrictModel):
    """Options of the onnxruntime.transformers fusion backend."""

    model_type: str = Field("bert", description="Model type for the fusions: bert, gpt2, ...")
    num_heads: int = Field(0, ge=0, description="Attention heads (0: detect).")
    hidden_size: int = Field(0, ge=0, description="Hidden size (0: detect).")


SimplifyBackend = Literal["onnxsim", "ort", "transformers"]


class SimplifyStep(GuardedStep):
    """Graph simplification with one or more chained backends."""

    type: Literal["simplify"] = Field(description="Step type.")
    backend: list[SimplifyBackend] = Field(
        default_factory=lambda: list[SimplifyBackend](["onnxsim"]),
        description="Backend, or a list of backends applied in order: onnxsim, ort, transformers.",
    )
    onnxsim: OnnxsimOptions = Field(default_factory=OnnxsimOptions, description="onnxsim options.")
    ort: OrtOptions = Field(default_factory=OrtOptions, description="ORT optimization options.")
    transformers: TransformersOptions = Field(
        default_factory=TransformersOptions, description="Transformer fusion options."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("backend")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one backend")
        return value


class SessionSettings(StrictModel):
    """ONNX Runtime session settings used while benchmarking."""

    execution_mode: Literal["sequential", "parallel"] = Field(
        "sequential", description="Execution mode of the session."
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="Graph optimization level applied when the session loads."
    )
    enable_mem_arena: bool = Field(True, description="CPU memory arena.")
    enable_mem_pattern: bool = Field(True, description="Memory pattern optimization.")


class BenchStep(StepBase):
    """Latency per execution provider, interleaved, with statistics and gates."""

    type: Literal["bench"] = Field(description="Step type.")
    providers: list[str] = Field(
        default_factory=lambda: ["cpu"], description="Providers to measure (short names)."
    )
    provider_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per provider, e.g. {cuda: {device_id: 0}}."
    )
    strict: bool = Field(False, description="An unavailable provider is an error, not a skip.")
    warmup: int = Field(10, ge=0, description="Warm-up runs per model (not timed).")
    warmup_seconds: float | None = Field(None, gt=0, description="Warm up for this long instead.")
    runs: int = Field(50, ge=1, description="Timed runs per model per trial.")
    duration_seconds: float | None = Field(
        None, gt=0, description="Time each model for this long per trial instead of 'runs'."
    )
    trials: int = Field(3, ge=1, description="Independent trials, each with fresh sessions.")
    threads: list[int] | None = Field(
        None, description="Sweep over intra-op thread counts (default: the target's setting)."
    )
    batch_sizes: list[int] | None = Field(
        None, description="Sweep over values of the batch dim (needs a symbolic batch dim)."
    )
    batch_dim: str = Field("batch", description="Name of the symbolic batch dim.")
    concurrency: list[int] | None = Field(
        None, description="Requests in flight on one shared session, e.g. [1, 2, 4]."
    )
    concurrency_mode: Literal["threads", "async", "both"] = Field(
        "both", description="Thread pool over one session, run_async callbacks, or both."
    )
    session: SessionSettings = Field(
        default_factory=SessionSettings, description="Session settings."
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Bind inputs and outputs to the provider's device so host<->device copies "
        "are not timed. auto: on for GPU providers (cuda, tensorrt, rocm, dml), off for cpu.",
    )
    placement: bool = Field(False, description="Report which provider runs each node.")
    baseline: str | None = Field(None, description="A stored bench report JSON to compare to.")
    max_regression: float | None = Field(
        None, ge=0, description="Fail (exit 4) when slower than the baseline by more, e.g. 10%."
    )
    latency_budget_ms: float | None = Field(
        None, gt=0, description="Fail (exit 4) when the percentile exceeds it, e.g. '15ms'."
    )
    percentile: Literal["p50", "p90", "p95", "p99", "max", "mean"] = Field(
        "p99", description="Statistic that the latency budget applies to."
    )
    seed: int = Field(0, description="Seed of the bootstrap confidence intervals.")

    _fraction = field_validator("max_regression", mode="before")(parse_fraction)
    _millis = field_validator("latency_budget_ms", mode="before")(parse_millis)


class AutoOptions(StrictModel):
    """Try candidate recipes, keep the fastest that meets the accuracy budget."""

    candidates: list[Literal["static_u8s8", "static_s8s8", "dynamic", "int4", "fp16"]] | None = (
        Field(
            None,
            description="Recipes to try (default: those that fit the model, the target and "
            "the calibration data available).",
        )
    )
    require_speedup: bool = Field(
        False,
        description="Fail (exit 4) when no candidate is faster than the parent; otherwise the "
        "parent is kept with a warning.",
    )
    warmup: int = Field(5, ge=0, description="Warm-up runs per candidate.")
    runs: int = Field(30, ge=1, description="Timed runs per candidate per trial.")
    trials: int = Field(2, ge=1, description="Trials, each with fresh sessions.")


class QuantizeStep(GuardedStep):
    """INT8 dynamic/static, fp16 or int4 weight-only quantization, verified against a budget."""

    type: Literal["quantize"] = Field(description="Step type.")
    mode: Literal["dynamic", "static", "fp16", "int4", "auto"] = Field(
        description="Quantization mode; auto tries candidate recipes and keeps the fastest "
        "within the accuracy budget."
    )
    op_types_to_quantize: list[str] | None = Field(
        None,
        description="Op types to quantize (dynamic default: MatMul, Gemm, Attention, LSTM, "
        "GRU: dynamic Conv measured 5x slower).",
    )
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="Node names left in float."
    )
    dynamic: DynamicOptions = Field(default_factory=DynamicOptions, description="dynamic mode.")
    static: StaticOptions = Field(default_factory=StaticOptions, description="static mode.")
    fp16: Fp16Options = Field(default_factory=Fp16Options, description="fp16 mode.")
    int4: Int4Options = Field(default_factory=Int4Options, description="int4 mode.")
    auto: AutoOptions = Field(default_factory=AutoOptions, description="auto mode.")
    diagnose: bool = Field(
        False,
        description="When the budget fails (int8 modes): rank nodes by the error quantizing "
        "them adds, exclude the most sensitive ones group by group until the budget holds, "
        "and report the exclusion list.",
    )
    diagnose_group: int = Field(1, ge=1, description="Nodes excluded per diagnosis round.")
    diagnose_max_excluded: int = Field(
        16, ge=1, description="Give up after excluding this many nodes."
    )
    measure_speed: bool = Field(
        True,
        description="Time the result against its parent on the target (interleaved); false "
        "also turns the default speed guard off.",
    )


class PruneStep(GuardedStep):
    """Structured channel pruning or unstructured magnitude pruning on the ONNX graph."""

    type: Literal["prune"] = Field(description="Step type.")
    method: Literal["channel", "magnitude"] = Field(
        "channel",
        description="channel: remove whole channels (smaller, faster dense model); magnitude: "
        "zero the smallest weights (smaller when compressed, not faster on dense kernels).",
    )
    ratio: float | Literal["auto"] = Field(
        0.5,
        description="Fraction of channels / weights to remove, or 'auto': the largest ratio "
        "(binary search up to auto_max_ratio) that stays within the tolerance budget.",
    )
    layer_ratios: dict[str, float] = Field(
        default_factory=dict,
        description="channel: ratio per group by producer-name pattern (fnmatch), e.g. "
        "{'layers.3.*': 0.7}; the first pattern matching a producer of the group wins.",
    )
    measure_speed: bool = Field(
        True,
        description="Time the result against its parent on the target (interleaved); false "
        "also turns the default speed guard off.",
    )
    auto_max_ratio: float = Field(0.9, gt=0, lt=1, description="Upper end of the auto search.")
    auto_steps: int = Field(6, ge=1, le=20, description="Bisection steps of the auto search.")
    criterion: Literal["l1", "l2", "activation"] = Field(
        "l1",
        description="Channel importance: L1/L2 norm of the group's weights, or 'activation': "
        "mean absolute activation of its channels on the verification inputs.",
    )
    compensate: bool = Field(
        False,
        description="Fold the mean contribution of removed channels (measured on the "
        "verification inputs) into the next layer's bias (Conv and Gemm consumers).",
    )
    round_to: int = Field(1, ge=1, description="Keep a multiple of this many channels (8, 16).")
    min_channels: int = Field(1, ge=1, description="Keep at least this many channels per group.")
    ignore: list[str] = Field(
        default_factory=list, description="Producer node names whose groups are left alone."
    )
    scope: Literal["global", "layer"] = Field(
        "global", description="magnitude: one threshold for all layers, or one per layer."
    )
    pattern: str | None = Field(
        None, description="magnitude: N:M structured sparsity such as '2:4' instead of ratio."
    )

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 <= value < 1:
            raise ValueError(f"ratio must be in [0, 1) or 'auto', found {value}")
        return value

    @field_validator("layer_ratios")
    @classmethod
    def _layer_ratios(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"layer ratios must be in [0, 1), found {bad}")
        return value

    @model_validator(mode="after")
    def _auto_needs_budget(self) -> PruneStep:
        t = self.tolerance
        if self.ratio == "auto" and t.min_cosine is None and t.min_top1_agreement is None:
            raise ValueError(
                "ratio 'auto' needs a budget: tolerance.min_cosine or min_top1_agreement"
            )
        return self

    @field_validator("pattern")
    @classmethod
    def _n_m(cls, value: str | None) -> str | None:
        if value is None:
            return value
        n, sep, m = value.partition(":")
        if not (sep and n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            raise ValueError(f"expected N:M such as '2:4', found {value!r}")
        return value


class PackageStep(StepBase):
    """ONNX Runtime's ORT format for ORT Mobile / minimal builds, with its operator config."""

    type: Literal["package"] = Field(description="Step type.")
    target_platform: Literal["arm", "amd64"] = Field(
        "arm",
        description="arm: portable (no x86-only layout rewrites, int8 QDQ kept for ARM "
        "kernels); amd64: may use x86-specific NCHWc layouts.",
    )
    optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="Graph optimizations applied before saving the .ort file."
    )
    optimization_style: Literal["fixed", "runtime"] = Field(
        "fixed",
        description="fixed: optimizations baked in; runtime: saved to replay at load time "
        "(needs session.enable_saved_runtime_optimizations=1 on the device).",
    )
    type_reduction: bool = Field(
        False,
        description="Write required_operators_and_types.config (per-op types too) for an "
        "even smaller minimal build.",
    )


Step = Annotated[
    ExportStep | SimplifyStep | BenchStep | QuantizeStep | PruneStep | PackageStep,
    Field(discriminator="type"),
]

_STEP_TYPES = ("export", "simplify", "bench", "quantize", "prune", "package")

#: Step types that exist in the roadmap but not yet in this release.
PLANNED_STEPS: dict[str, int] = {}


class PipelineConfig(StrictModel):
    """A whole pipeline: model source, inputs, target, output folder and ordered steps."""

    version: Literal[1] = Field(1, description="Config format version.")
    name: str = Field("pipeline", description="Pipeline name shown in reports.")
    model: ModelSource = Field(description="The model: {path: x.onnx} or {factory: mod:fn}.")
    inputs: list[InputSpec] | None = Field(
        None,
        description="Input specs. Required for a PyTorch factory; read from the graph for ONNX.",
    )
    dims: dict[str, int] = Field(
        default_factory=dict,
        description="Values of symbolic dims for the verification inputs, e.g. {batch: 2}.",
    )
    target: Target = Field(default_factory=Target, description="Execution provider settings.")
    output_dir: str = Field("out", description="Folder for artifacts, inputs.npz and manifest.")
    external_data: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Store weights in a separate .data file: auto (only over 2 GB), always, never.",
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Verification.")
    steps: list[Step] = Field(min_length=1, description="Ordered steps.")

    @model_validator(mode="after")
    def _coherent(self) -> PipelineConfig:
        kinds = [s.type for s in self.steps]
        if self.model.is_pytorch:
            if kinds[0] != "export":
                raise ValueError(
                    "the model is a PyTorch factory or Hugging Face folder, so the first step "
                    "must be 'export'"
                )
            if self.inputs is None and self.model.factory is not None:
                raise ValueError("a PyTorch factory needs an 'inputs' list (names and shapes)")
        if kinds.count("export") > (1 if self.model.is_pytorch else 0):
            raise ValueError(
                "'export' may appear once, as the first step, and only for a PyTorch factory "
                "or Hugging Face folder"
            )
        if kinds.count("quantize") > 1:
            raise ValueError(
                "'quantize' appears more than once; quantizing an already quantized model "
                "stacks precision losses. Use one step (mode: auto tries several recipes)"
            )
        if "package" in kinds:
            later = [k for k in kinds[kinds.index("package") + 1 :] if k != "bench"]
            if later:
                raise ValueError(
                    f"'package' writes the deployable .ort file, so it must come after every "
                    f"step that changes the model; found {later} after it"
                )
        for i, step in enumerate(self.steps):
            if step.guard is not None and step.type in ("export", "bench", "package"):
                raise ValueError(
                    f"steps[{i}]: 'guard' compares an artifact with its ONNX parent; "
                    f"a {step.type} step cannot carry one"
                )
        names = [i.name for i in self.inputs or []]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, found {names}")
        return self


# ---------------------------------------------------------------- loading


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where or 'value'}: environment variable ${{{name}}} is not set",
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models that an annotation can hold (through Optional, list, dict, Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (Union, types.UnionType, list, dict, tuple):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    return []


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at the parent of ``loc`` (for 'did you mean' on unknown keys)."""
    models: list[type[BaseModel]] = [PipelineConfig]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        by_tag = [
            m
            for m in models
            if "type" in m.model_fields
            and typing.get_args(m.model_fields["type"].annotation) == (part,)
        ]
        if by_tag:
            models = by_tag
            continue
        nxt: list[type[BaseModel]] = []
        for m in models:
            if part in m.model_fields:
                nxt.extend(_models_in(m.model_fields[part].annotation))
        models = nxt
    return [name for m in models for name in m.model_fields]


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in _STEP_TYPES and text.endswith("]"):
            continue  # discriminator tag inserted by pydantic
        else:
            text += f".{part}" if text else str(part)
    return text


def format_validation_error(err: ValidationError, source: str) -> ConfigError:
    """Turn a pydantic error into one clear ConfigError line."""
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    where = _loc_text(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(loc)
        msg = f"{where}: unknown key{did_you_mean(key, valid)}"
        if not did_you_mean(key, valid):
            msg += f" (valid keys: {', '.join(sorted(valid))})"
    elif first["type"] == "missing":
        msg = f"{where}: required field is missing"
    else:
        found = first.get("input")
        shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
        msg = f"{where}: {first['msg']} (found {shown[:80]})"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return ConfigError(f"{source}: {msg}{more}")


def _check_step_types(data: dict[str, Any], source: str) -> None:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return
    known = list(_STEP_TYPES)
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise ConfigError(
                f"{source}: steps[{i}]: expected a mapping like {{type: simplify}}, "
                f"found {type(step).__name__}"
            )
        kind = step.get("type")
        if kind is None:
            raise ConfigError(
                f"{source}: steps[{i}]: missing 'type'",
                hint=f"one of: {', '.join(known)}",
            )
        if kind in PLANNED_STEPS:
            raise ConfigError(
                f"{source}: steps[{i}]: step type '{kind}' is not available yet in this release "
                f"(planned, issue {PLANNED_STEPS[kind]})",
                hint=f"available: {', '.join(known)}",
            )
        if kind not in known:
            raise ConfigError(
                f"{source}: steps[{i}].type: unknown step type {kind!r}"
                f"{did_you_mean(str(kind), known + list(PLANNED_STEPS))}",
                hint=f"available: {', '.join(known)}",
            )


def parse_config(data: Any, source: str = "config") -> PipelineConfig:
    """Validate a config mapping (already loaded from YAML or built in code).

    Args:
        data: the mapping.
        source: a name for error messages (the file path).

    Raises:
        ConfigError: on any problem, naming the field path.
    """
    if data is None:
        raise ConfigError(f"{source}: the file is empty", hint="see configs/quickstart.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, found {type(data).__name__}"
        )
    data = _expand_env(data, "")
    _check_step_types(data, source)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, source) from None


def load_config(path: str | Path) -> tuple[PipelineConfig, Path]:
    """Read and validate a pipeline YAML file.

    Returns:
        The config and the folder that relative paths in it are resolved against.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"pipeline file not found: {file}",
            hint="pass the path of a YAML pipeline, e.g. configs/quickstart.yaml",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: cannot read the file as UTF-8 text ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{file}: YAML syntax error{where}: {problem}") from None
    return parse_config(data, str(file)), file.resolve().parent


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline file."""
    return PipelineConfig.model_json_schema()
