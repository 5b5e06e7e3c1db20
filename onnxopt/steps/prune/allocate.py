"""Spend the pruning where it costs least: per-group ratios for a target share of the MACs.

Each prunable group is measured twice: its *cost*, the multiply-accumulates one of its
channels carries (in the convolutions and dense layers that produce it and those that read
it, from shape inference at the run's dims), and its *sensitivity*, the change of the
model's outputs when only that group is pruned, at a few ratios. The sensitivity is
measured on the calibration part of the run's data (the held-out part stays for the
verification that judges the result), with one ONNX Runtime session: every weight that
reads a group's channels is fed through a mask (``x * m + b``), so pruning a group is a
change of the masks' values, not a rebuilt model. Zeroing a channel where it is read is
what removing it does; with compensation the removed channels read their mean instead,
which is what folding the mean into the next bias does.

A greedy allocation then takes, again and again, the step (one group, from its ratio to a
higher one) that removes MACs at the least estimated output change per MAC, until the
target is reached; the prune step checks the MACs of the pruned model and asks for more
when the estimate fell short (channels of a layer that both reads and produces a pruned
group save less than the sum of both).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.config import PruneStep
from onnxopt.steps.base import StepContext
from onnxopt.steps.prune.analysis import ChannelAnalysis, Group, attr
from onnxopt.steps.prune.channels import (
    READERS,
    STATS_SAMPLES,
    _input_axis,
    activation_stats,
    channel_scores,
    compensable,
    group_key,
    keep_count,
    producer_names,
    rows,
    stats_names,
)

log = logging.getLogger("onnxopt")

#: samples of the calibration data the sensitivity is measured on, at most, and the seconds
#: the measurement should take (fewer samples, down to 2, for a slow model)
SENSITIVITY_SAMPLES = 8
MEASURE_SECONDS = 60.0
#: the ratios a group may be given (between the measured points the change is interpolated)
LEVEL_STEP = 0.125
#: groups carrying less of the model's MACs than this are not measured (nor pruned): they
#: cannot buy much, and measuring each costs a run of the model per ratio and sample
MIN_SHARE = 0.002


@dataclass
class GroupCost:
    """What one prunable group costs and how much the outputs care."""

    key: str
    size: int
    #: MACs one channel of the group carries (producers and readers together)
    channel_macs: float
    #: channel indices, most important first (the prune step keeps a prefix of them)
    order: list[int]
    #: ratio -> relative squared change of the outputs when only this group is pruned
    curve: dict[float, float] = field(default_factory=dict)
    #: why the group was not measured (it is then not pruned)
    unmeasured: str | None = None

    def removed(self, ratio: float, cfg: PruneStep) -> int:
        return self.size - keep_count(self.size, ratio, cfg.min_channels, cfg.round_to)

    def change(self, ratio: float, cfg: PruneStep) -> float:
        """The output change at ``ratio``, interpolated by channels removed between the
        measured points (two ratios that remove the same channels change the same)."""
        points: dict[int, float] = {0: 0.0}
        for r in sorted(self.curve):
            points.setdefault(self.removed(r, cfg), self.curve[r])
        counts = sorted(points)
        value = np.interp(self.removed(ratio, cfg), counts, [points[k] for k in counts])
        return float(value)


def node_key(node: onnx.NodeProto) -> str:
    return node.output[0]


def _node_macs(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> dict[str, float]:
    from onnxopt.inspection import node_macs

    out: dict[str, float] = {}
    for node in model.graph.node:
        macs = node_macs(node, shapes)
        if macs is not None:
            out[node_key(node)] = float(macs)
    return out


def _channel_macs(group: Group, analysis: ChannelAnalysis, macs: dict[str, float]) -> float:
    """MACs one channel of ``group`` carries: its share of each producer's output channels,
    of each depthwise layer on it, and of each reader's input rows."""
    total = 0.0
    for node in group.producers:
        total += macs.get(node_key(node), 0.0) / group.size
    for kind, node, extra in group.members:
        if kind == "dw":
            total += macs.get(node_key(node), 0.0) / group.size
        elif kind in READERS:
            w = analysis.weight(node, 1)
            if w is None:
                continue
            per = int(extra) if kind in ("flatten_in", "flatten_last_in") else 1
            total += macs.get(node_key(node), 0.0) * per / w.shape[_input_axis(node, w.ndim)]
    return total


@dataclass
class _Site:
    """A tensor fed through a mask, ``x * m + b`` on its channel axis: a reader's input
    (``in:``, where the removed channels read zero, or their mean) or a producer's output
    (``out:``, where they are zero, as for ops between the two that mix channels: an L2
    norm over them)."""

    node: onnx.NodeProto
    tensor: str
    shape: list[int]
    ones: np.ndarray
    zeros: np.ndarray
    #: compensation can fold the removed channels' mean into this reader's bias
    compensable: bool = False


def _site(node: onnx.NodeProto, tensor: str, shape: list[int], compensable: bool) -> _Site:
    conv = node.op_type in ("Conv", "ConvTranspose")
    length = shape[1] if conv else shape[-1]
    mask = [length] + [1] * (len(shape) - 2) if conv else [length]
    ones, zeros = np.ones(mask, np.float32), np.zeros(mask, np.float32)
    return _Site(node, tensor, mask, ones, zeros, compensable)


def _sites(
    groups: dict[str, Group], analysis: ChannelAnalysis, shapes: dict[str, list[int]]
) -> tuple[dict[str, _Site], dict[str, str]]:
    """The masked tensors of every group's producers and readers; groups one of whose
    tensors cannot be masked (a shape unknown at these dims) are named with the reason."""
    sites: dict[str, _Site] = {}
    problems: dict[str, str] = {}
    for key, group in groups.items():
        places = [("out", node, node.output[0]) for node in group.producers]
        places += [("in", n, n.input[0]) for kind, n, _ in group.members if kind in READERS]
        for side, node, tensor in places:
            shape = shapes.get(tensor)
            where = node.name or node.op_type
            if not shape or any(d <= 0 for d in shape):
                problems[key] = f"{where}: shape of {tensor!r} unknown at these dims"
            elif node.op_type == "Gemm" and attr(node, "transA", 0):
                problems[key] = f"{where}: Gemm with transA"
            elif f"{side}:{node_key(node)}" not in sites:
                w = analysis.weight(node, 1)
                fold = side == "in" and w is not None and compensable(analysis, node, w)
                sites[f"{side}:{node_key(node)}"] = _site(node, tensor, shape, fold)
    return sites, problems


def _masked_model(model: onnx.ModelProto, sites: dict[str, _Site]) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    by_output = {node_key(n): n for n in probe.graph.node}
    placed: list[tuple[onnx.NodeProto, bool, list[onnx.NodeProto]]] = []
    for i, (key, site) in enumerate(sites.items()):
        node = by_output[key.split(":", 1)[1]]
        m, b = f"__onnxopt_mask{i}", f"__onnxopt_shift{i}"
        if key.startswith("in:"):
            src, dst = site.tensor, f"{b}_x"
            node.input[0] = dst
        else:  # the producer writes a new name; the mask writes the name its readers read
            src, dst = f"{m}_pre", site.tensor
            node.output[0] = src
        pair = [
            helper.make_node("Mul", [src, m], [f"{m}_x"], name=f"{m}_mul"),
            helper.make_node("Add", [f"{m}_x", b], [dst], name=f"{b}_add"),
        ]
        placed.append((node, key.startswith("in:"), pair))
        for name in (m, b):
            probe.graph.input.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, site.shape)
            )
    for node, before, pair in placed:  # the graph stays topologically sorted
        at = list(probe.graph.node).index(node) + (0 if before else 1)
        for offset, extra in enumerate(pair):
            probe.graph.node.insert(at + offset, extra)
    return probe


def _change(outputs: list[list[np.ndarray]], base: list[list[np.ndarray]]) -> float:
    """Mean over samples and outputs of the squared change relative to the output's energy."""
    values = []
    for got, want in zip(outputs, base, strict=True):
        for g, w in zip(got, want, strict=True):
            if not np.issubdtype(w.dtype, np.floating):
                values.append(float(np.mean(g != w)))
                continue
            energy = float(np.sum(np.square(w, dtype=np.float64)))
            diff = float(np.sum(np.square(g.astype(np.float64) - w)))
            values.append(diff / max(energy, 1e-12))
    return float(np.mean(values)) if values else 0.0


@dataclass
class Measured:
    """What :func:`measure` found: every group's cost and sensitivity, the model's MACs and
    the number of calibration samples the sensitivity was measured on."""

    costs: list[GroupCost]
    total: float
    samples: int


def measure(model: onnx.ModelProto, cfg: PruneStep, ctx: StepContext) -> Measured:
    """Every prunable group's cost and sensitivity, and the model's MACs."""
    from onnxopt.inspection import static_shapes

    shapes = static_shapes(model, ctx.dims)
    analysis = ChannelAnalysis(model, shapes)
    found = analysis.run()
    groups = {
        group_key(g): g
        for g in found.values()
        if not g.problems and not any(n in cfg.ignore for n in producer_names(g))
    }
    _runtime_shapes(model, groups, shapes, ctx)
    macs = _node_macs(model, shapes)
    wanted, axes = stats_names(found, analysis)
    stats = activation_stats(model, wanted, ctx, axes)
    costs = {}
    for key, g in groups.items():
        scores = channel_scores(g, analysis, cfg.criterion, stats)
        order = [int(i) for i in np.argsort(-scores, kind="stable")]
        costs[key] = GroupCost(key, g.size, _channel_macs(g, analysis, macs), order)
    total = float(sum(macs.values()))
    for cost in costs.values():
        if cost.channel_macs * cost.size < MIN_SHARE * total:
            cost.unmeasured = f"carries under {MIN_SHARE:.1%} of the MACs"
    sites, problems = _sites(
        {k: g for k, g in groups.items() if costs[k].unmeasured is None}, analysis, shapes
    )
    for key, why in problems.items():
        costs[key].unmeasured = why
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        measured = sum(1 for c in costs.values() if c.unmeasured is None)
        masked = _Masked(model, sites, ctx, Path(tmp), measured * len(cfg.sensitivity_ratios))
        for key, group in groups.items():
            cost = costs[key]
            seen: dict[int, float] = {}  # ratios that remove the same channels: one run
            for ratio in cfg.sensitivity_ratios if cost.unmeasured is None else []:
                count = cost.removed(ratio, cfg)
                if count not in seen:
                    removed = np.array(sorted(cost.order[cost.size - count :]), dtype=np.int64)
                    seen[count] = masked.change(group, removed, stats, cfg.compensate)
                cost.curve[ratio] = seen[count]
    return Measured(list(costs.values()), total, len(masked.samples))


def _runtime_shapes(
    model: onnx.ModelProto, groups: dict[str, Group], shapes: dict[str, list[int]], ctx: Any
) -> None:
    """Fill the shapes shape inference could not tell (data-dependent reshapes, contrib
    ops) of the tensors the costs and masks need, from one run on a calibration sample."""
    from onnxopt.inspection import node_macs
    from onnxopt.runtime import run_exposing

    needed = set()
    for group in groups.values():
        needed |= {n.output[0] for n in group.producers}
        needed |= {n.input[0] for kind, n, _ in group.members if kind in READERS}
    for node in model.graph.node:
        mac = node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        if mac and node_macs(node, shapes) is None:
            needed |= {node.input[0], node.output[0]}
    computed = {o for n in model.graph.node for o in n.output}
    missing = sorted(n for n in needed if n in computed and not shapes.get(n))
    if not missing:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    feeds = (ctx.calibration or [ctx.inputs])[:1]
    (values,) = run_exposing(probe, missing, feeds, target=ctx.target, where="shapes")
    shapes.update({name: list(value.shape) for name, value in values.items()})


class _Masked:
    """One session of the model with its producers' and readers' tensors masked."""

    def __init__(
        self,
        model: onnx.ModelProto,
        sites: dict[str, _Site],
        ctx: StepContext,
        tmp: Path,
        runs: int,
    ) -> None:
        from onnxopt.modelio import save_model
        from onnxopt.runtime import make_session

        self.sites = sites
        self.index = {key: i for i, key in enumerate(sites)}
        path = save_model(_masked_model(model, sites), tmp / "masked.onnx")
        self.session = make_session(path, ctx.target, level="basic")
        names = {i.name for i in self.session.get_inputs()}
        feeds = (ctx.calibration or [ctx.inputs])[:SENSITIVITY_SAMPLES]
        self.samples = [{k: v for k, v in f.items() if k in names} for f in feeds]
        started = time.perf_counter()
        self.base = self.run({})
        # as many samples as keep the measurement near MEASURE_SECONDS (at least 2)
        per_sample = (time.perf_counter() - started) / max(len(self.samples), 1)
        fit = int(MEASURE_SECONDS / max(per_sample * runs, 1e-9))
        keep = max(2, min(len(self.samples), fit))
        self.samples, self.base = self.samples[:keep], self.base[:keep]

    def run(self, changed: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[list[np.ndarray]]:
        feed: dict[str, np.ndarray] = {}
        for key, site in self.sites.items():
            m, b = changed.get(key, (site.ones, site.zeros))
            i = self.index[key]
            feed[f"__onnxopt_mask{i}"], feed[f"__onnxopt_shift{i}"] = m, b
        run = self.session.run
        return [[np.asarray(o) for o in run(None, {**f, **feed})] for f in self.samples]

    def change(
        self,
        group: Group,
        removed: np.ndarray,
        stats: dict[str, tuple[np.ndarray, np.ndarray]],
        compensate: bool,
    ) -> float:
        """The outputs' change with the ``removed`` channels of ``group`` gone: zero where
        produced and where read (or, with ``compensate``, their mean where read by a
        weight whose bias can hold it)."""
        if not len(removed):
            return 0.0
        changed: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def put(key: str, idx: np.ndarray, mean: np.ndarray | None) -> None:
            site = self.sites[key]
            m, b = (a.reshape(-1).copy() for a in changed.get(key, (site.ones, site.zeros)))
            m[idx] = 0.0
            if mean is not None:
                b[idx] = mean[idx]
            changed[key] = (m.reshape(site.shape), b.reshape(site.shape))

        for node in group.producers:
            put(f"out:{node_key(node)}", removed, None)
        for kind, node, extra in group.members:
            key = f"in:{node_key(node)}"
            if kind in READERS and key in self.sites:
                site = self.sites[key]
                fold = compensate and site.compensable and site.tensor in stats
                put(key, rows(kind, extra, group.size, removed),
                    stats[site.tensor][0] if fold else None)  # fmt: skip
        return _change(self.run(changed), self.base)


def allocate(
    costs: list[GroupCost], total: float, target: float, cfg: PruneStep
) -> dict[str, float]:
    """Per-group ratios removing about ``target`` of ``total`` MACs (estimated) at the least
    summed output change: greedy over the jumps from each group's ratio to a higher one."""
    top = max(cfg.sensitivity_ratios)
    levels = [float(x) for x in np.arange(LEVEL_STEP, top + 1e-9, LEVEL_STEP)]
    chosen = {c.key: 0.0 for c in costs}
    saved = 0.0
    usable = [c for c in costs if c.unmeasured is None and c.channel_macs > 0]
    while saved < target * total:
        need = target * total - saved
        # each jump: (price, gain, group, level); the least change per MAC among the jumps
        # that do not overshoot what is still needed (on a tie the smaller step), else the
        # last step: the least change among those that reach it
        jumps = []
        for c in usable:
            now = chosen[c.key]  # at 0 nothing is removed and nothing changes
            have = c.removed(now, cfg)
            for level in levels:
                more = c.removed(level, cfg) - have
                if level <= now or more <= 0:
                    continue
                gain = more * c.channel_macs
                worse = max(c.change(level, cfg) - c.change(now, cfg), 0.0)
                jumps.append((float(f"{worse / gain:.9g}"), gain, worse, c, level))
        if not jumps:
            break
        fits = [j for j in jumps if j[1] <= need]
        if fits:
            _, gain, _, c, level = min(fits, key=lambda j: (j[0], j[1]))
        else:
            _, gain, _, c, level = min(jumps, key=lambda j: (j[2], j[1]))
        chosen[c.key] = level
        saved += gain
    return {k: v for k, v in chosen.items() if v > 0}


def estimated_saving(costs: list[GroupCost], ratios: dict[str, float], cfg: PruneStep) -> float:
    return sum(c.removed(ratios[c.key], cfg) * c.channel_macs for c in costs if c.key in ratios)


_MEMO: dict[str, Measured] = {}


def measured(src: Path, model: onnx.ModelProto, cfg: PruneStep, ctx: StepContext) -> Measured:
    """:func:`measure`, kept for the process: the rungs of optimize's ladder prune the same
    model on the same data and need its measurements once."""
    from onnxopt.modelio import model_digest

    digest = hashlib.sha256()
    digest.update(model_digest(src).encode())
    options = (cfg.criterion, cfg.compensate, cfg.round_to, cfg.min_channels)
    digest.update(repr((options, sorted(cfg.ignore), cfg.sensitivity_ratios, ctx.dims)).encode())
    # the samples measure reads: the sensitivity's and the activation statistics'
    for feeds in (ctx.calibration or [ctx.inputs])[: max(SENSITIVITY_SAMPLES, STATS_SAMPLES)]:
        for name in sorted(feeds):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feeds[name]).tobytes())
    key = digest.hexdigest()
    if key not in _MEMO:
        if len(_MEMO) >= 4:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = measure(model, cfg, ctx)
    return _MEMO[key]


def report(costs: list[GroupCost], ratios: dict[str, float], cfg: PruneStep) -> list[Any]:
    """What was measured, per group, for the step's report."""
    return [
        {
            "producers": c.key.split(","),
            "channels": c.size,
            "channel_macs": round(c.channel_macs),
            "change": {f"{r:g}": v for r, v in sorted(c.curve.items())},
            "ratio": ratios.get(c.key, 0.0),
            "removed": c.removed(ratios[c.key], cfg) if c.key in ratios else 0,
            **({"unmeasured": c.unmeasured} if c.unmeasured else {}),
        }
        for c in costs
    ]
