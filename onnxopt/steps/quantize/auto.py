"""quantize mode ``auto``: try the recipes that fit, keep the fastest within the budget.

Each candidate is produced by the same code as its explicit mode, verified against the
parent on the shared inputs with its mode's budget, and the survivors are timed with the
parent in one interleaved run on the pipeline's target. A candidate wins only when its
ratio's 95% interval lies below 1; when none does, the parent is kept (or, with
``require_speedup``, the step fails with exit code 4).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from onnxopt.config import QuantizeStep
from onnxopt.errors import GateError, OnnxoptError
from onnxopt.graph import iter_graphs
from onnxopt.modelio import check_model, load_model, move_model
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.quantize.backend import Recipe, backend, backends
from onnxopt.steps.quantize.core import quantize_once
from onnxopt.verify import Verification, resolve_tolerance

log = logging.getLogger("onnxopt")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def choose_candidates(
    cfg: QuantizeStep, ops: Counter[str], provider: str, data: bool = False
) -> tuple[list[Recipe], dict[str, str]]:
    """Recipes worth trying for this model, target and data, and why others were left out."""
    recipes = [r for b in backends() for r in b.recipes]
    if cfg.auto.candidates:
        return [r for r in recipes if r.name in cfg.auto.candidates], {}
    chosen: list[Recipe] = []
    skipped: dict[str, str] = {}
    for recipe in recipes:
        reason = recipe.unfit(ops, cfg, provider, data)
        if reason is None:
            chosen.append(recipe)
        else:
            skipped[recipe.name] = reason
    return chosen, skipped


def run_auto(src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext) -> StepResult:
    """Try candidates, verify each, time the survivors with the parent, keep the fastest."""
    from onnxopt.bench.compare import compare_with_parent

    model = load_model(src, load_weights=False)
    ops: Counter[str] = Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)
    del model
    recipes, skipped = choose_candidates(
        cfg, ops, ctx.target.provider, data=ctx.calibration is not None
    )
    names = [r.name for r in recipes]
    reference = ctx.reference(src)
    work = Path(tempfile.mkdtemp(prefix="auto-", dir=ctx.scratch))
    rows: list[dict[str, Any]] = []
    survivors: list[tuple[str, Path]] = []
    verifications: dict[str, Verification] = {}
    base = cfg.model_dump(mode="json")
    try:
        for recipe in recipes:
            name = recipe.name
            sub = QuantizeStep.model_validate(_merge(base, recipe.overrides))
            path = work / f"{name}.onnx"
            row: dict[str, Any] = {"recipe": name, "mode": sub.mode}
            rows.append(row)
            try:
                produced = quantize_once(src, path, sub, ctx)
                check_model(path)
            except OnnxoptError as err:
                row.update(status="failed", reason=err.message)
                continue
            row["quantized_ops"] = produced["new_quantized_ops"]
            tol = resolve_tolerance(sub)
            verification = ctx.verify(path, reference, tol)
            row["cosine"] = (
                verification.min_cosine if (verification.main or {}).get("outputs") else None
            )
            row["min_cosine"] = tol.min_cosine
            if verification.task is not None:
                row["task_score"] = verification.task["score"]
                row["task_drop"] = verification.task["drop"]
            if not verification.passed:
                row.update(status="outside budget")
                continue
            row["status"] = "verified"
            survivors.append((name, path))
            verifications[name] = verification
        if cfg.auto.rescue and ctx.calibration is not None:
            for name, path, verification in _rescue(src, work, base, rows, recipes, ctx):
                survivors.append((name, path))
                verifications[name] = verification
        chosen: str | None = None
        timed: dict[str, dict[str, Any]] = {}
        if survivors:
            timed = compare_with_parent(
                src,
                survivors,
                ctx.inputs,
                ctx.target,
                warmup=cfg.auto.warmup,
                runs=cfg.auto.runs,
                trials=cfg.auto.trials,
            )
            best_ratio = 1.0
            for name, cmp_ in timed.items():
                row = next(r for r in rows if r["recipe"] == name)
                row.update(
                    median_ms=cmp_["median_ms"],
                    parent_median_ms=cmp_["parent_median_ms"],
                    speedup=cmp_["speedup"],
                    ratio_ci=cmp_["ratio_ci"],
                    verdict=cmp_["verdict"],
                )
                if cmp_["verdict"] == "faster" and cmp_["ratio"] < best_ratio:
                    best_ratio, chosen = cmp_["ratio"], name
        report: dict[str, Any] = {
            "mode": "auto",
            "candidates": rows,
            "not_tried": skipped,
            "chosen": chosen,
        }
        if chosen is None:
            why = (
                "no candidate met the accuracy budget"
                if not survivors
                else "no candidate was faster than the parent beyond the noise"
            )
            report["reason"] = why
            if cfg.auto.require_speedup:
                raise GateError(
                    f"quantize auto: {why}; tried {', '.join(names) or 'nothing'}",
                    hint="give representative calibration data, widen the budget, or drop "
                    "require_speedup",
                )
            return StepResult(
                report=report,
                warnings=[f"quantize auto: {why}; keeping the parent"],
                keep_parent=True,
            )
        move_model(dict(survivors)[chosen], dst)
        speed = {k: v for k, v in timed[chosen].items() if k != "verdict"}
        return StepResult(report=report, verification=verifications[chosen], speed=speed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rescue(
    src: Path,
    work: Path,
    base: dict[str, Any],
    rows: list[dict[str, Any]],
    recipes: list[Recipe],
    ctx: StepContext,
) -> list[tuple[str, Path, Verification]]:
    """Diagnose the int8 candidates that missed the budget, closest first, within the time
    and node bounds; each repaired one gets its own row (``repaired_from``)."""
    from onnxopt.steps.quantize.diagnose import diagnose

    cfg = QuantizeStep.model_validate(base)
    deadline = time.monotonic() + cfg.auto.rescue_seconds
    by_name = {r.name: r for r in recipes}

    def repairable(row: dict[str, Any]) -> bool:
        spec = backend(by_name[row["recipe"]].overrides.get("mode", ""))
        return row.get("status") == "outside budget" and spec.diagnosable and spec.int8

    missed = [r for r in rows if repairable(r)]
    missed.sort(key=lambda r: -(r.get("cosine") or -1.0))
    reference = ctx.reference(src)
    repaired = []
    for row in missed:
        if time.monotonic() > deadline:
            row["rescue"] = "not tried: out of rescue time"
            continue
        sub = QuantizeStep.model_validate(
            _merge(
                base,
                {
                    **by_name[row["recipe"]].overrides,
                    "diagnose": False,
                    "diagnose_max_excluded": cfg.auto.rescue_max_excluded,
                },
            )
        )
        name = f"{row['recipe']}+excluded"
        path = work / f"{name}.onnx"
        try:
            report, verification = diagnose(src, path, sub, ctx, reference, deadline)
        except OnnxoptError as err:
            row["rescue"] = f"failed: {err.message}"
            continue
        excluded = report["nodes_to_exclude"]
        if verification is None:
            row["rescue"] = (
                f"no exclusion list of at most {cfg.auto.rescue_max_excluded} nodes met the "
                f"budget{' in the time' if report.get('stopped') else ''}"
            )
            continue
        row["rescue"] = f"repaired as {name}"
        rows.append(
            {
                "recipe": name,
                "mode": sub.mode,
                "repaired_from": row["recipe"],
                "nodes_to_exclude": excluded,
                "yaml": report["yaml"],
                "cosine": verification.min_cosine,
                "min_cosine": row.get("min_cosine"),
                "status": "verified",
            }
        )
        repaired.append((name, path, verification))
    return repaired
