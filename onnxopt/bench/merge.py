"""Merge bench reports from several machines (or CI matrix jobs) into one comparison.

Each report was measured on its own machine, so rows are compared across reports by their
medians; the interval of a cross-report ratio is built from the two medians' own 95%
intervals (lowest over highest, highest over lowest), which is conservative: a difference
is declared only when that interval excludes 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from onnxopt.bench.match import config_key, match_models, missing_rows_error
from onnxopt.bench.runner import load_report
from onnxopt.bench.stats import verdict
from onnxopt.errors import InputError

MERGE_SCHEMA = "onnxopt.bench.merged/1"
Key = tuple[Any, ...]
MERGE_HINT = (
    "merge reports of the same models, labelled alike (onnxopt bench ... --labels NAME,...)"
)


def _models(report: dict[str, Any]) -> dict[str, str | None]:
    return {m["label"]: m.get("sha256") for m in report.get("models", [])}


def _check_same_work(
    reports: list[tuple[str, dict[str, Any]]], allow_models: bool, allow_inputs: bool
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Match every report's models to the reference's; refuse different models or inputs
    unless told. Returns report label -> (model label -> reference model label), and notes.
    """
    notes: list[str] = []
    first_label, first = reports[0]
    a = _models(first)
    matches = {first_label: {name: name for name in a}}
    for label, report in reports[1:]:
        mapping, how = match_models(
            report.get("models", []),
            first.get("models", []),
            what=f"the reference report {first_label}",
            hint=MERGE_HINT,
        )
        matches[label] = mapping
        notes += [f"{label}: {n}" for n in how]
        b = _models(report)
        problems = []
        for name in sorted(b):
            ref = mapping[name]
            if a[ref] is None or b[name] is None:
                problems.append(f"{name!r} has no digest (report from an older onnxopt)")
            elif a[ref] != b[name]:
                problems.append(f"{name!r} is a different file than {ref!r} (sha256 differs)")
        if problems:
            text = f"{label} and {first_label} measured different models: {'; '.join(problems)}"
            if not allow_models:
                raise InputError(
                    text, hint="merge reports of the same models, or pass --allow-different-models"
                )
            notes.append(text)
        da = (first.get("inputs") or {}).get("digest")
        db = (report.get("inputs") or {}).get("digest")
        if da != db:
            text = f"{label} and {first_label} measured different inputs (digest differs)"
            if not allow_inputs:
                raise InputError(
                    text,
                    hint="use the same --inputs-file/--seed/--dim everywhere, or pass "
                    "--allow-different-inputs",
                )
            notes.append(text)
    return matches, notes


def merge_reports(
    paths: list[Path],
    labels: list[str] | None = None,
    *,
    allow_different_models: bool = False,
    allow_different_inputs: bool = False,
) -> dict[str, Any]:
    """Load bench reports and return one merged comparison (the first report is the reference).

    Raises:
        InputError: unreadable reports, fewer than two, or different models/inputs.
    """
    if len(paths) < 2:
        raise InputError(f"report merge needs at least two reports, found {len(paths)}")
    if labels is not None and len(labels) != len(paths):
        raise InputError(f"--labels gives {len(labels)} names for {len(paths)} reports")
    names = labels or [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"report labels must differ, found {names}", hint="pass --labels")
    loaded = [(name, load_report(path)) for name, path in zip(names, paths, strict=True)]
    matches, notes = _check_same_work(loaded, allow_different_models, allow_different_inputs)

    reference: dict[Key, dict[str, Any]] = {config_key(r): r for r in loaded[0][1]["results"]}
    missing = [
        config_key(r, matches[name][r["model"]])
        for name, report in loaded[1:]
        for r in report["results"]
        if config_key(r, matches[name][r["model"]]) not in reference
    ]
    if missing:
        raise missing_rows_error(
            missing,
            sorted(reference),
            f"the reference report {loaded[0][0]}",
            "merge reports measured with the same providers, threads and batch sizes",
        )
    rows = []
    for name, report in loaded:
        for r in report["results"]:
            lat = r["latency_ms"]
            row: dict[str, Any] = {
                "source": name,
                "model": r["model"],
                "provider": r["provider"],
                "threads": int(r.get("threads") or 0),
                "batch": int(r.get("batch", 1)),
                "p50": lat["p50"],
                "p90": lat["p90"],
                "p99": lat["p99"],
                "throughput": lat["throughput"],
                "median_ci_ms": r.get("median_ci_ms"),
            }
            row["compared_with"] = matches[name][r["model"]]
            if name != loaded[0][0]:  # every row has one: checked above
                base = reference[config_key(r, row["compared_with"])]
                ratio = lat["p50"] / base["latency_ms"]["p50"]
                lo_b, hi_b = base.get("median_ci_ms") or [base["latency_ms"]["p50"]] * 2
                lo, hi = r.get("median_ci_ms") or [lat["p50"]] * 2
                interval = [lo / hi_b, hi / lo_b]
                row.update(ratio=ratio, ratio_interval=interval, verdict=verdict(*interval))
            else:
                row.update(ratio=1.0, ratio_interval=None, verdict="reference")
            rows.append(row)
    rows.sort(key=lambda x: (x["compared_with"], x["provider"], x["threads"], x["batch"]))
    return {
        "schema": MERGE_SCHEMA,
        "reference": loaded[0][0],
        "sources": [
            {
                "label": name,
                "path": str(path),
                "created": report.get("created"),
                "machine": report.get("machine"),
                "models": report.get("models"),
                "inputs": report.get("inputs"),
                "settings": report.get("settings"),
            }
            for (name, report), path in zip(loaded, paths, strict=True)
        ],
        "notes": notes,
        "rows": rows,
    }


COLUMNS = ("model", "provider", "threads", "batch", "source", "p50", "p99", "ratio", "verdict")


def _fmt(row: dict[str, Any], col: str) -> str:
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
    m = source.get("machine") or {}
    flags = ", ".join(m.get("cpu_flags") or []) or "none"
    return (
        f"{source['label']}: {m.get('cpu', '?')}, {m.get('usable_cores', '?')} cores "
        f"(flags: {flags}), {m.get('os', '?')}, onnxruntime {m.get('onnxruntime', '?')}"
    )


def table(merged: dict[str, Any]) -> Table:
    """Rich table: one row per model/provider/threads/batch and source."""
    t = Table(
        title=f"onnxopt report merge (latency in ms; ratio = median / {merged['reference']}'s)",
        title_justify="left",
    )
    for col in COLUMNS:
        t.add_column(col, justify="right" if col in ("p50", "p99", "ratio", "threads") else "left")
    for row in merged["rows"]:
        t.add_row(*(_fmt(row, c) for c in COLUMNS))
    return t


def markdown(merged: dict[str, Any]) -> str:
    """Markdown comparison (for a CI job summary or a hardware decision document)."""
    lines = ["## onnxopt report merge", "", "Machines:"]
    lines += [f"- {machine_line(s)}" for s in merged["sources"]]
    lines += [
        "",
        f"Latency in ms. Ratio = median / {merged['reference']}'s median, with an interval "
        "built from both medians' 95% intervals; a difference is declared only when it "
        "excludes 1.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in ("p50", "p99", "ratio") else "---" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(r, c) for c in COLUMNS) + " |" for r in merged["rows"]]
    if merged["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in merged["notes"]]
    return "\n".join(lines) + "\n"


def to_csv(merged: dict[str, Any]) -> str:
    """CSV, one line per row."""
    import csv
    import io

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


def plot(merged: dict[str, Any], path: Path) -> None:
    """Grouped bars: median latency per model (x) and source (colour), p99 as a whisker."""
    from onnxopt.bench.report import pyplot

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
