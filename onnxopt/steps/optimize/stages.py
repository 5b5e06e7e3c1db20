"""The stages of the search, in the order they compose: structure, graph, precision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from onnxopt.config import OptimizeStep
from onnxopt.steps.optimize import space
from onnxopt.steps.optimize.search import Row, Search, pareto
from onnxopt.steps.optimize.space import STEP_RULES


def ladder(cfg: OptimizeStep) -> list[tuple[str, dict[str, Any]]]:
    """The structure stage's rungs, (label, prune options): shares of the MACs to remove
    (allocated by sensitivity), or uniform ratios when the config names them."""
    if cfg.prune_ratios:
        return [(f"prune {r:g}", {"ratio": r}) for r in cfg.prune_ratios]
    return [(f"prune {t:.0%} MACs", {"macs_target": t}) for t in cfg.prune_targets]


def structure(search: Search) -> None:
    """Channel pruning up a ladder (shares of the MACs, or ratios), each rung recovered
    (distillation from the source, or compensation); the ladder stops at the first rung
    that misses the budget even after recovery, so the model's sensitivity decides how far
    it goes."""
    cfg, ctx = search.cfg, search.ctx
    ops = space.op_counts(search.src)
    if not space.PRUNABLE_OPS & set(ops):
        search.notes.append("structure: nothing to prune (no Conv, Gemm or MatMul weights)")
        return
    how, why = space.recovery(cfg, ctx)
    search.notes.append(f"structure: pruned models recovered by {how} ({why})")
    new: list[Row] = []
    for label, rung in ladder(cfg):
        prune = cfg.step_options(
            "prune", method="channel", **rung, compensate=how == "compensate",
            measure_speed=False, guard=None,
        )  # fmt: skip
        row = search.candidate("structure", label, search.source, prune)
        new.append(row)
        best = row if row["status"] == "verified" else None
        if best is None and how == "distill" and row["id"] in search.paths:
            distill = cfg.step_options("distill", teacher=str(search.src))
            recovered = search.candidate("structure", f"{label} + distill", row, distill)
            new.append(recovered)
            best = recovered if recovered["status"] == "verified" else None
        if best is None:
            failed = new[-1]
            if failed["status"] == "not tried":
                break
            search.notes.append(f"structure: refused from {label} up: {failed.get('reason')}")
            search.refused_structure = f"{failed['label']}: {failed.get('reason')}"
            break
    search.time([r for r in new if r["status"] == "verified"])


def _expand(search: Search, stage: str, step_of: Callable[[Row], dict[str, Any]]) -> None:
    """Apply the stage's step to the fastest ``beam`` models of the Pareto front of those
    that may still take it, and to the source (the most faithful parent: what the step
    alone buys is always in the running); a parent this stage already expanded is not
    expanded again.

    The front is taken among the possible parents only: a model that already holds this
    stage's step (or a later one) cannot be its parent, so it must not push a parent off
    the front either (a quantized source faster than the pruned model would otherwise
    keep the pruned model from ever being quantized)."""
    # the steps that compose at or after this one (structure -> graph -> precision)
    order = list(STAGES)
    at = order.index(STEP_RULES[stage].stage)
    later = {t for t, rule in STEP_RULES.items() if order.index(rule.stage) >= at}
    front = pareto(
        [r for r in search.verified() if not any(s["type"] in later for s in r["chain"])]
    )
    parents = front[: search.cfg.beam]
    if search.source not in parents:
        parents.append(search.source)
    parents = [p for p in parents if (stage, p["id"]) not in search.expanded]
    search.expanded.update((stage, p["id"]) for p in parents)
    new = []
    for parent in parents:
        label = stage if parent["id"] == "source" else f"{parent['label']} > {stage}"
        new.append(search.candidate(stage, label, parent, step_of(parent)))
    search.time([r for r in new if r["status"] == "verified"])


def graph(search: Search) -> None:
    """Graph rewrites: onnxsim, ONNX Runtime's portable level, transformer fusions."""
    options = space.simplify_options(search.cfg, space.op_counts(search.src))
    _expand(search, "simplify", lambda parent: options)


def precision(search: Search) -> None:
    """Every recipe quantize auto would try on this target (CPU-aware), verified and timed
    by it against the candidate's parent; the search then judges it against the source."""
    options = search.cfg.step_options("quantize")
    _expand(search, "quantize", lambda parent: options)


def singles(search: Search) -> None:
    """The graph and precision steps on the source alone, first: they are cheap and what
    they buy is known before the structure stage spends its time (the time budget then
    never leaves the search without them); the stages after expand the rest."""
    if "graph" in search.cfg.stages:
        graph(search)
    if "precision" in search.cfg.stages and not search.out_of_time():
        precision(search)


STAGES: dict[str, Callable[[Search], None]] = {
    "structure": structure,
    "graph": graph,
    "precision": precision,
}


def choose(search: Search) -> Row | None:
    """The fastest verified candidate that beats the source beyond the noise (by
    ``min_speedup``); the two fastest are timed again, interleaved, before the choice."""
    minimum = search.cfg.min_speedup

    def eligible() -> list[Row]:
        rows = [
            r
            for r in search.verified()
            if r["id"] != "source" and r.get("verdict") == "faster" and r["speedup"] >= minimum
        ]
        return sorted(rows, key=lambda r: -r["speedup"])

    ranked = eligible()
    if len(ranked) >= 2:
        top = ranked[:2]
        for row in top:
            row["first_speedup"] = row["speedup"]
        search.time(top, trials=search.cfg.timing.final_trials)
        for row in top:
            row["retimed"] = True
        ranked = eligible()
    for row in pareto(search.verified()):
        row["pareto"] = True
    return ranked[0] if ranked else None
