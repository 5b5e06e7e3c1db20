"""Merge bench reports from several machines (or CI matrix jobs) into one comparison.

Each report was measured on its own machine, so rows are compared across reports by their
medians; the interval of a cross-report ratio is built from the two medians' own 95%
intervals (lowest over highest, highest over lowest), which is conservative: a difference
is declared only when that interval excludes 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    rows = [
        _merged_row(name, r, matches[name][r["model"]], reference, name == loaded[0][0])
        for name, report in loaded
        for r in report["results"]
    ]
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
        "plans": merged_plans(loaded),
    }


def _merged_row(
    name: str,
    r: dict[str, Any],
    compared_with: str,
    reference: dict[Key, dict[str, Any]],
    is_reference: bool,
) -> dict[str, Any]:
    """One result row of report ``name``, with its ratio to the reference report's row of
    the same configuration (the intervals of both medians give the ratio's)."""
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
        "compared_with": compared_with,
    }
    if is_reference:
        row.update(ratio=1.0, ratio_interval=None, verdict="reference")
        return row
    base = reference[config_key(r, compared_with)]  # every row has one: checked before
    ratio = lat["p50"] / base["latency_ms"]["p50"]
    lo_b, hi_b = base.get("median_ci_ms") or [base["latency_ms"]["p50"]] * 2
    lo, hi = r.get("median_ci_ms") or [lat["p50"]] * 2
    interval = [lo / hi_b, hi / lo_b]
    row.update(ratio=ratio, ratio_interval=interval, verdict=verdict(*interval))
    return row


def merged_plans(loaded: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The serving plans of the reports, one row per machine and model, side by side."""
    rows = []
    for name, report in loaded:
        for plan in report.get("plans") or []:
            chosen = plan.get("chosen")
            rows.append(
                {
                    "source": name,
                    "model": plan["model"],
                    "budget_ms": plan["budget_ms"],
                    "percentile": plan["percentile"],
                    "chosen": chosen,
                    "runner_up": plan.get("runner_up"),
                }
            )
    return rows
