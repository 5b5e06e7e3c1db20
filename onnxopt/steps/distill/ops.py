"""ONNX operators as torch functions, for :mod:`onnxopt.steps.distill.torch_graph`.

Each entry of :data:`OPS` takes the node's inputs (torch tensors, ``None`` for an omitted
optional input), its attributes (a dict) and the model's opset, and returns its outputs. The
set covers what exporters emit for CNNs and transformer encoders (PyTorch's TorchScript and
dynamo exporters, tf2onnx, Paddle): convolutions, pooling, normalizations, element-wise
math, shape arithmetic, indexing and resizing. What is missing makes the conversion fail
before any training, naming the operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

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


def _axes(inputs: list[Any], attrs: dict[str, Any], index: int) -> list[int] | None:
    """Axes from the input at ``index`` (newer opsets) or the ``axes`` attribute."""
    if len(inputs) > index and inputs[index] is not None:
        return ints(inputs[index])
    if "axes" in attrs:
        return list(attrs["axes"])
    return None


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


# -- convolution, pooling, normalization ------------------------------------------------------


def _conv_fn(rank: int, transpose: bool = False) -> Callable[..., Tensor]:
    if transpose:
        return (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    return (F.conv1d, F.conv2d, F.conv3d)[rank - 1]


def _same_pads(
    size: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dil: Sequence[int],
    mode: str,
) -> list[int]:
    """ONNX ``pads`` (begins, then ends) for auto_pad SAME_UPPER / SAME_LOWER."""
    begins, ends = [], []
    for n, k, s, d in zip(size, kernel, strides, dil, strict=True):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if mode == "SAME_LOWER" else small)
        ends.append(small if mode == "SAME_LOWER" else large)
    return begins + ends


def _pads(x: Tensor, a: dict[str, Any], kernel: Sequence[int]) -> list[int]:
    rank = len(kernel)
    strides = a.get("strides", [1] * rank)
    dil = a.get("dilations", [1] * rank)
    mode = a.get("auto_pad", "NOTSET")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dil, mode)
    if mode == "VALID":
        return [0] * (2 * rank)
    return list(a.get("pads", [0] * (2 * rank)))


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX begins+ends for the spatial axes -> F.pad's order (last axis first)."""
    rank = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(rank)):
        out += [pads[axis], pads[axis + rank]]
    return out


def _split_pads(pads: list[int]) -> tuple[list[int], list[int] | None]:
    """Symmetric padding for the op itself, or zeros and an explicit F.pad."""
    rank = len(pads) // 2
    if pads[:rank] == pads[rank:]:
        return pads[:rank], None
    return [0] * rank, pads


@op("Conv")
def _conv(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    kernel = list(w.shape[2:])
    rank = len(kernel)
    pads = _pads(x, a, kernel)
    padding, explicit = _split_pads(pads)
    if explicit is not None:
        x = F.pad(x, _torch_pad(explicit))
    return _conv_fn(rank)(
        x,
        w,
        b,
        stride=a.get("strides", [1] * rank),
        padding=padding,
        dilation=a.get("dilations", [1] * rank),
        groups=a.get("group", 1),
    )


@op("ConvTranspose")
def _conv_transpose(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, w = i[0], i[1]
    b = i[2] if len(i) > 2 else None
    kernel = list(w.shape[2:])
    rank = len(kernel)
    if "output_shape" in a or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise Unsupported("ConvTranspose with output_shape or auto_pad")
    pads = list(a.get("pads", [0] * (2 * rank)))
    extra = list(a.get("output_padding", [0] * rank))
    y = _conv_fn(rank, transpose=True)(
        x,
        w,
        b,
        stride=a.get("strides", [1] * rank),
        padding=0,
        output_padding=extra,
        dilation=a.get("dilations", [1] * rank),
        groups=a.get("group", 1),
    )
    index = [slice(None), slice(None)]
    for axis in range(rank):
        n = y.shape[2 + axis]
        index.append(slice(pads[axis], n - pads[axis + rank]))
    return y[tuple(index)]


def _pool_prepare(
    x: Tensor, a: dict[str, Any], fill: float
) -> tuple[Tensor, list[int], list[int], list[int]]:
    kernel = list(a["kernel_shape"])
    rank = len(kernel)
    pads = _pads(x, a, kernel)
    padding, explicit = _split_pads(pads)
    if explicit is None and any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        explicit, padding = pads, [0] * rank
    if explicit is not None:
        x = F.pad(x, _torch_pad(explicit), value=fill)
    return x, kernel, list(a.get("strides", [1] * rank)), padding


@op("MaxPool")
def _max_pool(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, kernel, strides, padding = _pool_prepare(i[0], a, -math.inf)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    return fn(  # type: ignore[operator]
        x,
        kernel,
        strides,
        padding,
        dilation=a.get("dilations", [1] * len(kernel)),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )


@op("AveragePool")
def _avg_pool(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    include = bool(a.get("count_include_pad", 0))
    x0 = i[0]
    kernel = list(a["kernel_shape"])
    pads = _pads(x0, a, kernel)
    padding, explicit = _split_pads(pads)
    if explicit is not None and not include:
        raise Unsupported("AveragePool with asymmetric pads and count_include_pad 0")
    x, kernel, strides, padding = _pool_prepare(x0, a, 0.0)
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(kernel) - 1]
    return fn(  # type: ignore[operator]
        x,
        kernel,
        strides,
        padding,
        ceil_mode=bool(a.get("ceil_mode", 0)),
        count_include_pad=include,
    )


@op("GlobalAveragePool")
def _gap(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


@op("BatchNormalization")
def _batch_norm(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, scale, bias, mean, var = i[:5]
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))


@op("InstanceNormalization")
def _instance_norm(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return F.instance_norm(i[0], weight=i[1], bias=i[2], eps=a.get("epsilon", 1e-5))


@op("LayerNormalization")
def _layer_norm(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, scale = i[0], i[1]
    bias = i[2] if len(i) > 2 else None
    axis = a.get("axis", -1) % x.dim()
    if a.get("stash_type", 1) != 1:
        raise Unsupported("LayerNormalization with stash_type other than float")
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + a.get("epsilon", 1e-5)) * scale
    return y + bias if bias is not None else y


@op("GroupNormalization")
def _group_norm(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, scale, bias = i
    groups = a["num_groups"]
    channels = x.shape[1]
    if scale.numel() == channels:  # opset 21: per channel
        return F.group_norm(x, groups, scale, bias, a.get("epsilon", 1e-5))
    y = F.group_norm(x, groups, None, None, a.get("epsilon", 1e-5))
    shape = [1, channels] + [1] * (x.dim() - 2)
    per = channels // groups
    return y * scale.repeat_interleave(per).reshape(shape) + bias.repeat_interleave(per).reshape(
        shape
    )


@op("Gemm")
def _gemm(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, w = i[0], i[1]
    c = i[2] if len(i) > 2 else None
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * c if c is not None else y


def _softmax_like(kind: str) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
        x = i[0]
        fn = torch.softmax if kind == "Softmax" else torch.log_softmax
        if o >= 13:
            return fn(x, dim=a.get("axis", -1))
        axis = a.get("axis", 1) % x.dim()
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(x.shape)

    return run


OPS["Softmax"] = _softmax_like("Softmax")
OPS["LogSoftmax"] = _softmax_like("LogSoftmax")


# -- reductions -------------------------------------------------------------------------------


def _reduce(kind: str) -> Op:
    def run(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
        x = i[0]
        axes = _axes(i, a, 1)
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


# -- shapes and indexing ----------------------------------------------------------------------


@op("Shape")
def _shape(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    dims = list(i[0].shape)
    start, end = a.get("start", 0), a.get("end")
    return torch.tensor(dims[start:end], dtype=torch.int64)


@op("Size")
def _size(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return torch.tensor(i[0].numel(), dtype=torch.int64)


@op("Reshape")
def _reshape(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, shape = i[0], ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def _flatten(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


@op("Transpose")
def _transpose(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    perm = a.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@op("Squeeze")
def _squeeze(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    axes = _axes(i, a, 1)
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Unsqueeze")
def _unsqueeze(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    axes = _axes(i, a, 1) or []
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return x


@op("Concat")
def _concat(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    parts = [t for t in i if t is not None and not (t.dim() == 1 and t.numel() == 0)]
    if not parts:
        return i[0]
    dtype = parts[0].dtype
    return torch.cat([p.to(dtype) for p in parts], dim=a["axis"])


@op("Split")
def _split(i: list[Any], a: dict[str, Any], o: int) -> Any:
    x = i[0]
    axis = a.get("axis", 0)
    sizes = ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if not sizes:
        n = a.get("num_outputs") or a["_outputs"]
        total = x.shape[axis]
        chunk = math.ceil(total / n)
        sizes = [min(chunk, total - k * chunk) for k in range(n)]
    return tuple(torch.split(x, list(sizes), dim=axis))


@op("Slice")
def _slice(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    if o < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(i[1]), ints(i[2])
        axes = ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
        steps = ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= x.dim()
        n = x.shape[axis]
        if step > 0:
            s = max(0, min(n, start + n if start < 0 else start))
            e = max(0, min(n, end + n if end < 0 else end))
            x = x.narrow(axis, s, max(e - s, 0))[(slice(None),) * axis + (slice(None, None, step),)]
        else:
            s = max(-1, min(n - 1, start + n if start < 0 else start))
            e = max(-1, min(n - 1, end + n if end < -1 else end)) if end >= -n else -1
            idx = torch.arange(s, e, step, dtype=torch.int64)
            x = x.index_select(axis, idx)
    return x


@op("Gather")
def _gather(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, idx = i
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    flat = x.index_select(axis, idx.reshape(-1))
    return flat.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])


@op("GatherElements")
def _gather_elements(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, idx = i
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@op("GatherND")
def _gather_nd(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, idx = i
    if a.get("batch_dims", 0):
        raise Unsupported("GatherND with batch_dims")
    idx = idx.long()
    k = idx.shape[-1]
    return x[tuple(idx[..., j] for j in range(k))]


@op("ScatterElements", "Scatter")
def _scatter_elements(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, idx, upd = i
    if a.get("reduction", "none") not in ("none", b"none"):
        raise Unsupported("ScatterElements with a reduction")
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    return x.scatter(axis, torch.where(idx < 0, idx + x.shape[axis], idx), upd)


@op("ScatterND")
def _scatter_nd(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, idx, upd = i
    if a.get("reduction", "none") not in ("none", b"none"):
        raise Unsupported("ScatterND with a reduction")
    out = x.clone()
    idx = idx.long()
    out[tuple(idx[..., j] for j in range(idx.shape[-1]))] = upd
    return out


@op("Expand")
def _expand(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x, shape = i[0], ints(i[1])
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


@op("Tile")
def _tile(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return i[0].repeat(*ints(i[1]))


@op("ConstantOfShape")
def _constant_of_shape(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    value = a.get("value")
    shape = ints(i[0])
    if value is None:
        return torch.zeros(shape, dtype=torch.float32)
    return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype)


@op("Range")
def _range(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    start, limit, delta = i
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@op("NonZero")
def _nonzero(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    return torch.nonzero(i[0]).t().contiguous()


@op("Trilu")
def _trilu(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    k = ints(i[1])[0] if len(i) > 1 and i[1] is not None else 0
    return torch.triu(i[0], k) if a.get("upper", 1) else torch.tril(i[0], k)


@op("Einsum")
def _einsum(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    eq = a["equation"]
    return torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *i)


@op("Pad")
def _pad(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if o < 11:
        pads, value = list(a["pads"]), a.get("value", 0.0)
        axes = list(range(x.dim()))
    else:
        pads = ints(i[1])
        value = i[2].item() if len(i) > 2 and i[2] is not None and i[2].numel() else 0.0
        axes = ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    axes = [ax % x.dim() for ax in axes]
    n = len(axes)
    full = [0] * (2 * x.dim())
    for k, ax in enumerate(axes):
        full[ax], full[ax + x.dim()] = pads[k], pads[k + n]
    first = next((ax for ax in range(x.dim()) if full[ax] or full[ax + x.dim()]), x.dim())
    torch_pads: list[int] = []
    for ax in reversed(range(first, x.dim())):
        torch_pads += [full[ax], full[ax + x.dim()]]
    if not torch_pads:
        return x
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise Unsupported(f"Pad mode {mode}")
    if first < 2:
        raise Unsupported(f"Pad mode {mode} on the batch or channel axis")
    return F.pad(x, torch_pads, mode=torch_mode)


@op("DepthToSpace")
def _depth_to_space(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    b, c, h, w = x.shape
    s = a["blocksize"]
    mode = a.get("mode", "DCR")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "CRD":
        return F.pixel_shuffle(x, s)
    y = x.reshape(b, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, c // (s * s), h * s, w * s)


@op("SpaceToDepth")
def _space_to_depth(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    b, c, h, w = x.shape
    s = a["blocksize"]
    y = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(b, c * s * s, h // s, w // s)


@op("Resize", "Upsample")
def _resize(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = a.get("coordinate_transformation_mode", "half_pixel" if o >= 11 else "asymmetric")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    nearest = a.get("nearest_mode", "round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    if o < 11 and len(i) > 1:  # Upsample / Resize-10: X, scales
        scales, sizes = i[1], None
    else:
        scales = i[2] if len(i) > 2 and i[2] is not None and i[2].numel() else None
        sizes = i[3] if len(i) > 3 and i[3] is not None and i[3].numel() else None
    if a.get("axes") is not None:
        raise Unsupported("Resize with axes")
    spatial = x.dim() - 2
    if sizes is not None:
        size = ints(sizes)[2:]
        if ints(sizes)[:2] != list(x.shape[:2]):
            raise Unsupported("Resize of the batch or channel axis")
        kwargs: dict[str, Any] = {"size": size}
    else:
        assert scales is not None
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise Unsupported("Resize of the batch or channel axis")
        kwargs = {"scale_factor": factors[2:], "recompute_scale_factor": False}
    if mode == "nearest":
        if coord == "asymmetric" and nearest == "floor":
            return F.interpolate(x, mode="nearest", **kwargs)
        if coord in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and nearest in (
            "round_prefer_ceil",
            "round_prefer_floor",
        ):
            return F.interpolate(x, mode="nearest-exact", **kwargs)
        raise Unsupported(f"Resize nearest with {coord} / {nearest}")
    if mode in ("linear", "cubic"):
        torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
        if mode == "cubic":
            if spatial != 2:
                raise Unsupported("Resize cubic beyond 2-D")
            torch_mode = "bicubic"
        if coord == "align_corners":
            return F.interpolate(x, mode=torch_mode, align_corners=True, **kwargs)
        if coord in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, mode=torch_mode, align_corners=False, **kwargs)
        raise Unsupported(f"Resize {mode} with {coord}")
    raise Unsupported(f"Resize mode {mode}")
