"""Configuration of the quantize step: its modes' options, calibration data and auto."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from onnxopt.config.base import StrictModel, TimedStep, UserCode, UserPath
from onnxopt.config.data import ImagePreprocessing

#: the recipes quantize ``auto`` knows (onnxopt.steps.quantize's backends define them)
RecipeName = Literal[
    "static_u8s8_compute",
    "static_u8s8",
    "static_s8s8_compute",
    "static_s8s8",
    "static_u8s8_compute_7bit",
    "static_u8u8_compute",
    "dynamic",
    "dynamic_no_rnn",
    "dynamic_fused",
    "dynamic_7bit",
    "dynamic_u8u8",
    "dynamic_fused_7bit",
    "int4",
    "fp16",
]

REDUCE_RANGE = (
    "7-bit weights. Default (null): on when the target is this CPU and ONNX Runtime's U8S8 "
    "kernel saturates here (measured at run time: x86-64 without VNNI/AMX adds two u8*s8 "
    "products in 16 bits), off otherwise and with uint8 weights (U8U8 does not saturate)."
)


class CalibrationConfig(StrictModel):
    """Where calibration samples come from (kept apart from the verification inputs)."""

    source: Literal["synthetic", "npz", "images", "callable"] = Field(
        "synthetic",
        description="synthetic: generated from the inputs spec (needs "
        "allow_synthetic_calibration); npz: an .npz file or a folder of .npz files; images: "
        "a folder of images with 'preprocessing'; callable: 'module:function' or "
        "'file.py:function' returning an iterable of input dicts (runs that code).",
    )
    path: UserPath | None = Field(
        None,
        description="npz: a file whose arrays are [samples, *input shape] (or one sample), "
        "or a folder of .npz files, one sample each; images: a folder of images.",
    )
    callable: UserCode | None = Field(None, description="For source callable: the function.")
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
    reduce_range: bool | None = Field(None, description=REDUCE_RANGE)
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
    reduce_range: bool | None = Field(None, description=REDUCE_RANGE)
    fuse: bool = Field(
        False,
        description="First fuse the transformer subgraphs (LayerNorm, GELU, attention) with "
        "onnxruntime.transformers (model_type bert, heads and width inferred): the auto recipe "
        "dynamic_fused.",
    )


class AutoOptions(StrictModel):
    """Try candidate recipes, keep the fastest that meets the accuracy budget."""

    candidates: list[RecipeName] | None = Field(
        None,
        description="Recipes to try (default: those that fit the model, the target and "
        "the calibration data available).",
    )
    require_speedup: bool = Field(
        False,
        description="Fail (exit 4) when no candidate is faster than the parent; otherwise the "
        "parent is kept with a warning.",
    )
    warmup: int = Field(5, ge=0, description="Warm-up runs per candidate.")
    runs: int = Field(30, ge=1, description="Timed runs per candidate per trial.")
    trials: int = Field(2, ge=1, description="Trials, each with fresh sessions.")
    rescue: bool = Field(
        True,
        description="With your data: an int8 candidate that misses the budget is diagnosed "
        "(its most sensitive nodes left in float, bounded by rescue_seconds and "
        "rescue_max_excluded) and the repaired candidate competes beside the plain ones.",
    )
    rescue_seconds: float = Field(
        300.0, gt=0, description="Time for rescuing candidates, all of them together."
    )
    rescue_max_excluded: int = Field(
        16, ge=1, description="Nodes a rescue may leave in float at most."
    )


class QuantizeStep(TimedStep):
    """INT8 dynamic/static, fp16 or int4 weight-only quantization, verified against a budget."""

    def input_files(self) -> list[str]:
        """The calibration data, when it is a file or folder of the user's."""
        path = self.static.calibration.path
        return [path] if path and self.static.calibration.source != "synthetic" else []

    def data_source(self) -> Any:
        """The calibration data, unless synthetic: it serves as the run's data too."""
        calibration = self.static.calibration
        return calibration if calibration.source != "synthetic" else None

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

    @model_validator(mode="after")
    def _one_mode(self) -> QuantizeStep:
        """Another mode's options are a mistake (auto may read every section)."""
        if self.mode == "auto":
            return self
        stray = [
            f"{section}.{key}"
            for section in MODE_SECTIONS
            if section != self.mode and section in self.model_fields_set
            for key in getattr(self, section).model_dump(exclude_defaults=True)
        ]
        if stray:
            raise ValueError(
                f"mode {self.mode} does not read {', '.join(stray)}: drop them, or choose "
                "the mode they belong to"
            )
        return self


#: the sections of QuantizeStep that belong to one mode each
MODE_SECTIONS = ("dynamic", "static", "fp16", "int4", "auto")
