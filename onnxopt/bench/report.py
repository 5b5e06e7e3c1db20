"""Renderings of bench reports and of merged reports: rich tables and console lines,
Markdown, CSV and PNG plots. The CLI only chooses which to write."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rich.table import Table

from onnxopt.errors import MissingDependencyError
from onnxopt.records import BenchReport, ConcurrencyRow

#: the report a set of renderers writes
R = TypeVar("R")

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

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


def _markdown_header(columns: tuple[str, ...], left: tuple[str, ...]) -> list[str]:
    """A Markdown table's header and alignment rows (numbers right-aligned)."""
    align = "|".join("---" if c in left else "---:" for c in columns)
    return ["| " + " | ".join(columns) + " |", f"|{align}|"]


def flat_rows(report: BenchReport) -> list[dict[str, Any]]:
    """One flat dict per result row (for tables, Markdown and CSV)."""
    from onnxopt.verify.compare import min_cosine

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
                "cosine": min_cosine(r.get("fidelity") or {}, default=None),
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


def table(report: BenchReport) -> Table:
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


def markdown(report: BenchReport) -> str:
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
        *_markdown_header(COLUMNS, left=("model", "provider", "verdict")),
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
    for plan in report.get("plans", []):
        lines += ["", *plan_lines(plan)]
    if report.get("gates"):
        lines += ["", "Gates:"]
        for g in report["gates"]:
            state = "pass" if g["passed"] else "**FAIL**"
            if g["gate"] == "serving_plan":
                lines.append(
                    f"- {state}: serving plan for {g['model']}: a configuration within "
                    f"{g['budget_ms']:.3f} ms ({g['statistic']})"
                )
            elif g["gate"] == "latency_budget":
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


def to_csv(report: BenchReport) -> str:
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


def plot(report: BenchReport, path: Path) -> None:
    """Latency distributions per model/provider and the ratio chart, as a PNG."""
    plt = pyplot()
    results = report["results"]
    labels = [
        f"{r['model']}\n{r['provider']} t={r.get('threads') or 'd'} b={r.get('batch', 1)}"
        for r in results
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.7 * len(results)))
    ax1.boxplot([r["samples_ms"] for r in results], orientation="horizontal", showfliers=False)
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


def _config_text(c: dict[str, Any]) -> str:
    threads = f"{c['threads']} thread{'' if c['threads'] == 1 else 's'}"
    where = (
        f"{c['processes']} processes x {threads}"
        if c["mode"] == "processes"
        else f"one session, {threads}, {c['in_flight']} in flight"
        + (" (run_async)" if c["mode"] == "async" else "")
    )
    return f"{where}, batch {c['batch']}"


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """A serving plan as Markdown: the choice, the runner-up and the table."""
    stopped = f"; {plan['stopped']}" if plan.get("stopped") else ""
    head = (
        f"Serving plan for {plan['model']} ({plan['percentile']} per request <= "
        f"{plan['budget_ms']:g} ms; {plan['searched']} of {plan['of']} configurations "
        f"measured in {plan['seconds']:.0f} s{stopped}):"
    )
    lines = [head, ""]
    chosen, second = plan["chosen"], plan["runner_up"]
    if chosen is None:
        lines.append("- no configuration meets the budget")
    else:
        lines.append(
            f"- chosen: {_config_text(chosen)}: {chosen['throughput_rps']:.1f} req/s, "
            f"{chosen['request_latency_ms']:.3f} ms"
        )
        if second is not None:
            lines.append(
                f"- runner-up: {_config_text(second)}: {second['throughput_rps']:.1f} req/s, "
                f"{second['request_latency_ms']:.3f} ms"
            )
    lines += [
        "",
        "| mode | processes | threads | in flight | batch | req/s | request ms | within |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in plan["table"]:
        lines.append(
            f"| {r['mode']} | {r['processes']} | {r['threads']} | {r['in_flight']} | "
            f"{r['batch']} | {r['throughput_rps']:.1f} | {r['request_latency_ms']:.3f} | "
            f"{'yes' if r['meets_budget'] else 'no'} |"
        )
    return lines


def _startup(row: ConcurrencyRow) -> str:
    """A processes row's start-up cost (spawn + session + warm-up), apart from its latency."""
    if "startup_s" not in row:
        return ""
    return (
        f" ({row['threads_per_process']} thread{'' if row['threads_per_process'] == 1 else 's'}"
        f" each; start-up "
        f"{row['startup_s']['all_ready']:.2f} s, not timed)"
    )


def print_bench(console: Console, report: BenchReport) -> None:
    """A bench report on the terminal: the table, concurrency, skipped providers, machine."""
    console.print(table(report))
    for c in report["concurrency"]:
        console.print(
            f"{c['model']} {c['provider']} threads={c.get('threads') or 'default'} "
            f"{c['mode']} x{c['concurrency']}: "
            f"{c['throughput_rps']:.1f} req/s, p50 {c['latency_ms']['p50']:.3f} ms, "
            f"p99 {c['latency_ms']['p99']:.3f} ms{_startup(c)}",
            highlight=False,
        )
    for plan in report.get("plans", []):
        console.print("\n".join(plan_lines(plan)), highlight=False, markup=False)
    for s in report["skipped"]:
        console.print(f"skipped {s['provider']}: {s['reason']}", highlight=False)
    m = report["machine"]
    console.print(
        f"machine: {m['cpu']}, {m['usable_cores']} cores, flags "
        f"{' '.join(m['cpu_flags']) or '-'}, onnxruntime {m['onnxruntime']}",
        highlight=False,
    )
    for note in (report.get("baseline_matches") or {}).get("notes", []):
        console.print(f"baseline: {note}", highlight=False)


def print_merged(console: Console, merged: dict[str, Any]) -> None:
    """A merged report on the terminal: the table, the machines, the notes."""
    console.print(merged_table(merged))
    for source in merged["sources"]:
        console.print(machine_line(source), highlight=False)
    if merged.get("plans"):
        console.print("\n".join(["serving plans:", *merged_plan_lines(merged)]), markup=False)
    for note in merged["notes"]:
        console.print(f"note: {note}", highlight=False)


MERGED_COLUMNS = (
    "model",
    "provider",
    "threads",
    "batch",
    "source",
    "p50",
    "p99",
    "ratio",
    "verdict",
)


def _merged_cell(row: dict[str, Any], col: str) -> str:
    value = row.get(col)
    if value is None:
        return "-"
    if col == "ratio":
        interval = row.get("ratio_interval")
        text = f"{value:.3f}x"
        return text + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    if col == "threads":
        return str(value or "default")
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def machine_line(source: dict[str, Any]) -> str:
    """One line describing the machine a merged source was measured on."""
    m = source.get("machine") or {}
    flags = ", ".join(m.get("cpu_flags") or []) or "none"
    return (
        f"{source['label']}: {m.get('cpu', '?')}, {m.get('usable_cores', '?')} cores "
        f"(flags: {flags}), {m.get('os', '?')}, onnxruntime {m.get('onnxruntime', '?')}"
    )


def merged_table(merged: dict[str, Any]) -> Table:
    """Rich table: one row per model/provider/threads/batch and source."""
    t = Table(
        title=f"onnxopt report merge (latency in ms; ratio = median / {merged['reference']}'s)",
        title_justify="left",
    )
    for col in MERGED_COLUMNS:
        t.add_column(col, justify="right" if col in ("p50", "p99", "ratio", "threads") else "left")
    for row in merged["rows"]:
        t.add_row(*(_merged_cell(row, c) for c in MERGED_COLUMNS))
    return t


def merged_markdown(merged: dict[str, Any]) -> str:
    """Markdown comparison (for a CI job summary or a hardware decision document)."""
    lines = ["## onnxopt report merge", "", "Machines:"]
    lines += [f"- {machine_line(s)}" for s in merged["sources"]]
    lines += [
        "",
        f"Latency in ms. Ratio = median / {merged['reference']}'s median, with an interval "
        "built from both medians' 95% intervals; a difference is declared only when it "
        "excludes 1.",
        "",
        *_markdown_header(
            MERGED_COLUMNS,
            left=tuple(c for c in MERGED_COLUMNS if c not in ("p50", "p99", "ratio")),
        ),
    ]
    lines += [
        "| " + " | ".join(_merged_cell(r, c) for c in MERGED_COLUMNS) + " |" for r in merged["rows"]
    ]
    if merged.get("plans"):
        lines += ["", "Serving plans:", ""] + merged_plan_lines(merged)
    if merged["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in merged["notes"]]
    return "\n".join(lines) + "\n"


def merged_plan_lines(merged: dict[str, Any]) -> list[str]:
    """The machines' serving plans side by side (Markdown table rows)."""
    lines = [
        "| model | source | budget | chosen | req/s | request ms |",
        "|---|---|---|---|---:|---:|",
    ]
    for p in merged.get("plans", []):
        c = p["chosen"]
        what = _config_text(c) if c else "none within the budget"
        rate = f"{c['throughput_rps']:.1f}" if c else "-"
        ms = f"{c['request_latency_ms']:.3f}" if c else "-"
        lines.append(
            f"| {p['model']} | {p['source']} | {p['percentile']} <= {p['budget_ms']:g} ms | "
            f"{what} | {rate} | {ms} |"
        )
    return lines


def merged_csv(merged: dict[str, Any]) -> str:
    """CSV, one line per row."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["source", "model", "provider", "threads", "batch", "p50", "p90", "p99",
                     "ratio", "ratio_low", "ratio_high", "verdict"])  # fmt: skip
    for r in merged["rows"]:
        interval = r.get("ratio_interval") or [None, None]
        writer.writerow(
            [r["source"], r["model"], r["provider"], r["threads"], r["batch"], r["p50"],
             r["p90"], r["p99"], r.get("ratio"), interval[0], interval[1], r["verdict"]]
        )  # fmt: skip
    return buf.getvalue()


def merged_plot(merged: dict[str, Any], path: Path) -> None:
    """Grouped bars: median latency per model (x) and source (colour), p99 as a whisker."""
    plt = pyplot()
    keys = sorted({(r["model"], r["provider"], r["threads"], r["batch"]) for r in merged["rows"]})
    sources = [s["label"] for s in merged["sources"]]
    by = {
        (r["model"], r["provider"], r["threads"], r["batch"], r["source"]): r
        for r in merged["rows"]
    }
    width = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(keys) * len(sources)), 4.5))
    for i, source in enumerate(sources):
        xs, p50, err = [], [], []
        for j, key in enumerate(keys):
            row = by.get((*key, source))
            if row is None:
                continue
            xs.append(j + (i - (len(sources) - 1) / 2) * width)
            p50.append(row["p50"])
            err.append(row["p99"] - row["p50"])
        ax.bar(xs, p50, width, yerr=[[0] * len(err), err], capsize=3, label=source)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{k[0]}\n{k[1]} t={k[2] or 'def'} b={k[3]}" for k in keys], fontsize=8)
    ax.set_ylabel("median latency, ms (whisker: p99)")
    ax.set_title("onnxopt report merge")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Renderers(Generic[R]):
    """How one kind of report is written as Markdown, CSV and PNG."""

    markdown: Callable[[R], str]
    csv: Callable[[R], str]
    plot: Callable[[R, Path], None]


BENCH = Renderers(markdown, to_csv, plot)
MERGED = Renderers(merged_markdown, merged_csv, merged_plot)
