"""What the search may try on this model, here: the facts that open or close a stage."""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxopt.config import OptimizeStep
from onnxopt.graph import iter_graphs
from onnxopt.modelio import load_model
from onnxopt.steps.base import StepContext


@dataclass(frozen=True)
class StepRule:
    """How the search runs candidates of one step type."""

    #: the step keeps the run's task metric (quantize auto judges its recipes by it);
    #: otherwise the search alone judges against the source (a pruned model that misses
    #: the task is still the start of its distillation, not a failed step)
    keeps_evaluate: bool = False
    #: the step reports the configuration it chose (``chosen_config``), which the chain pins
    pins_choice: bool = False
    #: the stage the step belongs to (the stages compose structure -> graph -> precision)
    stage: str = ""


#: step type -> its rule; every step a stage runs is here (tested)
STEP_RULES: dict[str, StepRule] = {
    "prune": StepRule(stage="structure"),
    "distill": StepRule(stage="structure"),
    "simplify": StepRule(stage="graph"),
    "quantize": StepRule(keeps_evaluate=True, pins_choice=True, stage="precision"),
}

#: op types whose presence marks an attention model (onnxruntime.transformers' fusions apply)
ATTENTION_OPS = frozenset({"Softmax"})
#: weight-carrying ops channel pruning can shrink
PRUNABLE_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def op_counts(path: Path) -> Counter[str]:
    """Op types of ``path`` (subgraphs included), weights left on disk."""
    model = load_model(path, load_weights=False)
    return Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)


def recovery(cfg: OptimizeStep, ctx: StepContext) -> tuple[str, str]:
    """How a pruned model wins back fidelity here, and why: (distill | compensate | none,
    the reason)."""
    if cfg.recover in ("compensate", "none"):
        return cfg.recover, f"recover: {cfg.recover} was asked for"
    samples = len(ctx.calibration or [])
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch and samples >= cfg.min_distill_samples:
        return "distill", f"torch and {samples} training samples are there"
    missing = []
    if not has_torch:
        missing.append("torch is not installed (pip install 'onnxopt[torch]')")
    if samples < cfg.min_distill_samples:
        missing.append(
            f"{samples} training samples (the calibration part of --data) < "
            f"min_distill_samples {cfg.min_distill_samples}"
        )
    if cfg.recover == "distill":
        from onnxopt.errors import ConfigError

        raise ConfigError(f"optimize: recover: distill, but {'; '.join(missing)}")
    return "compensate", "no distillation: " + "; ".join(missing)


def simplify_options(cfg: OptimizeStep, ops: Counter[str]) -> dict[str, Any]:
    """The simplify candidate: onnxsim then ONNX Runtime's portable (basic) level, and the
    transformer fusions on attention models, unless the options say otherwise."""
    options = dict(cfg.simplify)
    if "backend" not in options:
        backends = ["onnxsim", "ort"]
        if ATTENTION_OPS & set(ops):
            backends.append("transformers")
        options["backend"] = backends
    options.setdefault("ort", {"level": "basic"})
    options.setdefault("guard", None)  # timed by the search against the source instead
    return cfg.step_options("simplify", **options)
