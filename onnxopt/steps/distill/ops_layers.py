"""Convolution, pooling, normalization, Gemm, softmax, padding and resizing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from onnxopt.steps.distill.optable import OPS, Op, Tensor, Unsupported, ints, op

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
