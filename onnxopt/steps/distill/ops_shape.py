"""Shape arithmetic, indexing, gathering and scattering."""

from __future__ import annotations

import math
from typing import Any

import torch

from onnxopt.steps.distill.optable import Tensor, Unsupported, axes_of, ints, op

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
    axes = axes_of(i, a, 1)
    if axes is None:
        return x.squeeze()
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Unsqueeze")
def _unsqueeze(i: list[Any], a: dict[str, Any], o: int) -> Tensor:
    x = i[0]
    axes = axes_of(i, a, 1) or []
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
    return flat.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


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
