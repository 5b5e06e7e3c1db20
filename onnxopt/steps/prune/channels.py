"""Structured channel pruning: importance, the kept channels of each group, compensation."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.config import PruneStep
from onnxopt.steps.base import StepContext
from onnxopt.steps.prune.analysis import ChannelAnalysis, Group, attr

#: ops with a recurrent layer's weight layout ([directions, gates x hidden, input])
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
#: member kinds that read the group's channels through a weight (importance, compensation)
READERS = ("conv_in", "convT_in", "mm_in", "rnn_in", "in_at", "flatten_in", "flatten_last_in")


def producer_names(group: Group) -> list[str]:
    """The names of a group's producers (their op types when unnamed)."""
    return [p.name or p.op_type for p in group.producers]


def group_key(group: Group) -> str:
    """A group's name across analyses of the same model: its producers, joined."""
    return ",".join(producer_names(group))


def channel_scores(
    group: Group,
    analysis: ChannelAnalysis,
    criterion: str,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Each channel's importance by ``criterion`` (the prune step keeps the highest)."""
    if criterion == "activation":
        return _activation_importance(group, stats)
    return _importance(group, analysis, criterion)


def _importance(group: Group, analysis: ChannelAnalysis, criterion: str) -> np.ndarray:
    total = np.zeros(group.size)
    for node in group.producers:
        w = analysis.weight(node, 1)
        assert w is not None
        if node.op_type == "Conv":
            per = w.reshape(w.shape[0], -1)
        elif node.op_type == "ConvTranspose":
            per = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
        elif node.op_type == "Gemm" and attr(node, "transB", 0):
            per = w
        else:
            per = w.T
        norms = np.abs(per).sum(axis=1) if criterion == "l1" else np.sqrt((per**2).sum(axis=1))
        total += norms
    return total


def _set(analysis: ChannelAnalysis, name: str, value: np.ndarray) -> None:
    tensor = analysis.inits[name]
    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))


def _input_axis(node: onnx.NodeProto, rank: int = 2) -> int:
    """Axis of a consumer's weight (of ``rank``) that indexes its input channels: 1 for a
    Conv of any rank ([M, C/g, *kernel]) and a Gemm with transB, the second-last for a
    MatMul (a batched [..., K, N] weight too), 0 for a plain Gemm and a ConvTranspose
    ([C, M/g, *kernel]), 2 for a recurrent layer's W ([directions, gates, C])."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "ConvTranspose":
        return 0
    if node.op_type in RECURRENT_OPS:
        return 2
    if node.op_type == "Gemm":
        return 1 if attr(node, "transB", 0) else 0
    return max(rank - 2, 0)


def _output_axis(node: onnx.NodeProto, rank: int) -> int:
    """Axis of a consumer's weight that indexes its output channels (see _input_axis)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if attr(node, "transB", 0) else 1
    return rank - 1


def rows(kind: str, extra: Any, size: int, channels: np.ndarray) -> np.ndarray:
    """The input rows of a consumer's weight that read ``channels`` of a group of ``size``:
    blocks of ``extra`` rows after a channel-major flatten, every ``size``-th row after a
    channel-minor one, shifted by a Concat's offset, or the channels themselves."""
    if kind == "flatten_in":
        return (channels[:, None] * int(extra) + np.arange(int(extra))[None, :]).ravel()
    if kind == "flatten_last_in":
        return (np.arange(int(extra))[:, None] * size + channels[None, :]).ravel()
    if kind == "in_at":
        return int(extra) + channels
    return channels


def _apply(
    group: Group, keep: np.ndarray, analysis: ChannelAnalysis, pending: dict[str, np.ndarray]
) -> None:
    a = analysis
    for node in group.producers:
        w = a.weight(node, 1)
        assert w is not None
        if node.op_type in ("Conv", "ConvTranspose"):
            _set(a, node.input[1], w[keep] if node.op_type == "Conv" else w[:, keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                _set(a, node.input[2], numpy_helper.to_array(a.inits[node.input[2]])[keep])
        elif node.op_type == "MatMul":
            _set(a, node.input[1], w[:, keep])
        else:  # Gemm
            trans_b = attr(node, "transB", 0)
            _set(a, node.input[1], w[keep] if trans_b else w[:, keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                c = numpy_helper.to_array(a.inits[node.input[2]])
                if c.ndim >= 1 and c.shape[-1] == group.size:
                    _set(a, node.input[2], c[..., keep])
    for kind, node, extra in group.members:
        if kind == "params":
            for i in extra:
                _set(a, node.input[i], numpy_helper.to_array(a.inits[node.input[i]])[keep])
        elif kind == "const":
            index, pos = extra
            value = numpy_helper.to_array(a.inits[node.input[index]])
            _set(a, node.input[index], np.take(value, keep, axis=pos))
        elif kind == "conv_in":
            w = a.weight(node, 1)
            assert w is not None
            _set(a, node.input[1], w[:, keep])
        elif kind == "dw":
            w = a.weight(node, 1)
            assert w is not None
            _set(a, node.input[1], w[keep])
            if len(node.input) > 2 and node.input[2] in a.inits:
                _set(a, node.input[2], numpy_helper.to_array(a.inits[node.input[2]])[keep])
            for attribute in node.attribute:
                if attribute.name == "group":
                    attribute.i = len(keep)
        elif kind in ("mm_in", "convT_in", "rnn_in", "flatten_in", "flatten_last_in"):
            _keep_weight_rows(a, node, rows(kind, extra, group.size, keep))
        elif kind == "in_at":
            # A Concat's consumer: several groups slice the same weight; apply once, later.
            name = node.input[1]
            w = a.weight(node, 1)
            assert w is not None
            axis = _input_axis(node, w.ndim)
            mask = pending.setdefault(name, np.ones(w.shape[axis], dtype=bool))
            removed = np.setdiff1d(np.arange(group.size), keep)
            mask[int(extra) + removed] = False
        elif kind in ("reshape", "reshape_flat"):  # the last dim: C, or C x spatial
            spec = numpy_helper.to_array(a.inits[node.input[1]]).copy()
            spec[-1] = len(keep) * (spec[-1] // group.size if kind == "reshape_flat" else 1)
            _set(a, node.input[1], spec)
        elif kind == "sizes":  # a Resize's output sizes
            index, channel = extra
            sizes = numpy_helper.to_array(a.inits[node.input[index]]).copy()
            sizes[channel] = len(keep)
            _set(a, node.input[index], sizes)


def _keep_weight_rows(a: ChannelAnalysis, node: onnx.NodeProto, kept: np.ndarray) -> None:
    """Keep the input rows ``kept`` of a consumer's weight (see _input_axis)."""
    w = a.weight(node, 1)
    assert w is not None
    _set(a, node.input[1], np.take(w, kept, axis=_input_axis(node, w.ndim)))


def keep_count(size: int, ratio: float, min_channels: int, round_to: int) -> int:
    keep = size * (1.0 - ratio)
    keep = int(np.ceil(keep / round_to) * round_to) if round_to > 1 else int(round(keep))
    return max(min(size, max(keep, min_channels, 1)), 1)


def _group_ratio(names: list[str], cfg: PruneStep, override: float | None) -> float:
    import fnmatch

    for pattern, ratio in cfg.layer_ratios.items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return ratio
    if override is not None:
        return override
    assert isinstance(cfg.ratio, float | int)
    return float(cfg.ratio)


#: samples of the data the activation statistics are averaged over
STATS_SAMPLES = 16


def activation_stats(
    model: onnx.ModelProto,
    names: list[str],
    ctx: StepContext,
    axes: dict[str, int] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, mean |x|) of tensors, averaged over the calibration part of the
    run's data (or, without data, the verification inputs).

    Channels are on ``axes[name]``; for other tensors axis 1 for rank-4 tensors (NCHW) and
    the last axis otherwise.
    """
    from onnxopt.runtime import run_exposing

    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    del probe_model.graph.value_info[:]
    feeds = (ctx.calibration or [ctx.inputs])[:STATS_SAMPLES]
    runs = run_exposing(probe_model, names, feeds, target=ctx.target, where="stats")
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in runs[0]:
        means, magnitudes = [], []
        for values in runs:
            value = values[name]
            axis = (axes or {}).get(name, 1 if value.ndim == 4 else -1) % value.ndim
            others = tuple(i for i in range(value.ndim) if i != axis)
            means.append(value.mean(axis=others))
            magnitudes.append(np.abs(value).mean(axis=others))
        stats[name] = (np.mean(means, axis=0), np.mean(magnitudes, axis=0))
    return stats


def _activation_importance(
    group: Group, stats: dict[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Mean |activation| of each channel as the next layers read it (after activations)."""
    total = np.zeros(group.size)
    found = False
    for kind, node, extra in group.members:
        if kind not in READERS or node.input[0] not in stats:
            continue
        magnitude = stats[node.input[0]][1]
        if kind == "flatten_in":
            total += magnitude.reshape(group.size, int(extra)).mean(axis=1)
        elif kind == "flatten_last_in":
            total += magnitude.reshape(int(extra), group.size).mean(axis=0)
        elif kind == "in_at":
            total += magnitude[int(extra) : int(extra) + group.size]
        else:
            total += magnitude
        found = True
    if not found:  # nobody reads the channels through a weight: use the producers' outputs
        for producer in group.producers:
            if producer.output[0] in stats:
                total += stats[producer.output[0]][1]
    return total


def _bias(a: ChannelAnalysis, node: onnx.NodeProto, size: int) -> str | None:
    """Name of a private bias initializer of a Conv/Gemm consumer (created when absent)."""
    if len(node.input) > 2 and node.input[2]:
        name = node.input[2]
        if name not in a.inits or a.uses.get(name, 0) > 1:
            return None
        return name
    return _new_bias(a, node, 2, np.zeros(size, np.float32))


def _new_bias(a: ChannelAnalysis, node: onnx.NodeProto, index: int, zeros: np.ndarray) -> str:
    """Give ``node`` a private bias initializer ``zeros`` at input ``index`` (absent, or
    given as ""); its name."""
    name = f"{node.name or node.op_type}_compensation_bias"
    a.graph.initializer.append(numpy_helper.from_array(zeros, name))
    a.inits[name] = a.graph.initializer[-1]
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name
    return name


def _matmul_bias(a: ChannelAnalysis, node: onnx.NodeProto, size: int) -> str | None:
    """Name of the private bias a MatMul consumer's output is added to (its only reader an
    Add with a constant of ``size`` values on the last axis), or None."""
    users = a.consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add" or node.output[0] in a.outputs:
        return None
    add = users[0]
    others = [name for name in add.input if name != node.output[0]]
    if len(others) != 1 or others[0] not in a.inits or a.uses.get(others[0], 0) > 1:
        return None
    dims = list(a.inits[others[0]].dims)
    if not dims or dims[-1] != size or int(np.prod(dims)) != size:
        return None
    return others[0]


def compensable(a: ChannelAnalysis, node: onnx.NodeProto, w: np.ndarray) -> bool:
    """Whether compensation can fold removed input channels into ``node``'s bias: a
    recurrent layer's input bias, a private Conv/Gemm bias (made when absent) or the Add
    after a 2-D MatMul. Not a batched MatMul (one vector per batch) nor a ConvTranspose
    (a constant input's output varies with the stride). :func:`_compensate` and the
    sensitivity measurement both ask it."""
    if node.op_type in RECURRENT_OPS:
        return True
    if w.ndim < 2 or node.op_type == "ConvTranspose" or (node.op_type == "MatMul" and w.ndim > 2):
        return False
    if node.op_type == "MatMul":
        return _matmul_bias(a, node, w.shape[-1]) is not None
    if len(node.input) > 2 and node.input[2]:
        return node.input[2] in a.inits and a.uses.get(node.input[2], 0) <= 1
    return True


def _removed_contribution(
    node: onnx.NodeProto, w: np.ndarray, idx: np.ndarray, mean: np.ndarray
) -> np.ndarray:
    """What the removed input channels ``idx`` (at their mean activations) add to each output
    channel of a :func:`compensable` consumer: a vector over its output channels, for
    weights of any rank (a Conv of any spatial rank sums its kernel too)."""
    axis = _input_axis(node, w.ndim)
    part = np.tensordot(np.take(w, idx, axis=axis), mean, axes=([axis], [0]))
    out = _output_axis(node, w.ndim)
    out = out if out < axis else out - 1  # the contracted axis is gone
    others = tuple(i for i in range(part.ndim) if i != out)
    return np.asarray(part.sum(axis=others) if others else part)


def _compensate_recurrent(
    a: ChannelAnalysis, node: onnx.NodeProto, w: np.ndarray, delta: np.ndarray
) -> None:
    """Fold ``delta`` ([directions, gates]) into a recurrent layer's input bias (the first
    half of B; B is created, zero, when absent)."""
    gates = w.shape[1]
    if len(node.input) > 3 and node.input[3]:
        name = node.input[3]
    else:
        name = _new_bias(a, node, 3, np.zeros((w.shape[0], 2 * gates), w.dtype))
    bias = numpy_helper.to_array(a.inits[name]).copy()
    bias[:, :gates] += delta.astype(bias.dtype)
    _set(a, name, bias)


def _compensate(
    group: Group,
    keep: np.ndarray,
    a: ChannelAnalysis,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
) -> list[str]:
    """Add the removed channels' mean contribution to each consumer's bias."""
    removed = np.setdiff1d(np.arange(group.size), keep)
    done = []
    for kind, node, extra in group.members:
        if kind not in READERS or node.input[0] not in stats:
            continue
        mean = stats[node.input[0]][0]
        w = a.weight(node, 1)
        assert w is not None
        if not compensable(a, node, w):
            continue
        idx = rows(kind, extra, group.size, removed)
        if node.op_type in RECURRENT_OPS:
            _compensate_recurrent(a, node, w, np.take(w, idx, axis=2) @ mean[idx])
            done.append(node.name or node.op_type)
            continue
        delta = _removed_contribution(node, w, idx, mean[idx])
        if node.op_type == "MatMul":  # the bias is the Add after it (a Linear's export)
            name = _matmul_bias(a, node, delta.shape[0])
        else:
            name = _bias(a, node, delta.shape[0])
        assert name is not None  # compensable said so
        bias = numpy_helper.to_array(a.inits[name])
        _set(a, name, (bias + delta).astype(bias.dtype))
        done.append(node.name or node.op_type)
    return done


def stats_names(
    groups: dict[int, Group], analysis: ChannelAnalysis
) -> tuple[list[str], dict[str, int]]:
    """The tensors whose activation statistics importance and compensation read (the
    producers' outputs and the members' inputs), and their channel axes: the one the
    analysis followed (1 after a Conv, the last after a MatMul/Gemm, also on rank-4
    channels-last tensors as in ConvNeXt's pointwise layers), the last for a Concat that a
    MatMul/Gemm reads."""
    wanted = {p.output[0] for g in groups.values() for p in g.producers}
    wanted |= {n.input[0] for g in groups.values() for _, n, _ in g.members}
    axes = {name: analysis.axis[name] for name in wanted if name in analysis.axis}
    for group in groups.values():
        for kind, node, _ in group.members:
            if kind == "in_at" and node.op_type != "Conv":
                axes[node.input[0]] = -1
    return sorted(wanted), axes


def channel_prune(
    model: onnx.ModelProto,
    cfg: PruneStep,
    ctx: StepContext,
    ratio_override: float | None = None,
    ratios: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Prune channels of ``model`` in place; return the per-group report. ``ratios``
    (:func:`group_key` -> ratio, an allocation) overrides every other ratio."""
    from onnxopt.inspection import static_shapes

    shapes = static_shapes(model, ctx.dims)
    analysis = ChannelAnalysis(model, shapes)
    groups = analysis.run()
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cfg.criterion == "activation" or cfg.compensate:
        names, axes = stats_names(groups, analysis)
        stats = activation_stats(model, names, ctx, axes)
    report_groups = []
    pruned_any = False
    pending: dict[str, np.ndarray] = {}
    for group in groups.values():
        names = producer_names(group)
        entry: dict[str, Any] = {"producers": names, "channels_before": group.size}
        ignored = [n for n in names if n in cfg.ignore]
        if ignored:
            group.problems.append(f"ignored by config: {', '.join(ignored)}")
        if group.problems:
            entry.update(prunable=False, reasons=group.problems, channels_after=group.size)
            report_groups.append(entry)
            continue
        scores = channel_scores(group, analysis, cfg.criterion, stats)
        if ratios is not None:  # an allocation: the groups it names, the rest left whole
            ratio = ratios.get(group_key(group), 0.0)
        else:
            ratio = _group_ratio(names, cfg, ratio_override)
        count = keep_count(group.size, ratio, cfg.min_channels, cfg.round_to)
        keep = np.sort(np.argsort(-scores, kind="stable")[:count])
        entry.update(
            prunable=True,
            channels_after=int(count),
            importance_range=[float(scores.min()), float(scores.max())],
        )
        if count < group.size:
            if cfg.compensate:
                entry["compensated"] = _compensate(group, keep, analysis, stats)
            _apply(group, keep, analysis, pending)
            pruned_any = True
        report_groups.append(entry)
    consumers = {n.input[1]: n for n in model.graph.node if len(n.input) > 1}
    for name, mask in pending.items():
        node = consumers[name]
        w = analysis.weight(node, 1)
        assert w is not None
        _set(analysis, name, np.compress(mask, w, axis=_input_axis(node, w.ndim)))
    del model.graph.value_info[:]  # intermediate shapes changed; let tools re-infer them
    return {"groups": report_groups, "pruned": pruned_any}
