"""Configuration of the export, simplify, bench, prune and package steps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from onnxopt.config.base import (
    GuardedStep,
    StepBase,
    StrictModel,
    TimedStep,
    UserPath,
    parse_fraction,
    parse_millis,
)


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
    fallback: Literal["ort_basic", "none"] = Field(
        "ort_basic",
        description="When onnxsim fails on a model (a known failure: 'Nodes in a graph must be "
        "topologically sorted' on If bodies reading outer values): ort_basic simplifies with "
        "ONNX Runtime's basic level instead (portable to every provider; recorded in the "
        "report and warned); none fails the step.",
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

    def input_files(self) -> list[str]:
        """The stored baseline report."""
        return [self.baseline] if self.baseline else []

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
        None,
        description="Requests in flight, e.g. [1, 2, 4]: on one shared session (threads, "
        "async), or the number of worker processes (processes).",
    )
    concurrency_mode: Literal["threads", "async", "processes", "both", "all"] = Field(
        "both",
        description="threads: a thread pool over one session; async: run_async callbacks; "
        "processes: worker processes with a session each, fed from one request queue "
        "(start-up reported apart); both: threads and async; all: the three.",
    )
    concurrency_requests: int | None = Field(
        None, ge=1, description="Requests per concurrency measurement (default: runs)."
    )
    concurrency_seconds: float | None = Field(
        None,
        gt=0,
        description="processes: serve for this long instead of a number of requests.",
    )
    process_threads: int | None = Field(
        None,
        ge=1,
        description="processes: intra-op threads per worker (default: the target's, else "
        "cores / processes); spinning is off.",
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
    baseline: UserPath | None = Field(None, description="A stored bench report JSON to compare to.")
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
    plan: bool = Field(
        False,
        description="Search a serving configuration (one session at each thread count, two "
        "requests in flight, N processes; every batch size) for the most throughput whose "
        "per-request percentile (batching delay included) meets latency_budget_ms; the plan, "
        "runner-up and table go into the report; no configuration within it: exit 4.",
    )
    plan_seconds: float = Field(
        120.0, gt=0, description="Time budget of the plan's search; it stops there."
    )

    _fraction = field_validator("max_regression", mode="before")(parse_fraction)
    _millis = field_validator("latency_budget_ms", mode="before")(parse_millis)

    @model_validator(mode="after")
    def _plan_needs_budget(self) -> BenchStep:
        if self.plan and self.latency_budget_ms is None:
            raise ValueError("plan needs latency_budget_ms (--latency-budget), e.g. '20ms'")
        return self


class PruneStep(TimedStep):
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

    macs_target: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="channel: remove this share of the model's MACs (0.3: 30%), spent where "
        "it costs least: each group's output change when pruned alone is measured on the "
        "calibration data at sensitivity_ratios, and per-group ratios are allocated (ratio "
        "and layer_ratios are then not used).",
    )
    sensitivity_ratios: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        description="macs_target: the ratios each group's sensitivity is measured at; the "
        "largest is the most any group loses.",
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

    @field_validator("sensitivity_ratios")
    @classmethod
    def _sensitivity(cls, value: list[float]) -> list[float]:
        bad = [v for v in value if not 0 < v < 1]
        if bad or not value:
            raise ValueError(f"sensitivity ratios must be in (0, 1), found {bad or value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _target_is_channel_pruning(self) -> PruneStep:
        if self.macs_target is not None and (self.method != "channel" or self.ratio == "auto"):
            raise ValueError(
                "macs_target allocates channel pruning: use it with method channel and without "
                "ratio auto"
            )
        return self

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
