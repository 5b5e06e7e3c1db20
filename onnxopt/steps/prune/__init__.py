"""The prune step on the ONNX graph itself: structured channel pruning (:mod:`.analysis`
finds the groups of channels that go together, :mod:`.channels` removes them) and
unstructured magnitude pruning (:mod:`.magnitude`); ``ratio: auto`` searches the largest
ratio within the budget (:mod:`.search`)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

from onnxopt.config import PruneStep
from onnxopt.errors import StepError
from onnxopt.graph import summary
from onnxopt.modelio import load_model, save_model
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.prune.analysis import load_float
from onnxopt.steps.prune.channels import channel_prune
from onnxopt.steps.prune.magnitude import magnitude_prune, magnitude_prune_streaming
from onnxopt.steps.prune.search import cosine_without_compensation, search_ratio

log = logging.getLogger("onnxopt")

__all__ = ["channel_prune", "magnitude_prune", "run"]


def run(src: Path | None, dst: Path, cfg: PruneStep, ctx: StepContext) -> StepResult:
    """Prune ``src`` into ``dst``."""
    from onnxopt.inspection import compute_macs
    from onnxopt.modelio import model_size

    assert src is not None
    from onnxopt.modelio import external_data_files

    # magnitude pruning of external weights streams them file to file (models over 2 GB)
    streaming = cfg.method == "magnitude" and cfg.ratio != "auto" and bool(external_data_files(src))
    model = load_model(src, load_weights=False) if streaming else load_float(src)
    before = summary(model)
    # shapes inference cannot tell are read from a run on a real sample (generated token ids
    # can fall outside an embedding's table)
    macs_before = compute_macs(load_model(src, load_weights=False), ctx.dims, src, ctx.inputs)[
        "macs"
    ]
    warnings: list[str] = []
    search: list[dict[str, Any]] | None = None
    ratio: float | None = None
    if cfg.ratio == "auto":
        ratio, search = search_ratio(src, model, cfg, ctx)
        if ratio <= 0.0:
            reason = (
                f"ratio auto: no ratio above 0 keeps the model within the budget (searched up "
                f"to {cfg.auto_max_ratio} in {cfg.auto_steps} steps)"
            )
            return StepResult(
                report={
                    "method": cfg.method,
                    "auto": {"ratio": 0.0, "search": search},
                    "reason": reason,
                },  # fmt: skip
                warnings=[
                    f"{reason}; keeping the parent. Widen the budget or prune fewer layers "
                    "(ignore, layer_ratios)"
                ],
                keep_parent=True,
            )
    if cfg.method == "channel" and cfg.macs_target is not None:
        facts = _allocated(src, model, cfg, ctx, macs_before)
    elif cfg.method == "channel":
        facts = channel_prune(model, cfg, ctx, ratio)
    if cfg.method == "channel":
        if not facts["pruned"]:
            reasons = [g.get("reasons") for g in facts["groups"] if not g["prunable"]]
            first = "; ".join(str(r) for r in (reasons[0] or [])[:3]) if reasons else ""
            raise StepError(
                f"channel pruning removed nothing: {len(facts['groups'])} group(s) found, "
                f"none prunable at {_asked(cfg, ratio)}",
                hint=f"first reasons: {first}" if first else "raise the ratio",
            )
    else:
        if streaming:
            del model
            facts = magnitude_prune_streaming(src, dst, cfg)
        else:
            facts = magnitude_prune(model, cfg, ratio)
        warnings.append(
            "unstructured sparsity: dense CPU kernels do not skip zeros, so the model is no "
            "faster; it compresses better (see compressed_size)"
        )
    if search is not None:
        facts["auto"] = {"ratio": ratio, "search": search}
    if cfg.method == "channel" and cfg.compensate:
        plain = facts.get("allocation", {}).get("ratios")
        facts["cosine_without_compensation"] = cosine_without_compensation(
            src, cfg, ctx, ratio, plain
        )
    if not streaming:
        save_model(model, dst, external_data=ctx.config.external_data)
        del model  # models over 2 GB: do not hold two copies
    after_model = load_model(dst, load_weights=False)
    after = summary(after_model)
    report: dict[str, Any] = {
        "method": cfg.method,
        **facts,
        "parameters_before": before["parameters"],
        "parameters_after": after["parameters"],
        "macs_before": macs_before,
        "macs_after": compute_macs(after_model, ctx.dims, dst, ctx.inputs)["macs"],
        "size_before": model_size(src),
        "size_after": model_size(dst),
    }
    if cfg.method == "magnitude" and not streaming:  # gzip of 2 GB+ would take minutes
        report["compressed_size_before"] = len(gzip.compress(src.read_bytes(), 6))
        report["compressed_size_after"] = len(gzip.compress(dst.read_bytes(), 6))
    return StepResult(report=report, warnings=warnings)


#: rounds of allocation asked for more when the pruned model's MACs fell short of the target
ALLOCATION_ROUNDS = 4


def _allocated(
    src: Path, model: Any, cfg: PruneStep, ctx: StepContext, macs_before: int
) -> dict[str, Any]:
    """Channel pruning by allocation (:mod:`.allocate`): the least costly per-group ratios
    whose pruned model removes ``macs_target`` of the MACs, checked on the pruned model."""
    import onnx

    from onnxopt.steps.prune import allocate

    assert cfg.macs_target is not None
    found = allocate.measured(src, model, cfg, ctx)
    costs, total = found.costs, found.total
    if not total or not macs_before:
        raise StepError(
            "macs_target: the model's MACs could not be counted (no Conv, Gemm or MatMul "
            "whose shapes are known at these dims)",
            hint="give --data with real samples, or prune by --ratio",
        )
    goal = cfg.macs_target
    ask = goal
    facts: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    reached = 0.0
    for _ in range(ALLOCATION_ROUNDS):
        ratios = allocate.allocate(costs, total, ask, cfg)
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        facts = channel_prune(trial, cfg, ctx, ratios=ratios)
        after = _macs(trial, ctx)
        reached = 1.0 - after / macs_before if macs_before else 0.0
        log.info(
            "macs_target %.3f: asked %.3f, estimated %.3f, reached %.3f", goal, ask,
            allocate.estimated_saving(costs, ratios, cfg) / total, reached,
        )  # fmt: skip
        if reached >= goal - 0.005 or ask >= 1.0:
            break
        ask = min(1.0, ask + (goal - reached))  # interactions saved less than estimated
    model.CopyFrom(trial)
    estimated = allocate.estimated_saving(costs, ratios, cfg) / total if total else 0.0
    facts["allocation"] = {
        "macs_target": goal,
        "macs_removed": round(reached, 4),
        "estimated": round(estimated, 4),
        "measured_on": _measured_on(ctx, found.samples),
        "ratios": ratios,
        "groups": allocate.report(costs, ratios, cfg),
    }
    return facts


def _measured_on(ctx: StepContext, samples: int) -> str:
    if not ctx.calibration:
        return "the verification inputs (the run has no data to calibrate on)"
    return f"{samples} calibration samples"


def _asked(cfg: PruneStep, ratio: float | None) -> str:
    if cfg.macs_target is not None:
        return f"macs_target {cfg.macs_target:g}"
    return f"ratio {ratio if ratio is not None else cfg.ratio}"


def _macs(model: Any, ctx: StepContext) -> int:
    """The MACs of ``model`` counted as the report counts them (shapes that inference
    cannot tell read from one run)."""
    import tempfile

    from onnxopt.inspection import compute_macs
    from onnxopt.modelio import save_model

    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        path = save_model(model, Path(tmp) / "trial.onnx")
        return int(compute_macs(model, ctx.dims, path, ctx.inputs)["macs"])
