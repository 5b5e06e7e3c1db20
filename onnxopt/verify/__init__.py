"""Verification: the shared input set, output comparison, and the verdict on an artifact.

Functions take ``(path, InputSet, target)``; none knows about pipelines or the engine.
"""

from onnxopt.verify.check import (
    Reference,
    dynamic_axes,
    outputs_on,
    pinned_dims,
    reference_outputs,
    symbolic_axes,
    verify_against_parent,
    verify_model,
)
from onnxopt.verify.compare import (
    Tol,
    Verification,
    compare_outputs,
    cosine,
    failure_text,
    min_cosine,
    resolve_tolerance,
)
from onnxopt.verify.fit import Fit, fit_inputs, fit_ranges, fit_second_dims, trials
from onnxopt.verify.inputs import (
    DEFAULT_DIM,
    Inputs,
    InputSet,
    check_inputs_fit,
    concrete_shape,
    inputs_digest,
    load_inputs,
    make_inputs,
    resolve_dims,
    save_inputs,
    second_dims,
    specs_from_model,
    symbolic_dims,
)

__all__ = [
    "DEFAULT_DIM",
    "InputSet",
    "Fit",
    "Inputs",
    "Reference",
    "Tol",
    "Verification",
    "check_inputs_fit",
    "compare_outputs",
    "concrete_shape",
    "cosine",
    "dynamic_axes",
    "failure_text",
    "fit_inputs",
    "fit_ranges",
    "fit_second_dims",
    "inputs_digest",
    "load_inputs",
    "make_inputs",
    "min_cosine",
    "outputs_on",
    "pinned_dims",
    "reference_outputs",
    "resolve_dims",
    "resolve_tolerance",
    "save_inputs",
    "second_dims",
    "specs_from_model",
    "symbolic_axes",
    "symbolic_dims",
    "trials",
    "verify_against_parent",
    "verify_model",
]
