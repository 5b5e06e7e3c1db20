"""Unstructured magnitude pruning (global or per-layer threshold, N:M patterns): zeros."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.config import PruneStep
from onnxopt.errors import StepError
from onnxopt.graph import constants_to_initializers
from onnxopt.modelio import load_model


def _weights_of(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    inits = {t.name: t for t in model.graph.initializer}
    out, seen = [], set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm") and len(node.input) > 1:
            t = inits.get(node.input[1])
            if t is not None and t.name not in seen and len(t.dims) >= 2:
                out.append(t)
                seen.add(t.name)
    return out


def _n_m_mask(w: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w), axis, -1)
    size = moved.shape[-1]
    pad = (-size) % m
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)], constant_values=np.inf)
    blocks = padded.reshape(*padded.shape[:-1], -1, m)
    order = np.argsort(blocks, axis=-1, kind="stable")
    mask = np.ones_like(blocks, dtype=bool)
    np.put_along_axis(mask, order[..., : m - n], False, axis=-1)
    mask = mask.reshape(*padded.shape[:-1], -1)[..., :size]
    return np.moveaxis(mask, -1, axis)


Reader = Callable[[onnx.TensorProto], np.ndarray]


def _global_threshold(
    weights: list[onnx.TensorProto], ratio: float, read: Reader = numpy_helper.to_array
) -> float:
    """The k-th smallest |w| over all weights (k = ratio x count), without concatenating them.

    A sample brackets the k-th value; one exact pass counts the values below the bracket and
    keeps only those inside it (a fraction of a percent), which are then partitioned. Peak
    memory is one tensor at a time instead of copies of every weight (models over 2 GB).
    """
    sizes = [int(np.prod(t.dims)) for t in weights]
    total = sum(sizes)
    k = int(ratio * total)
    if k <= 0:
        return -np.inf
    rng = np.random.default_rng(0)
    sample = np.concatenate(
        [
            np.abs(
                w.ravel()[
                    rng.integers(0, w.size, size=min(w.size, 1 + 2_000_000 * w.size // total))
                ]
            )
            for w in (read(t) for t in weights)
        ]
    )
    q = k / total
    lo, hi = np.quantile(sample, [max(q - 0.003, 0.0), min(q + 0.003, 1.0)])
    below, inside = 0, []
    for t in weights:
        a = np.abs(read(t).ravel())
        below += int(np.count_nonzero(a < lo))
        inside.append(a[(a >= lo) & (a <= hi)])
    middle = np.concatenate(inside)
    if below < k <= below + middle.size:
        return float(np.partition(middle, k - below - 1)[k - below - 1])
    everything = np.concatenate(  # the sample missed (never seen in practice): exact, dense
        [np.abs(read(t)).ravel() for t in weights]
    )
    return float(np.partition(everything, k - 1)[k - 1])


def magnitude_prune(
    model: onnx.ModelProto,
    cfg: PruneStep,
    ratio_override: float | None = None,
    *,
    read: Reader = numpy_helper.to_array,
    write: Callable[[onnx.TensorProto, np.ndarray], None] | None = None,
    weights: list[onnx.TensorProto] | None = None,
) -> dict[str, Any]:
    """Zero the smallest weights, one tensor at a time; return per-layer sparsity.

    By default the tensors are read from and written back into ``model``; ``read`` and
    ``write`` let weights held in external data stream from one file to another instead.
    """
    ratio = ratio_override if ratio_override is not None else float(cfg.ratio)
    weights = _weights_of(model) if weights is None else weights
    if not weights:
        raise StepError("magnitude pruning found no Conv/Gemm/MatMul weight initializers")
    threshold = (
        _global_threshold(weights, ratio, read)
        if cfg.scope == "global" and not cfg.pattern
        else None
    )
    layers = []
    total = zeros = 0
    for t in weights:
        w = np.array(read(t))  # a writable copy
        if cfg.pattern:
            n, m = (int(v) for v in cfg.pattern.split(":"))
            keep = _n_m_mask(w, n, m, axis=1 if w.ndim > 2 else 0)
        else:
            if threshold is None:  # per layer
                k = int(ratio * w.size)
                cut = np.partition(np.abs(w).ravel(), k - 1)[k - 1] if k > 0 else -np.inf
            else:
                cut = threshold
            keep = np.abs(w) > cut
        w[~keep] = 0
        if write is None:
            t.CopyFrom(numpy_helper.from_array(w, t.name))
        else:
            write(t, w)
        pruned = int(keep.size - np.count_nonzero(keep))
        layers.append({"weight": t.name, "sparsity": pruned / keep.size})
        total += keep.size
        zeros += pruned
        del w, keep
    return {"layers": layers, "sparsity": zeros / total}


def magnitude_prune_streaming(src: Path, dst: Path, cfg: PruneStep) -> dict[str, Any]:
    """Magnitude pruning of a model whose weights are external data, one tensor in memory.

    The graph is loaded without its weights; each weight is read from the source .data
    file, pruned and appended to ``dst``'s own .data file, and every other external tensor
    is copied across, so a model over 2 GB never has two copies of its weights in memory.
    """
    from onnxopt.graph import iter_tensors
    from onnxopt.modelio import ExternalWriter, read_tensor

    model = load_model(src, load_weights=False)
    constants_to_initializers(model)
    weights = _weights_of(model)
    with ExternalWriter(dst.parent, dst.name + ".data") as out:

        def write(tensor: onnx.TensorProto, array: np.ndarray) -> None:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                out.place(tensor, array.tobytes())
            else:  # an inline weight (small): kept in the proto
                tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))

        def read(tensor: onnx.TensorProto) -> np.ndarray:
            return read_tensor(tensor, src.parent)

        facts = magnitude_prune(model, cfg, read=read, write=write, weights=weights)
        written = {t.name for t in weights}
        for tensor in iter_tensors(model):
            if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in written:
                out.copy(tensor, src.parent)
    onnx.save_model(model, str(dst))
    return facts
