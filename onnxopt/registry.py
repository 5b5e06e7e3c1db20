"""The one table of steps: per step its config class, runner, kind and default tolerance.

Everything else is derived from it: the step types the config accepts, the pipeline rules
that depend on a step's kind, the cache key's extras, the tolerance a step's artifact is
judged with. Config classes and runners are import strings, imported when first needed, so
``onnxopt --help`` imports neither onnx nor onnxruntime.

Adding a step is one module with ``run(src, dst, cfg, ctx) -> StepResult``, one config
class (a :class:`onnxopt.config.StepBase` with ``type: Literal["name"]``) and one line in
:data:`STEPS` (or :func:`register`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

#: model: ONNX in, ONNX out (the chain goes on with the new model); files: ONNX in, other
#: files out (the chain goes on with the parent); measure: reads every model so far, writes
#: a report (the chain goes on with the parent)
Kind = Literal["model", "files", "measure"]
#: (atol, rtol, min_cosine)
Bounds = tuple[float, float, float]

#: fp32 graph rewrites are held tight; reduced precision is judged by cosine (and top-1
#: agreement when asked), not elementwise
FP32_REWRITE: Bounds = (1e-4, 1e-3, 0.9999)
#: no bound at all: the figures are recorded, nothing is judged (unless the config sets one)
NO_BOUND: Bounds = (math.inf, math.inf, -1.0)


@dataclass(frozen=True)
class StepSpec:
    """Everything the engine and the config loader need to know about one step type.

    Attributes:
        name: the step's ``type`` in YAML, and its subcommand.
        config: ``module:Class`` of its config (a StepBase subclass).
        runner: ``module:function`` with ``run(src, dst, cfg, ctx) -> StepResult``.
        kind: what it reads and writes (see :data:`Kind`).
        tolerance: the default bounds its artifact is verified with against its parent, or
            ``module:function`` returning them for a config (per quantization backend).
        reads_pytorch: it turns the PyTorch source into ONNX (first step, torch extra,
            torch's version in its cache key, no ONNX parent to guard against).
        once: it may appear at most once in a pipeline (why, for the error message).
        suffix: the file name ending of a files or measure step's output
            (``NN-<name><suffix>``; a model step writes ``NN-<name>-<hash8>.onnx``).
        lossy: it changes the function on purpose (reduced precision, removed weights): a
            proof on generated inputs does not cover the task, and the run says so.
        uses_torch: it runs torch (torch's version joins its cache key).
        key_extra: ``module:function(step, chain, base_dir)`` returning what else its cache
            key must cover (a distill step's teacher bytes); ``chain`` is the (label, path,
            digest) of every model so far.
    """

    name: str
    config: str
    runner: str
    kind: Kind = "model"
    tolerance: Bounds | str | None = FP32_REWRITE
    reads_pytorch: bool = False
    once: str | None = None
    suffix: str = ".onnx"
    lossy: bool = False
    uses_torch: bool = False
    key_extra: str | None = None


STEPS: dict[str, StepSpec] = {}


def register(spec: StepSpec) -> None:
    """Add (or replace) a step type."""
    STEPS[spec.name] = spec
    _CLASSES.clear()


def unregister(name: str) -> None:
    """Remove a step type."""
    del STEPS[name]
    _CLASSES.clear()


for _spec in (
    StepSpec(
        "export",
        "onnxopt.config.steps:ExportStep",
        "onnxopt.steps.export:run",
        reads_pytorch=True,
    ),
    StepSpec("simplify", "onnxopt.config.steps:SimplifyStep", "onnxopt.steps.simplify:run"),
    StepSpec(
        "bench",
        "onnxopt.config.steps:BenchStep",
        "onnxopt.steps.bench:run",
        kind="measure",
        tolerance=None,
        suffix=".json",
    ),
    StepSpec(
        "quantize",
        "onnxopt.config.quantize:QuantizeStep",
        "onnxopt.steps.quantize:run",
        tolerance="onnxopt.steps.quantize:default_tolerance",
        lossy=True,
        key_extra="onnxopt.steps.quantize.backend:key_extra",
        once="quantizing an already quantized model stacks precision losses. Use one step "
        "(mode: auto tries several recipes)",
    ),
    # pruning changes the function on purpose: no bound unless the config sets a budget
    StepSpec(
        "prune",
        "onnxopt.config.steps:PruneStep",
        "onnxopt.steps.prune:run",
        tolerance=NO_BOUND,
        lossy=True,
    ),
    # judged against its teacher by the step itself; no bound unless the config sets one
    StepSpec(
        "distill",
        "onnxopt.config.distill:DistillStep",
        "onnxopt.steps.distill:run",
        tolerance=NO_BOUND,
        lossy=True,
        uses_torch=True,
        key_extra="onnxopt.steps.distill.teacher:key_extra",
    ),
    # compared with its parent run at the conversion's own settings: the same kernels
    StepSpec(
        "package",
        "onnxopt.config.steps:PackageStep",
        "onnxopt.steps.package:run",
        kind="files",
        suffix=".ort",
    ),
    # searches chains of the steps above; its artifact is judged against the source with
    # the output budget of reduced precision unless the run has a task metric
    StepSpec(
        "optimize",
        "onnxopt.config.optimize:OptimizeStep",
        "onnxopt.steps.optimize:run",
        tolerance=(math.inf, math.inf, 0.99),
        lossy=True,
        uses_torch=True,
        once="optimize searches the whole chain itself; use it once",
    ),
):
    STEPS[_spec.name] = _spec

#: Step types that exist in the roadmap but not yet in this release: name -> issue.
PLANNED: dict[str, int] = {}


def spec(step_type: str) -> StepSpec:
    """The spec of a registered step type."""
    return STEPS[step_type]


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def key_extra(step: Any, chain: list[Any], base_dir: Any) -> Any:
    """What else a step's cache key covers (None for most steps)."""
    target = STEPS[step.type].key_extra
    return None if target is None else _load(target)(step, chain, base_dir)


def runner(step_type: str) -> Callable[..., Any]:
    """Import and return the runner of a step type."""
    return _load(STEPS[step_type].runner)  # type: ignore[no-any-return]


def config_class(step_type: str) -> type[Any]:
    """Import and return the config class of a step type."""
    return config_classes()[step_type]


def config_classes() -> dict[str, type[Any]]:
    """Every registered step type's config class, in registration order."""
    if set(_CLASSES) != set(STEPS):
        _CLASSES.clear()
        _CLASSES.update({name: _load(s.config) for name, s in STEPS.items()})
    return dict(_CLASSES)


_CLASSES: dict[str, type[Any]] = {}


def default_bounds(step: Any, mode: str | None = None) -> Bounds:
    """The default (atol, rtol, min_cosine) of a step config (``mode``: a quantize backend)."""
    bounds = STEPS[step.type].tolerance
    if bounds is None:
        raise KeyError(f"step type {step.type!r} produces no model to verify")
    if isinstance(bounds, str):
        return _load(bounds)(step, mode)  # type: ignore[no-any-return]
    return bounds
