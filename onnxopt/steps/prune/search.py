"""``ratio: auto``: the largest ratio within the budget, and the fidelity without
compensation, both measured against the parent on the input set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import PruneStep
from onnxopt.modelio import save_model
from onnxopt.records import CandidateRow
from onnxopt.steps.base import StepContext
from onnxopt.steps.candidates import record_failure, verify_candidate
from onnxopt.steps.prune.analysis import load_float
from onnxopt.steps.prune.channels import channel_prune
from onnxopt.steps.prune.magnitude import magnitude_prune


def cosine_without_compensation(
    src: Path,
    cfg: PruneStep,
    ctx: StepContext,
    ratio: float | None,
    ratios: dict[str, float] | None = None,
) -> float:
    """Fidelity of the same pruning (the same ratios) without compensation, for the report."""
    import tempfile

    from onnxopt.verify import resolve_tolerance

    plain = load_float(src)
    channel_prune(plain, cfg.model_copy(update={"compensate": False}), ctx, ratio, ratios)
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        probe = save_model(plain, Path(tmp) / "plain.onnx")
        tol = resolve_tolerance(cfg)
        return ctx.verify(probe, ctx.reference(src), tol).min_cosine


def search_ratio(
    src: Path, model: onnx.ModelProto, cfg: PruneStep, ctx: StepContext
) -> tuple[float, list[dict[str, Any]]]:
    """Bisect the largest ratio whose pruned model stays within the budget."""
    import tempfile

    from onnxopt.verify import resolve_tolerance

    reference = ctx.reference(src)
    tol = resolve_tolerance(cfg)
    lo, hi = 0.0, cfg.auto_max_ratio
    trail: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        probe = Path(tmp) / "probe.onnx"
        for step in range(cfg.auto_steps + 1):
            ratio = hi if step == 0 else (lo + hi) / 2
            trial = onnx.ModelProto()
            trial.CopyFrom(model)
            try:
                if cfg.method == "channel":
                    if not channel_prune(trial, cfg, ctx, ratio)["pruned"]:
                        trail.append({"ratio": ratio, "passed": False, "note": "nothing pruned"})
                        hi = ratio
                        continue
                else:
                    magnitude_prune(trial, cfg, ratio)
                save_model(trial, probe)
            except Exception as err:  # noqa: BLE001 - this ratio's failure, not the search's
                row: CandidateRow = {"label": f"ratio {ratio:g}", "status": "running"}
                record_failure(row, "build", err, Path(tmp))
                trail.append({"ratio": ratio, "passed": False, "note": row.get("reason", "")})
                hi = ratio
                continue
            row = {"label": f"ratio {ratio:g}", "status": "running"}
            if verify_candidate(row, probe, ctx, reference, tol) is None:
                trail.append({"ratio": ratio, "passed": False, "note": row.get("reason", "")})
                hi = ratio
                continue
            passed = row["status"] == "verified"
            trail.append({"ratio": ratio, "passed": passed, "cosine": row["cosine"]})
            if passed:
                lo = ratio
                if step == 0:
                    break
            else:
                hi = ratio
    return lo, trail
