"""The search's report: the rows as Markdown, the Pareto front as a PNG, the chosen chain
as a pipeline file that ``onnxopt run`` reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from onnxopt.config import OptimizeStep
from onnxopt.steps.base import StepContext
from onnxopt.steps.optimize.search import Row

#: row fields the report keeps (the chain is shown by its labels, the YAML pins it)
FIELDS = (
    "id", "stage", "label", "parent", "status", "failed_at", "reason", "recipe", "cached",
    "seconds",
    "cosine", "task_score", "task_drop", "score", "median_ms", "baseline_median_ms", "speedup",
    "ratio_ci", "verdict", "first_speedup", "retimed", "pareto",
)  # fmt: skip


def public(row: Row) -> dict[str, Any]:
    """A row as the report records it."""
    out = {k: v for k, v in row.items() if k in FIELDS}
    out["chain"] = [s["type"] for s in row.get("chain", [])]
    return out


def _num(value: Any, form: str) -> str:
    return "" if value is None else format(value, form)


def markdown(report: dict[str, Any]) -> str:
    """The search as Markdown: the outcome, then every candidate."""
    lines = ["# onnxopt optimize", "", report["outcome"], ""]
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines += [
        "",
        "| id | stage | candidate | status | speed-up | 95% CI of the ratio | score | "
        "cosine | cached | s | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["candidates"]:
        ci = row.get("ratio_ci")
        mark = " (Pareto)" if row.get("pareto") else ""
        lines.append(
            f"| {row['id']} | {row['stage']} | {row['label']}{mark} | {row['status']} | "
            f"{_num(row.get('speedup'), '.2f')} | "
            f"{'' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | "
            f"{_num(row.get('score'), '.4f')} | {_num(row.get('cosine'), '.4f')} | "
            f"{'yes' if row.get('cached') else ''} | {_num(row.get('seconds'), '.1f')} | "
            f"{(row.get('reason') or row.get('recipe') or '').replace('|', '/')[:160]} |"
        )
    plan = report.get("serving_plan")
    if plan is not None:
        from onnxopt.bench.report import plan_lines

        lines += ["", *plan_lines(plan)]
    return "\n".join(lines) + "\n"


def pareto_png(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Speed-up against score, the front joined; None when written, else why not."""
    try:
        from onnxopt.bench.report import pyplot

        plt = pyplot()
    except Exception as err:  # noqa: BLE001 - the figure is optional; the report says why
        return f"no Pareto figure: {getattr(err, 'message', err)}"
    timed = [r for r in rows if r.get("speedup") is not None and r.get("score") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in timed:
        colour = "#4c72b0" if row["status"] == "verified" else "#c44e52"
        ax.scatter(row["speedup"], row["score"], color=colour, s=30)
        ax.annotate(row["label"], (row["speedup"], row["score"]), fontsize=7)
    front = sorted((r for r in timed if r.get("pareto")), key=lambda r: r["speedup"])
    if front:
        ax.plot([r["speedup"] for r in front], [r["score"] for r in front], color="#4c72b0")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up over the source (median latency)")
    ax.set_ylabel("score (task metric, else min cosine to the source)")
    ax.set_title("candidates (blue: within budget, red: outside); line: Pareto front")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def chain_yaml(cfg: OptimizeStep, ctx: StepContext, chain: list[dict[str, Any]]) -> str:
    """The pipeline that reproduces the chosen candidate: the run's own settings and the
    steps before this one, then the chain (its quantize recipe pinned)."""
    config = ctx.config.model_dump(mode="json", exclude_defaults=True)
    index = next(i for i, s in enumerate(ctx.config.steps) if s is cfg)
    before = config["steps"][:index]
    teacher_is_source = all(s["type"] == "export" for s in before)
    steps = []
    for step in chain:
        step = dict(step)
        if step["type"] == "distill" and teacher_is_source:
            step["teacher"] = "source"
        steps.append(step)
    config.update(name=f"{config.get('name', 'pipeline')}-optimized", steps=before + steps)
    config["output_dir"] = "optimized-chain"
    head = (
        "# The chain onnxopt optimize chose, as a pipeline: `onnxopt run` on this file\n"
        "# writes the same model, byte for byte (output_dir is relative to this file).\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False)
