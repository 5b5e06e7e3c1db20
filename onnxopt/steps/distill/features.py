"""Which intermediate tensors a distillation after pruning matches (no torch here).

Where the parent's channels were pruned, the outputs alone say little about what the
remaining channels of each pruned layer should now carry; matching the teacher's features
there gives each layer its own target (a hint, as FitNets calls it). The tensors matched are
the outputs of the nodes that read a pruned tensor (one computed by both graphs, under the
same name, with fewer channels in the student): the first tensor after a pruned group (its
readers' outputs, the teacher's width again) is matched directly; one that is narrower
itself through a learned linear map (the loss's adapter, fitted by least squares). At most
:data:`MAX_FEATURES` are taken, spread over the graph's depth, and only as many as keep the
teacher's values of every training sample within :data:`FEATURE_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.verify import Inputs

#: most tensors matched
MAX_FEATURES = 6
#: the teacher's matched values of all training and validation samples are held at once
FEATURE_BYTES = 1 << 30


@dataclass
class Features:
    """The matched tensors (name -> loss weight) and what the choice saw."""

    weights: dict[str, float] = field(default_factory=dict)
    pruned_tensors: int = 0
    candidates: int = 0
    left_out: str | None = None

    def facts(self) -> dict[str, Any]:
        """The report's form."""
        out: dict[str, Any] = {
            "matched": list(self.weights),
            "pruned_tensors": self.pruned_tensors,
            "candidates": self.candidates,
        }
        if self.left_out:
            out["left_out"] = self.left_out
        return out


def _shapes(model: onnx.ModelProto, sample: Inputs, ctx: Any) -> dict[str, tuple[int, ...]]:
    """Shape of every float32 tensor the graph's nodes compute, from one run."""
    from onnxopt.runtime import run_exposing

    names = [o for node in model.graph.node for o in node.output if o]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    (values,) = run_exposing(probe, names, [sample], target=ctx.target, work_dir=ctx.scratch)
    return {n: v.shape for n, v in values.items() if v.dtype == np.float32}


def _fits(student: tuple[int, ...], teacher: tuple[int, ...]) -> bool:
    """Same rank, at most one axis of another size: an adapter can map it."""
    if len(student) != len(teacher) or len(student) < 2:
        return False
    return sum(s != t for s, t in zip(student, teacher, strict=True)) <= 1


def pruned_features(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    sample: Inputs,
    samples: int,
    weight: float,
    ctx: Any,
) -> Features:
    """The tensors to match where ``student`` was pruned from ``teacher`` (none when it
    was not); ``weight`` is shared equally among them; ``samples`` sizes the memory."""
    own, theirs = _shapes(student, sample, ctx), _shapes(teacher, sample, ctx)
    pruned = {n for n in own if n in theirs and own[n] != theirs[n]}
    result = Features(pruned_tensors=len(pruned))
    if not pruned:
        return result
    outputs = {o.name for o in student.graph.output}
    candidates: list[str] = []
    for node in student.graph.node:
        if not any(i in pruned for i in node.input):
            continue
        for name in node.output:
            fresh = name in theirs and name not in outputs and name not in candidates
            if fresh and name in own and _fits(own[name], theirs[name]):
                candidates.append(name)
    result.candidates = len(candidates)
    chosen = _spread(candidates, MAX_FEATURES)
    per_sample = {n: 4 * int(np.prod(theirs[n])) for n in chosen}
    while chosen and sum(per_sample[n] for n in chosen) * samples > FEATURE_BYTES:
        largest = max(chosen, key=lambda n: per_sample[n])
        chosen.remove(largest)
        result.left_out = (
            f"the largest features left out to hold the teacher's values of {samples} "
            f"samples within {FEATURE_BYTES >> 20} MiB"
        )
    result.weights = {n: weight / len(chosen) for n in chosen}
    return result


def _spread(names: list[str], most: int) -> list[str]:
    """At most ``most`` of ``names`` (in graph order), evenly spaced, the last included."""
    if len(names) <= most:
        return list(names)
    picks = np.linspace(len(names) - 1, 0, most).round().astype(int)
    return [names[i] for i in sorted(set(picks.tolist()))]
