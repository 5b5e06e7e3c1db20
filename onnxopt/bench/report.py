"""Bench report renderings: rich table, Markdown, CSV and a PNG plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.table import Table

from onnxopt.errors import MissingDependencyError

COLUMNS = (
    "model",
    "provider",
    "threads",
    "batch",
    "p50",
    "p90",
    "p99",
    "mean",
    "std",
    "throughput",
    "cold_create",
    "cold_first",
    "ratio",
    "ratio_ci",
    "verdict",
    "cosine",
)


def _cosine(row: dict[str, Any]) -> float | None:
    outputs = (row.get("fidelity") or {}).get("outputs") or []
    values = [o["cosine"] for o in outputs if "cosine" in o]
    return min(values) if values else None


def flat_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat dict per result row (for tables, Markdown and CSV)."""
    rows = []
    for r in report["results"]:
        lat, cmp_ = r["latency_ms"], r.get("compare") or {}
        rows.append(
            {
                "model": r["model"],
                "provider": r["provider"],
                "threads": r.get("threads", 0) or "default",
                "batch": r.get("batch", 1),
                "p50": lat["p50"],
                "p90": lat["p90"],
                "p99": lat["p99"],
                "mean": lat["mean"],
                "std": lat["std"],
                "throughput": lat["throughput"],
                "cold_create": r["cold_start"]["create_ms"],
                "cold_first": r["cold_start"]["first_run_ms"],
                "ratio": cmp_.get("ratio"),
                "ratio_ci": cmp_.get("ratio_ci"),
                "verdict": cmp_.get("verdict", "baseline"),
                "cosine": _cosine(r),
            }
        )
    return rows


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "ratio_ci":
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    if key == "cosine":
        return f"{value:.6f}"
    if key == "throughput":
        return f"{value:.1f}/s"
    if key == "ratio":
        return f"{value:.3f}x"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(report: dict[str, Any]) -> Table:
    """Rich table of the results (latencies in ms)."""
    t = Table(
        title="onnxopt bench (latency in ms; ratio = median / first model's median)",
        title_justify="left",
    )
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("model", "provider", "verdict") else "right")
    for row in flat_rows(report):
        cells = [_fmt(row[c], c) for c in COLUMNS]
        verdict = row["verdict"]
        color = {"faster": "green", "slower": "red"}.get(verdict)
        if color:
            cells[COLUMNS.index("verdict")] = f"[{color}]{verdict}[/]"
        t.add_row(*cells)
    return t


def markdown(report: dict[str, Any]) -> str:
    """Markdown summary (ready for a CI job summary)."""
    m = report["machine"]
    lines = [
        "## onnxopt bench",
        "",
        f"Machine: {m['cpu']} ({m['usable_cores']} cores; flags: "
        f"{', '.join(m['cpu_flags']) or 'none'}), onnxruntime {m['onnxruntime']}.",
        f"Settings: {report['settings']['trials']} trials x "
        f"{report['settings']['runs']} runs after {report['settings']['warmup']} warm-up runs, "
        "models interleaved. Latency in ms; ratio = median / first model's median with a 95% "
        "bootstrap interval; a difference is declared only when the interval excludes 1.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|"
        + "|".join("---" if c in ("model", "provider", "verdict") else "---:" for c in COLUMNS)
        + "|",
    ]
    for row in flat_rows(report):
        lines.append("| " + " | ".join(_fmt(row[c], c) for c in COLUMNS) + " |")
    if report.get("skipped"):
        lines += ["", "Skipped providers:"]
        lines += [f"- {s['provider']}: {s['reason']}" for s in report["skipped"]]
    if report.get("concurrency"):
        lines += [
            "",
            "| model | provider | threads | mode | in flight | req/s | p50 ms | p99 ms |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for c in report["concurrency"]:
            lines.append(
                f"| {c['model']} | {c['provider']} | {c.get('threads') or 'default'} | "
                f"{c['mode']} | {c['concurrency']} | "
                f"{c['throughput_rps']:.1f} | {c['latency_ms']['p50']:.3f} | "
                f"{c['latency_ms']['p99']:.3f} |"
            )
    if report.get("gates"):
        lines += ["", "Gates:"]
        for g in report["gates"]:
            state = "pass" if g["passed"] else "**FAIL**"
            if g["gate"] == "latency_budget":
                lines.append(
                    f"- {state}: {g['model']} ({g['provider']}) {g['statistic']} "
                    f"{g['value_ms']:.3f} ms, budget {g['budget_ms']:.3f} ms"
                )
            elif "ratio" in g:
                lines.append(
                    f"- {state}: {g['model']} ({g['provider']}) median {g['median_ms']:.3f} ms vs "
                    f"baseline {g['baseline_median_ms']:.3f} ms ({g['ratio']:.3f}x)"
                )
    return "\n".join(lines) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    """CSV with one line per result row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS))
    writer.writeheader()
    for row in flat_rows(report):
        row = dict(row)
        if row["ratio_ci"] is not None:
            row["ratio_ci"] = f"{row['ratio_ci'][0]:.6f};{row['ratio_ci'][1]:.6f}"
        writer.writerow(row)
    return buf.getvalue()


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a clear error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib, which is not installed",
            hint="pip install 'onnxopt[plot]' -c constraints.txt",
        ) from None
    return plt


def plot(report: dict[str, Any], path: Path) -> None:
    """Latency distributions per model/provider and the ratio chart, as a PNG."""
    plt = pyplot()
    results = report["results"]
    labels = [
        f"{r['model']}\n{r['provider']} t={r.get('threads') or 'd'} b={r.get('batch', 1)}"
        for r in results
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.7 * len(results)))
    ax1.boxplot([r["samples_ms"] for r in results], vert=False, showfliers=False)
    ax1.set_yticks(range(1, len(results) + 1), labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("latency (ms)")
    ax1.set_title("latency distribution (whiskers: 1.5 IQR)")
    ratios = [(r.get("compare") or {}).get("ratio", 1.0) for r in results]
    cis = [(r.get("compare") or {}).get("ratio_ci", [1.0, 1.0]) for r in results]
    err = [
        [max(r - c[0], 0) for r, c in zip(ratios, cis, strict=True)],
        [max(c[1] - r, 0) for r, c in zip(ratios, cis, strict=True)],
    ]
    ax2.barh(range(len(results)), ratios, xerr=err, color="#4c72b0")
    ax2.axvline(1.0, color="black", linewidth=0.8)
    ax2.set_yticks(range(len(results)), labels, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("median / baseline median (95% CI)")
    ax2.set_title("ratio to the first model")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
