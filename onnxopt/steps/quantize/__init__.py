"""The quantize step: INT8 dynamic and static, fp16, int4 weight-only, and ``auto``.

Each mode is a backend (:mod:`.backend`; one module each: :mod:`.dynamic`, :mod:`.static`,
:mod:`.fp16`, :mod:`.int4`) behind one shared core (:mod:`.core`): every mode counts what it
really quantized, and a run that quantized nothing fails with the reason. ``auto``
(:mod:`.auto`) tries the recipes that fit and keeps the fastest within the budget;
``diagnose`` (:mod:`.diagnose`) finds the nodes to leave in float. The engine then verifies
the result against its parent with the mode's budget and times it against its parent.
"""

from __future__ import annotations

from pathlib import Path

from onnxopt.config import QuantizeStep
from onnxopt.modelio import load_model
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.quantize.backend import backend, default_tolerance
from onnxopt.steps.quantize.core import op_counts, quantize_once

__all__ = ["default_tolerance", "run"]


def run(src: Path | None, dst: Path, cfg: QuantizeStep, ctx: StepContext) -> StepResult:
    """Quantize ``src`` into ``dst`` with ``cfg.mode`` (``auto``: see :mod:`.auto`)."""
    assert src is not None
    from onnxopt.cpu import int8_facts

    cpu = {**int8_facts().as_dict(), "provider": ctx.target.provider}
    if cfg.mode == "auto":
        from onnxopt.steps.quantize.auto import run_auto

        result = run_auto(src, dst, cfg, ctx)
        result.report["target"] = cpu
        return result
    report = quantize_once(src, dst, cfg, ctx)
    warnings = report.pop("warnings")
    report["target"] = cpu
    verification = None
    if cfg.diagnose and backend(cfg.mode).diagnosable:
        from onnxopt.steps.quantize.diagnose import diagnose_if_needed

        report["diagnosis"], verification = diagnose_if_needed(src, dst, cfg, ctx)
        if report["diagnosis"].get("nodes_to_exclude"):
            report.update(op_counts(load_model(dst, load_weights=False)))
    return StepResult(report=report, warnings=warnings, verification=verification)
