"""The record every quantization backend fills in, and the table of them.

A backend is one module with a :class:`Backend` record: how it writes a quantized model,
who wrote it (for messages), why it may quantize nothing, the oldest opset it works from,
its default budget, whether diagnosis can exclude its nodes, and the recipes ``auto`` may
try with it. Adding a backend is that module, its options class in
:mod:`onnxopt.config.quantize`, and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.config import QuantizeStep
from onnxopt.registry import Bounds
from onnxopt.steps.base import StepContext

#: (src, out, cfg, ctx, notes) -> facts for the report: write ``out`` from ``src``
Writer = Callable[[Path, Path, QuantizeStep, StepContext, list[str]], dict[str, Any]]


def _quantized_nothing(facts: dict[str, Any], counts: dict[str, Any]) -> bool:
    return not counts["new_quantized_ops"]


class OpCounts(Counter[str]):
    """Op types counted over the graph and its control-flow bodies; ``main``: those of the
    top graph alone (what a quantizer that skips If/Loop/Scan bodies can reach)."""

    def __init__(self, every: Counter[str], main: Counter[str] | None = None) -> None:
        super().__init__(every)
        self.main: Counter[str] = Counter(every if main is None else main)

    @classmethod
    def of(cls, graph: Any) -> OpCounts:
        """The counts of an ONNX graph (its bodies included)."""
        from onnxopt.graph import iter_graphs

        every = Counter(n.op_type for g in iter_graphs(graph) for n in g.node)
        return cls(every, Counter(n.op_type for n in graph.node))


@dataclass(frozen=True)
class Recipe:
    """A configuration ``auto`` may try, and when it does not fit.

    ``unfit(ops, cfg, provider, data)`` returns why the recipe is not tried (None: try it);
    ``data`` tells whether the run has the user's data (a calibration part).
    """

    name: str
    overrides: dict[str, Any]
    unfit: Callable[[Counter[str], QuantizeStep, str, bool], str | None]
    #: tried only where the target's U8S8 kernel saturates (x86-64 without VNNI/AMX)
    saturating_only: bool = False


@dataclass(frozen=True)
class Backend:
    """One quantization backend (a ``mode`` of the quantize step)."""

    mode: str
    write: Writer
    producer: str
    why_nothing: str
    tolerance: Bounds
    min_opset: int = 10
    #: a CPU without int8 dot-product instructions may not run it faster
    int8: bool = False
    diagnosable: bool = True
    per_channel: Callable[[QuantizeStep], bool] = lambda cfg: False
    did_nothing: Callable[[dict[str, Any], dict[str, Any]], bool] = _quantized_nothing
    nothing_text: str = "quantization quantized nothing"
    #: a warning for this target, or None
    target_note: Callable[[str], str | None] = lambda provider: None
    #: writes from the weight-less graph (models over 2 GB), or returns None when it cannot
    stream: (
        Callable[[Any, Path, Path, QuantizeStep, StepContext, list[str]], dict[str, Any] | None]
        | None
    ) = None
    stream_producer: str = ""
    recipes: tuple[Recipe, ...] = field(default_factory=tuple)


#: mode -> "module:BACKEND" of each backend, in the order auto tries their recipes
BACKENDS: dict[str, str] = {
    "static": "onnxopt.steps.quantize.static:BACKEND",
    "dynamic": "onnxopt.steps.quantize.dynamic:BACKEND",
    "int4": "onnxopt.steps.quantize.int4:BACKEND",
    "fp16": "onnxopt.steps.quantize.fp16:BACKEND",
}


def backend(mode: str) -> Backend:
    """The backend record of a mode."""
    module, _, name = BACKENDS[mode].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def backends() -> list[Backend]:
    """Every backend, in table order."""
    return [backend(mode) for mode in BACKENDS]


def default_tolerance(cfg: QuantizeStep, mode: str | None = None) -> Bounds:
    """The default bounds of a quantize step (``mode``: an auto candidate's)."""
    return backend(mode or cfg.mode).tolerance


def key_extra(step: QuantizeStep, chain: Any, base_dir: Any) -> Any:
    """What an int8 step's artifact depends on beyond its config: whether ONNX Runtime's U8S8
    kernel saturates on this CPU (it decides the default weight range and the auto
    candidates), so a cache filled on one CPU is not reused on another."""
    if step.mode not in ("static", "dynamic", "auto"):
        return None
    from onnxopt.cpu import int8_facts

    return {"u8s8_saturates": int8_facts().u8s8_saturates}
