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

from onnxopt import deadline
from onnxopt.config import QuantizeStep
from onnxopt.config.quantize import MODE_SECTIONS
from onnxopt.cpu import Int8Facts
from onnxopt.errors import GateError, failure_reason
from onnxopt.modelio import check_model, load_model, move_model
from onnxopt.records import CandidateRow
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.candidates import record_failure, speed_of, time_rows, verify_candidate
from onnxopt.steps.quantize.backend import OpCounts, Recipe, backend, backends
from onnxopt.steps.quantize.core import on_cpu, quantize_once, saturates
from onnxopt.verify import Reference, Verification, resolve_tolerance

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


def candidate_config(base: dict[str, Any], overrides: dict[str, Any]) -> QuantizeStep:
    """A candidate's own config: auto's settings with the recipe's, its mode's section only."""
    merged = _merge(base, overrides)
    return QuantizeStep.model_validate(
        {k: v for k, v in merged.items() if k not in MODE_SECTIONS or k == merged["mode"]}
    )


def choose_candidates(
    cfg: QuantizeStep,
    ops: Counter[str],
    provider: str,
    data: bool = False,
    saturating: bool = False,
) -> tuple[list[Recipe], dict[str, str]]:
    """Recipes worth trying for this model, target and data, and why others were left out.

    ``saturating``: the target's U8S8 kernel clamps 16-bit intermediates (measured; x86-64
    without VNNI/AMX), which adds the recipes that avoid it (7-bit and uint8 weights).
    """
    recipes = [r for b in backends() for r in b.recipes]
    if cfg.auto.candidates:
        return [r for r in recipes if r.name in cfg.auto.candidates], {}
    chosen: list[Recipe] = []
    skipped: dict[str, str] = {}
    for recipe in recipes:
        reason = recipe.unfit(ops, cfg, provider, data)
        if reason is None and recipe.saturating_only and not saturating:
            reason = (
                "the target's U8S8 int8 kernel does not saturate (measured): 8-bit int8 "
                "weights lose nothing there"
                if on_cpu(provider)
                else f"for CPUs whose U8S8 kernel saturates; the target is {provider}"
            )
        if reason is None:
            chosen.append(recipe)
        else:
            skipped[recipe.name] = reason
    return chosen, skipped


def _build(
    src: Path,
    path: Path,
    sub: QuantizeStep,
    ctx: StepContext,
    reference: Reference,
    row: CandidateRow,
) -> Verification | None:
    """Write, check and verify one candidate, filling its row; None when it failed.

    A candidate that cannot be written, loaded or run on the target (a crash of the runtime
    included: the first run is in a child process) is recorded with its error and dropped:
    one recipe's failure never ends the search.
    """
    stage = "build"
    try:
        produced = quantize_once(src, path, sub, ctx, label=row["recipe"])
        row["quantized_ops"] = produced["new_quantized_ops"]
        for key in ("reduce_range", "weight_type"):
            if key in produced:
                row[key] = produced[key]
        stage = "load"
        check_model(path)
    except Exception as err:  # noqa: BLE001 - recorded; the search goes on
        record_failure(row, stage, err, path.parent)
        return None
    verification = verify_candidate(row, path, ctx, reference, resolve_tolerance(sub))
    return verification if row["status"] == "verified" else None


def _time(
    src: Path, rows: list[CandidateRow], work: Path, cfg: QuantizeStep, ctx: StepContext
) -> None:
    """Time the candidates of ``rows`` with the parent, interleaved, into the rows."""
    time_rows(
        src,
        [(row, work / f"{row['recipe']}.onnx") for row in rows],
        ctx,
        warmup=cfg.auto.warmup,
        runs=cfg.auto.runs,
        trials=cfg.auto.trials,
        scratch=work,
    )


def within_reach(rows: list[CandidateRow], data: bool, task: bool) -> str:
    """What the candidates outside the budget would have bought, and the flag that judges
    the task instead ('' when none ran)."""
    near = [r for r in rows if r.get("status") == "outside budget"]
    near.sort(key=lambda r: -(r.get("speedup") or 0.0))
    parts = []
    for row in near[:3]:
        speed, verdict = row.get("speedup"), row.get("verdict")
        if speed is None:
            gain = "not timed"
        elif verdict == "faster":
            gain = f"{speed:.2f}x faster"
        else:
            gain = f"not faster ({speed:.2f}x)"
        parts.append(f"{row['recipe']}: {gain}, but {row.get('reason', 'outside the budget')}")
    if not parts:
        return ""
    text = "; ".join(parts)
    if not task and any(r.get("verdict") == "faster" for r in near):
        flags = "--evaluate (and --max-drop)" if data else "--data and --evaluate"
        text += f"; give {flags} to judge the task instead of the outputs' cosine"
    return text


def run_auto(src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext) -> StepResult:
    """Try candidates, verify each, time the survivors with the parent, keep the fastest."""
    from onnxopt.cpu import int8_facts

    model = load_model(src, load_weights=False)
    ops = OpCounts.of(model.graph)
    del model
    saturating = saturates(ctx.target.provider)
    recipes, skipped = choose_candidates(
        cfg, ops, ctx.target.provider, data=ctx.calibration is not None, saturating=saturating
    )
    names = [r.name for r in recipes]
    reference = ctx.reference(src)
    work = Path(tempfile.mkdtemp(prefix="auto-", dir=ctx.scratch))
    rows: list[CandidateRow] = []
    survivors: list[tuple[str, Path]] = []
    verifications: dict[str, Verification] = {}
    configs: dict[str, dict[str, Any]] = {}  # what an explicit step makes the same way
    base = cfg.model_dump(mode="json")
    try:
        cut_short = False
        for recipe in recipes:
            sub = candidate_config(base, recipe.overrides)
            configs[recipe.name] = sub.model_dump(mode="json", exclude_defaults=True)
            path = work / f"{recipe.name}.onnx"
            row: CandidateRow = {"recipe": recipe.name, "status": "running", "mode": sub.mode}
            rows.append(row)
            if rows[:-1] and deadline.passed():  # the first recipe always runs
                row.update({"status": "not tried", "reason": deadline.REASON})
                cut_short = True
                continue
            verification = _build(src, path, sub, ctx, reference, row)
            if verification is not None:
                survivors.append((recipe.name, path))
                verifications[recipe.name] = verification
        if cfg.auto.rescue and ctx.calibration is not None and not deadline.passed():
            for name, path, verification in _rescue(src, work, base, rows, recipes, ctx):
                survivors.append((name, path))
                verifications[name] = verification
                row = next(r for r in rows if r["recipe"] == name)
                configs[name] = {
                    **configs[row["repaired_from"]],
                    "nodes_to_exclude": row["nodes_to_exclude"],
                }
        by_name = {r["recipe"]: r for r in rows}
        _time(src, [by_name[name] for name, _ in survivors], work, cfg, ctx)
        chosen: str | None = None
        for name, _ in survivors:
            row = by_name[name]
            faster = row["status"] == "verified" and row.get("verdict") == "faster"
            if faster and row["speedup"] > (by_name[chosen]["speedup"] if chosen else 1.0):
                chosen = name
        report: dict[str, Any] = {
            "mode": "auto",
            "candidates": rows,
            "not_tried": skipped,
            "chosen": chosen,
            **({"cut_short": True} if cut_short else {}),
        }
        if on_cpu(ctx.target.provider) and not cfg.auto.candidates:
            report["cpu_decision"] = _decided_by(int8_facts(), names)
        if chosen is None:
            return _keep_parent(src, work, rows, survivors, report, names, cfg, ctx)
        report["chosen_config"] = configs[chosen]
        move_model(dict(survivors)[chosen], dst)
        speed = speed_of(by_name[chosen])
        return StepResult(report=report, verification=verifications[chosen], speed=speed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _decided_by(facts: Int8Facts, names: list[str]) -> dict[str, Any]:
    """The CPU facts that shaped the candidate list, for the report."""
    return {
        "int8_dot_product": facts.dot_product,
        "u8s8_saturates": facts.u8s8_saturates,
        "added_recipes": [
            r.name for b in backends() for r in b.recipes if r.saturating_only and r.name in names
        ],
        "summary": facts.summary(),
    }


def by_status(rows: list[CandidateRow], name: str) -> str | None:
    """The status of candidate ``name``."""
    return next((r.get("status") for r in rows if r["recipe"] == name), None)


def _keep_parent(
    src: Path,
    work: Path,
    rows: list[CandidateRow],
    survivors: list[tuple[str, Path]],
    report: dict[str, Any],
    names: list[str],
    cfg: QuantizeStep,
    ctx: StepContext,
) -> StepResult:
    """No candidate won: say why, with what the ones outside the budget would have bought
    (timed against the parent for it when none was verified: their rows get a speed-up but
    keep their status)."""
    outside = [(r["recipe"], work / f"{r['recipe']}.onnx") for r in rows]
    outside = [(n, p) for n, p in outside if by_status(rows, n) == "outside budget" and p.exists()]
    if not survivors and outside:
        # their rows get a speed-up but keep their status
        missed = [next(r for r in rows if r["recipe"] == name) for name, _ in outside]
        status = [(r["status"], r.get("reason")) for r in missed]
        _time(src, missed, work, cfg, ctx)
        for row, (was, why) in zip(missed, status, strict=True):
            if row["status"] == "failed":  # a timing failure does not hide the budget miss
                row.pop("failed_at", None)
            row["status"], row["reason"] = was, why or ""
    if survivors:
        why = "no candidate was faster than the parent beyond the noise"
    elif any(r.get("status") == "outside budget" for r in rows):
        why = "no candidate met the accuracy budget"
    elif rows:
        why = "every candidate failed to build or run"
    else:
        why = "no recipe fits this model and target"
    reach = within_reach(rows, ctx.calibration is not None, ctx.evaluator is not None)
    if reach:
        report["within_reach"] = reach
        why = f"{why} ({reach})"
    report["reason"] = why
    if cfg.auto.require_speedup:
        raise GateError(
            f"quantize auto: {why}; tried {', '.join(names) or 'nothing'}",
            hint="give representative calibration data, widen the budget, or drop require_speedup",
        )
    return StepResult(
        report=report,
        warnings=[f"quantize auto: {why}; keeping the parent"],
        keep_parent=True,
    )


def _rescue(
    src: Path,
    work: Path,
    base: dict[str, Any],
    rows: list[CandidateRow],
    recipes: list[Recipe],
    ctx: StepContext,
) -> list[tuple[str, Path, Verification]]:
    """Diagnose the int8 candidates that missed the budget, closest first, within the time
    and node bounds; each repaired one gets its own row (``repaired_from``)."""
    from onnxopt.steps.quantize.diagnose import diagnose

    cfg = QuantizeStep.model_validate(base)
    deadline = time.monotonic() + cfg.auto.rescue_seconds
    by_name = {r.name: r for r in recipes}

    def repairable(row: CandidateRow) -> bool:
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
        sub = candidate_config(
            base,
            {
                **by_name[row["recipe"]].overrides,
                "diagnose": False,
                "diagnose_max_excluded": cfg.auto.rescue_max_excluded,
            },
        )
        name = f"{row['recipe']}+excluded"
        path = work / f"{name}.onnx"
        try:
            report, verification = diagnose(src, path, sub, ctx, reference, deadline)
        except Exception as err:  # noqa: BLE001 - recorded; the search goes on
            row["rescue"] = f"failed: {failure_reason(err, path.parent)}"
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
                "min_cosine": row["min_cosine"],
                "status": "verified",
            }
        )
        repaired.append((name, path, verification))
    return repaired
