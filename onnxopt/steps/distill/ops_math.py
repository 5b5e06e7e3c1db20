"""Element-wise operators, activations and reductions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from onnxopt.steps.distill.optable import DTYPES, OPS, Op, Tensor, Unsupported, axes_of, ints, op


def _one(fn: Callable[[Tensor], Tensor]) -> Op:
    return lambda i, a, o: fn(i[0])


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "Softsign": F.softsign,
    "Softplus": F.softplus,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    OPS[_name] = _one(_fn)


@op("Dropout")
def _dropout(i: list[Any], a: dict[str, Any], o: int) -> Any:
    return i[0], torch.ones_like(i[0], dtype=torch.bool)


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    return lambda i, a, o: fn(i[0], i[1])


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": lambda x, y: torch.pow(x, y.to(x.dtype) if y.is_floating_point() else y),
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "MatMul": torch.matmul,
}
for _name, _fn2 in _BINARY.items():
    OPS[_name] = _binary(_fn2)


@op("Div")
def _div(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, y = i
    if x.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


@op("Mod")
def _mod(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return torch.fmod(i[0], i[1]) if a.get("fmod", 0) else torch.remainder(i[0], i[1])


def _reduce_many(fn: Callable[[Tensor, Tensor], Tensor], mean: bool = False) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
        out = i[0]
        for t in i[1:]:
            out = fn(out, t)
        return out / len(i) if mean else out

    return run


OPS["Max"] = _reduce_many(torch.maximum)
OPS["Min"] = _reduce_many(torch.minimum)
OPS["Sum"] = _reduce_many(torch.add)
OPS["Mean"] = _reduce_many(torch.add, mean=True)


@op("LeakyRelu")
def _leaky(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return F.leaky_relu(i[0], a.get("alpha", 0.01))


@op("Elu")
def _elu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return F.elu(i[0], a.get("alpha", 1.0))


@op("Celu")
def _celu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return F.celu(i[0], a.get("alpha", 1.0))


@op("Selu")
def _selu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232)
    x = i[0]
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("HardSigmoid")
def _hard_sigmoid(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1)


@op("Gelu")
def _gelu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return F.gelu(i[0], approximate=a.get("approximate", "none"))


@op("PRelu")
def _prelu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, slope = i
    return torch.where(x >= 0, x, x * slope)


@op("ThresholdedRelu")
def _thresholded(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    return torch.where(x > a.get("alpha", 1.0), x, torch.zeros_like(x))


@op("Clip")
def _clip(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    low = i[1] if len(i) > 1 and i[1] is not None else a.get("min")
    high = i[2] if len(i) > 2 and i[2] is not None else a.get("max")
    if isinstance(low, Tensor):
        low = low.item()
    if isinstance(high, Tensor):
        high = high.item()
    return torch.clamp(x, low, high)


@op("Where")
def _where(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return torch.where(i[0].bool(), i[1], i[2])


@op("Cast")
def _cast(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    to = a["to"]
    if to not in DTYPES:
        raise Unsupported(f"Cast to element type {to}")
    return i[0].to(DTYPES[to])


@op("CastLike")
def _cast_like(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return i[0].to(i[1].dtype)


# -- reductions -------------------------------------------------------------------------------


def _reduce(kind: str) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
        x = i[0]
        axes = axes_of(i, a, 1)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(ax % x.dim() for ax in axes) if x.dim() else ()
        if kind == "ReduceMean":
            return x.mean(dim=dims, keepdim=keep)
        if kind == "ReduceSum":
            return x.sum(dim=dims, keepdim=keep)
        if kind == "ReduceMax":
            return torch.amax(x, dim=dims, keepdim=keep)
        if kind == "ReduceMin":
            return torch.amin(x, dim=dims, keepdim=keep)
        if kind == "ReduceProd":
            out = x
            for d in sorted(dims, reverse=True):
                out = out.prod(dim=d, keepdim=keep)
            return out
        if kind == "ReduceSumSquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        if kind == "ReduceL2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if kind == "ReduceL1":
            return x.abs().sum(dim=dims, keepdim=keep)
        if kind == "ReduceLogSumExp":
            return torch.logsumexp(x, dim=dims, keepdim=keep)
        raise Unsupported(kind)

    return run


for _kind in (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceL1",
    "ReduceLogSumExp",
):
    OPS[_kind] = _reduce(_kind)


def _argfn(largest: bool) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
        x = i[0]
        axis = a.get("axis", 0)
        keep = bool(a.get("keepdims", 1))
        if a.get("select_last_index", 0):
            flipped = x.flip(axis)
            idx = (flipped.argmax if largest else flipped.argmin)(dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - idx
        return (x.argmax if largest else x.argmin)(dim=axis, keepdim=keep)

    return run


OPS["ArgMax"] = _argfn(True)
OPS["ArgMin"] = _argfn(False)


@op("TopK")
def _topk(i: list[Any], a: dict[str, Any], o: int) -> Any:
    k = ints(i[1])[0]
    values, indices = torch.topk(
        i[0],
        k,
        dim=a.get("axis", -1),
        largest=bool(a.get("largest", 1)),
        sorted=bool(a.get("sorted", 1)),
    )
    return values, indices


@op("CumSum")
def _cumsum(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, axis = i[0], ints(i[1])[0]
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = torch.cumsum(x, dim=axis)
    if a.get("exclusive", 0):
        y = y - x
    return y.flip(axis) if a.get("reverse", 0) else y
