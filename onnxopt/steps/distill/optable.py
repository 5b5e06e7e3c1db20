"""The operator table of :mod:`onnxopt.steps.distill.ops`, and the helpers its entries share."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Tensor = torch.Tensor
Op = Callable[[list[Any], dict[str, Any], int], Any]

#: ONNX TensorProto element type -> torch dtype
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}

OPS: dict[str, Op] = {}


class Unsupported(Exception):
    """An operator (or an attribute value of one) the interpreter does not implement."""


def op(*names: str) -> Callable[[Op], Op]:
    """Register a function for one or more operator types."""

    def add(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return add


def ints(t: Tensor | Sequence[int] | None) -> list[int]:
    """A 1-D int tensor (shape arithmetic) as Python ints."""
    if t is None:
        return []
    if isinstance(t, Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def axes_of(inputs: list[Any], attrs: dict[str, Any], index: int) -> list[int] | None:
    """Axes from the input at ``index`` (newer opsets) or the ``axes`` attribute."""
    if len(inputs) > index and inputs[index] is not None:
        return ints(inputs[index])
    if "axes" in attrs:
        return list(attrs["axes"])
    return None
