"""Pipeline configuration: strict, frozen pydantic models and the YAML loader.

``base`` holds the building blocks every step shares, ``steps`` and ``quantize`` the
config class of each step, ``pipeline`` the pipeline file (its step types come from
:mod:`onnxopt.registry`) with its loader and error messages.
"""

from onnxopt.config.base import (
    DType,
    Guard,
    GuardedStep,
    InputSpec,
    ModelSource,
    StepBase,
    StrictModel,
    Target,
    TimedStep,
    Tolerance,
    VerifyConfig,
    parse_fraction,
    parse_millis,
)
from onnxopt.config.data import DataConfig, EvaluateConfig, ImagePreprocessing, TaskBudget
from onnxopt.config.distill import DistillStep, StudentSource
from onnxopt.config.optimize import OptimizeStep, SearchTiming
from onnxopt.config.pipeline import (
    PipelineConfig,
    Step,
    config_error,
    format_validation_error,
    json_schema,
    load_config,
    parse_config,
    resolve_paths,
)
from onnxopt.config.quantize import (
    AutoOptions,
    CalibrationConfig,
    DynamicOptions,
    Fp16Options,
    Int4Options,
    QuantizeStep,
    StaticOptions,
)
from onnxopt.config.steps import (
    BenchStep,
    ExportStep,
    OnnxsimOptions,
    OrtOptions,
    PackageStep,
    PruneStep,
    SessionSettings,
    SimplifyBackend,
    SimplifyStep,
    TransformersOptions,
)

__all__ = [
    "OptimizeStep",
    "SearchTiming",
    "AutoOptions",
    "BenchStep",
    "CalibrationConfig",
    "DType",
    "DataConfig",
    "DistillStep",
    "EvaluateConfig",
    "DynamicOptions",
    "ExportStep",
    "Fp16Options",
    "Guard",
    "GuardedStep",
    "ImagePreprocessing",
    "InputSpec",
    "Int4Options",
    "ModelSource",
    "OnnxsimOptions",
    "OrtOptions",
    "PackageStep",
    "PipelineConfig",
    "PruneStep",
    "QuantizeStep",
    "SessionSettings",
    "SimplifyBackend",
    "SimplifyStep",
    "StaticOptions",
    "Step",
    "StepBase",
    "StudentSource",
    "StrictModel",
    "TaskBudget",
    "Target",
    "TimedStep",
    "Tolerance",
    "TransformersOptions",
    "VerifyConfig",
    "config_error",
    "format_validation_error",
    "json_schema",
    "load_config",
    "parse_config",
    "resolve_paths",
    "parse_fraction",
    "parse_millis",
]
