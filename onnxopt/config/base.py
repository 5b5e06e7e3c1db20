"""Configuration building blocks: strict models, inputs, model source, target, tolerances,
verification settings, the speed guard and the fields every step has.

Every field carries a description, so ``onnxopt schema`` and editors describe themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    ValidationInfo,
    field_validator,
    model_validator,
)


def resolve_user_path(value: str, base_dir: Path | str | None) -> str:
    """A user's path made absolute the one way onnxopt does it: ``~`` expanded, then joined
    to ``base_dir`` (the pipeline file's folder; the working folder for the command line and
    the API) unless already absolute. Without a ``base_dir`` only ``~`` is expanded."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return str(path)


def is_file_target(target: str) -> bool:
    """Whether the module part of a ``module:function`` spec names a file (``x/y.py``)."""
    return target.endswith(".py") or "/" in target or "\\" in target or target.startswith("~")


def _base_dir(info: ValidationInfo) -> Any:
    return (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None


def _path_in(value: str, info: ValidationInfo) -> str:
    return resolve_user_path(value, _base_dir(info))


def _code_in(value: str, info: ValidationInfo) -> str:
    target, sep, func = value.rpartition(":")
    if not sep or not is_file_target(target):
        return value  # package.module:function: imported by name, no path to resolve
    return f"{resolve_user_path(target, _base_dir(info))}:{func}"


def _relative(path: str, info: SerializationInfo) -> str:
    """``path`` relative to ``context['relative_to']`` when it lies below it, else as is
    (cache keys: the same project checked out in another folder keeps its keys)."""
    root = info.context.get("relative_to") if isinstance(info.context, dict) else None
    if root is None:
        return path
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _code_out(value: str, info: SerializationInfo) -> str:
    target, sep, func = value.rpartition(":")
    if not sep or not is_file_target(target):
        return value
    return f"{_relative(target, info)}:{func}"


#: a file or folder the user names: absolute once the config is loaded (see resolve_user_path)
UserPath = Annotated[str, AfterValidator(_path_in), PlainSerializer(_relative, when_used="always")]
#: 'package.module:function' or 'path/to/file.py:function': a file's path is resolved like
#: a UserPath, a module is imported by name
UserCode = Annotated[str, AfterValidator(_code_in), PlainSerializer(_code_out, when_used="always")]


def _model_path_in(value: str, info: ValidationInfo) -> str:
    is_path = value.endswith(".onnx") or "/" in value or value.startswith("~")
    return _path_in(value, info) if is_path else value


#: an .onnx path (resolved like a UserPath) or a name (a step's, 'source'), kept as is
ModelRef = Annotated[
    str, AfterValidator(_model_path_in), PlainSerializer(_relative, when_used="always")
]


DType = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class InputSpec(StrictModel):
    """One model input: its name, shape (ints or symbolic dim names), dtype and value range."""

    name: str = Field(
        description="Input name, as in the ONNX graph / the forward() argument order."
    )
    shape: list[int | str] = Field(
        default_factory=list,
        description="Dimensions: integers, or names such as 'batch' for symbolic (dynamic) dims. "
        "Required for a PyTorch factory; for an ONNX model, leave it out to keep the graph's.",
    )
    dtype: DType = Field("float32", description="Element type of the input tensor.")
    range: tuple[float, float] | None = Field(
        None,
        description="[low, high] of generated values (uniform; ints: low..high-1; a single "
        "value: [v, v]). Default: within the table an integer input indexes, ones for masks, "
        "else standard normal for floats and [0, 8) for integers.",
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

    path: UserPath | None = Field(None, description="An existing .onnx file to start from.")
    factory: UserCode | None = Field(
        None,
        description="PyTorch factory 'package.module:function' or 'path/to/file.py:function' "
        "returning an nn.Module. Note: this runs that Python code.",
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    weights: UserPath | None = Field(
        None,
        description="Optional state_dict for the factory's module: .pt/.pth (loaded with "
        "weights_only=True) or .safetensors.",
    )
    huggingface: UserPath | None = Field(
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
        "(rank 2, more than one class). Class-score outputs are judged by the agreement "
        "expected on unseen inputs, (kept + 1) / (samples + 2): with 64 held-out samples "
        "one changed label misses 0.98.",
    )
    max_slice_error: float | None = Field(
        None,
        gt=0,
        description="Largest relative error ||candidate - reference|| / ||reference|| of any "
        "slice of an output along its small axes (<= 128 entries past the first), e.g. one "
        "class row of a detector's boxes-and-scores output (default: 2 * sqrt(2 * (1 - "
        "min_cosine)); judged where no atol/rtol is checked).",
    )
    max_score_change: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Class-score outputs (a Softmax, or logits a Softmax reads): the largest "
        "mean change of the reference's top class probability (default 0.1); they are judged "
        "by it and top-1 agreement (min_top1_agreement, default 0.98) instead of the cosine.",
    )
    max_decision_flips: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Decision outputs (a Sigmoid): the largest share of decisions at 0.5 that "
        "may flip (default 0.001); they are judged by it instead of the cosine.",
    )
    outputs: list[str] | None = Field(
        None,
        min_length=1,
        description="The outputs the budget judges (default: all), e.g. the speech output of "
        "a recurrent model and not its hidden state; every output's figures are recorded.",
    )


class VerifyConfig(StrictModel):
    """How every artifact is checked against its parent."""

    seed: int = Field(0, description="Seed of the generated shared input set.")
    inputs_file: UserPath | None = Field(
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


def parse_fraction(value: Any) -> Any:
    """'10%' -> 0.1; numbers pass through."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"expected a fraction such as 0.1 or '10%', found {value!r}") from None
    return value


def parse_duration(value: Any, units: tuple[tuple[str, float], ...], example: str) -> Any:
    """A number, or a string of a number and one of ``units`` (suffix, scale: checked in
    order, so 'ms' before 's'), in the unit whose scale is 1."""
    if isinstance(value, str):
        text = value.strip().lower()
        for unit, scale in units:
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * scale
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a duration such as {example!r}, found {value!r}") from None
    return value


def parse_millis(value: Any) -> Any:
    """'15ms' -> 15.0, '1.5s' -> 1500.0, '200us' -> 0.2; numbers are milliseconds."""
    return parse_duration(value, (("ms", 1.0), ("us", 1e-3), ("s", 1000.0)), "15ms")


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
    """Fields common to every step. Each step's class adds ``type: Literal["<name>"]``."""

    if TYPE_CHECKING:
        type: str

    def measure_speed_requested(self) -> bool:
        """Whether the artifact is to be timed against its parent without a guard."""
        return False

    def input_files(self) -> list[str]:
        """The user's files this step reads, beyond the pipeline's (calibration data, a
        baseline, a teacher): the run keeps them read-only and never writes over them."""
        return []

    def data_source(self) -> Any:
        """The user's samples this step brings (a quantize step's calibration data), which
        serve as the run's data when it has none of its own; None for most steps."""
        return None

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


class TimedStep(GuardedStep):
    """A speed-guarded step that is also timed against its parent when unguarded."""

    measure_speed: bool = Field(
        True,
        description="Time the result against its parent on the target (interleaved); false "
        "also turns the default speed guard off.",
    )

    def measure_speed_requested(self) -> bool:
        """Whether the artifact is to be timed against its parent without a guard."""
        return self.measure_speed
