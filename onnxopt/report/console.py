"""Rich tables for the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def human_count(n: float | None) -> str:
    """1.2e9 -> '1.20 G'."""
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def verification_summary(verification: dict[str, Any]) -> str:
    """Short text of a manifest's verification, such as 'ok cos=0.999990 err=2.0e-06'."""
    rows = verification.get("main", {}).get("outputs", [])
    cos = min((r.get("cosine", 1.0) for r in rows), default=1.0)
    err = max((r.get("max_abs_err", 0.0) for r in rows), default=0.0)
    state = "ok" if verification.get("passed") else "FAILED"
    extra = ", 2 shapes" if "second_shape" in verification else ""
    task = verification.get("task")
    if task:
        extra += (
            f", task {task['primary']} {task['parent_score']:.4g} -> {task['score']:.4g} "
            f"(drop {task['drop']:.3g}, max {task['max_drop']:.3g})"
        )
    return f"{state} cos={cos:.6f} err={err:.1e}{extra}"


def _verification_cell(entry: dict[str, Any]) -> str:
    ver = entry.get("verification")
    if not ver:
        return "-"
    text = verification_summary(ver)
    timing = entry.get("speed")
    if timing:
        text += f", {timing['speedup']:.2f}x speed-up" if timing.get("speedup") else ""
    return f"[green]{text}[/]" if ver.get("passed") else f"[red]{text}[/]"


def _bench_cell(entry: dict[str, Any]) -> str:
    report = entry.get("report") or {}
    if not report:
        return "-"
    n = len({r["model"] for r in report.get("results", [])})
    gates = report.get("gates") or []
    if not gates:
        return f"{n} models measured"
    ok = report.get("passed")
    return f"[green]{n} models, gates ok[/]" if ok else f"[red]{n} models, gate FAILED[/]"


def bench_summary_table(entry: dict[str, Any]) -> Table:
    """Medians and ratios of a pipeline bench step."""
    table = Table(title=f"step {entry['index']} bench (ms)", title_justify="left")
    for col in ("model", "provider", "threads", "batch", "p50", "p99", "ratio [95% CI]", "verdict"):
        table.add_column(
            col, justify="left" if col in ("model", "provider", "verdict") else "right"
        )
    for r in (entry.get("report") or {}).get("results", []):
        ci = r.get("ratio_ci")
        ratio = f"{r['ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if r.get("ratio") else "1 (baseline)"
        verdict = r["verdict"]
        color = {"faster": "green", "slower": "red"}.get(verdict)
        table.add_row(
            r["model"],
            r["provider"],
            str(r.get("threads") or "default"),
            str(r.get("batch")),
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            ratio,
            f"[{color}]{verdict}[/]" if color else verdict,
        )
    return table


def pipeline_table(manifest: dict[str, Any]) -> Table:
    """Summary table: step, artifact, size, nodes, verification, time, cached."""
    table = Table(title=f"onnxopt · {manifest['pipeline']['name']}", title_justify="left")
    for col in ("#", "step", "artifact", "size", "nodes", "verification", "time", "cached"):
        table.add_column(col, justify="right" if col in ("#", "size", "nodes", "time") else "left")
    for entry in manifest.get("steps", []):
        out = entry.get("output") or entry.get("report_file") or {}
        if entry.get("files"):  # package: the .ort file (and its operator config beside it)
            out = next((f for f in entry["files"] if f["path"].endswith(".ort")), out)
        if entry.get("kept_parent"):
            out = {"path": "[yellow]kept its parent (see below)[/]"}
        after = (entry.get("report") or {}).get("after") or {}
        status = entry.get("status")
        table.add_row(
            str(entry.get("index")),
            entry.get("name") or entry.get("type", "?"),
            out.get("path", f"[red]{status}[/]"),
            human_bytes(out.get("size_bytes")),
            str(after.get("nodes", "-")),
            _bench_cell(entry) if entry.get("type") == "bench" else _verification_cell(entry),
            f"{entry.get('duration_s', 0):.1f}s",
            "yes" if status == "cached" else "no",
        )
    return table


def _print_fitted(
    console: Console, dims: dict[str, str] | None, ranges: dict[str, str] | None
) -> None:
    """How generated inputs were fitted: the dims no one gave and the inferred ranges."""
    for name, why in (dims or {}).items():
        console.print(f"  dim {name}: {why} (set it with --dim {name}=INT)", highlight=False)
    for name, why in (ranges or {}).items():
        console.print(f"  input {name}: {why}", highlight=False)


def print_pipeline(console: Console, manifest: dict[str, Any]) -> None:
    """Print the summary table and where the final artifact is."""
    console.print(pipeline_table(manifest))
    for entry in manifest.get("steps", []):
        if entry.get("type") == "bench" and entry.get("report"):
            console.print(bench_summary_table(entry))
    inputs = manifest.get("inputs") or {}
    if inputs.get("data") and not inputs.get("synthetic"):
        data = inputs["data"]
        console.print(
            f"verified on {data['held_out']} held-out samples of {data['from']} (timed at "
            f"their shapes): {data['samples']} samples read, {data['calibration']} to "
            f"calibrate and train (split seed {data['split_seed']})",
            highlight=False,
        )
    elif inputs.get("synthetic"):
        dims = ", ".join(f"{k}={v}" for k, v in (inputs.get("dims") or {}).items())
        where = f"synthetic inputs ({inputs.get('source')}{'; ' + dims if dims else ''})"
        evaluate = inputs.get("evaluate")
        console.print(
            f"outputs compared on {where}; the task judged by {evaluate['callable']}"
            if evaluate
            else f"[yellow]verified on {where}: give --data to prove the task[/]",
            highlight=False,
        )
        _print_fitted(console, inputs.get("defaulted_dims_why"), inputs.get("ranges_why"))
    for entry in manifest.get("steps", []):
        report = entry.get("report") or {}
        if entry.get("type") == "distill" and "fidelity_after" in report:
            before, after = report["fidelity_before"], report["fidelity_after"]
            training = report["training"]
            console.print(
                f"step {entry['index']} {entry.get('name')}: held-out cosine to the teacher "
                f"{before['min_cosine']:.4f} -> {after['min_cosine']:.4f} (mean "
                f"{before['mean_cosine']:.4f} -> {after['mean_cosine']:.4f}); "
                f"{training['steps']} steps in {training['seconds']:.0f} s, best at step "
                f"{training['best_step']}",
                highlight=False,
            )
    for entry in manifest.get("steps", []):
        if entry.get("type") == "optimize" and entry.get("report"):
            print_search(console, entry["report"])
    for entry in manifest.get("steps", []):
        if entry.get("kept_parent"):
            console.print(
                f"[yellow]step {entry['index']} {entry.get('name')} kept its parent: "
                f"{entry.get('kept_parent_reason')}[/]",
                highlight=False,
            )
    final = manifest.get("final_artifact")
    copy = manifest.get("output_is_unchanged_copy")
    if copy:
        console.print(
            f"[yellow bold]{manifest['output_dir']}/{final} is an unchanged copy of "
            f"{copy['of']}[/] [yellow](no step made a better model: {copy['reason']})[/]",
            highlight=False,
        )
    elif final and Path(final).is_absolute():
        console.print(
            f"final artifact: [bold]{final}[/] (the source model, unchanged: every step "
            "kept its parent)",
            highlight=False,
        )
    elif final:
        console.print(f"final artifact: [bold]{manifest['output_dir']}/{final}[/]")
    for entry in manifest.get("steps", []):
        for f in entry.get("files") or []:
            if not f["path"].endswith(".ort"):
                console.print(
                    f"minimal-build operator config: {manifest['output_dir']}/{f['path']}"
                )


def print_search(console: Console, report: dict[str, Any]) -> None:
    """optimize's candidates as a table, then its outcome and notes."""
    table = Table(title="optimize: candidates (speed-up and score against the source)")
    for column in ("id", "candidate", "status", "speed-up", "score", "cached", "note"):
        table.add_column(column)
    for row in report.get("candidates", []):
        speed = row.get("speedup")
        score = row.get("score")
        table.add_row(
            row["id"],
            row["label"] + (" *" if row.get("pareto") else ""),
            row["status"],
            "" if speed is None else f"{speed:.2f}x",
            "" if score is None else f"{score:.4f}",
            "yes" if row.get("cached") else "",
            str(row.get("reason") or row.get("recipe") or "")[:80],
        )
    console.print(table)
    console.print("(* on the Pareto front of speed-up and score)", highlight=False)
    for note in report.get("notes", []):
        console.print(f"- {note}", highlight=False)
    if report.get("stopped"):
        console.print(f"[yellow]search stopped: {report['stopped']}[/]", highlight=False)
    style = "yellow bold" if report.get("unchanged") else "green"
    console.print(f"[{style}]{report['outcome']}[/]", highlight=False)


def print_inspect(console: Console, info: dict[str, Any]) -> None:
    """Human view of :func:`onnxopt.inspection.inspect_model`."""
    console.print(f"[bold]{info['path']}[/]  ({human_bytes(info['size_bytes'])})")
    console.print(
        f"opset {info['opset']} · IR {info['ir_version']} · producer {info['producer'] or '-'}"
    )
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("kind", "name", "shape", "dtype"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], v["name"], str(v["shape"]), v["dtype"])
    console.print(io)
    console.print(
        f"nodes {info['nodes']} · parameters {human_count(info['parameters'])} "
        f"({human_bytes(info['weight_bytes'])} of weights)"
    )
    compute = info["compute"]
    dims = ", ".join(f"{k}={v}" for k, v in compute["dims"].items()) or "static shapes"
    console.print(
        f"compute at {dims}: {human_count(compute['macs'])}MACs, "
        f"{human_count(compute['flops'])}FLOPs "
        + ", ".join(f"{k} {human_count(v)}" for k, v in compute["macs_by_op"].items())
    )
    _print_fitted(console, compute.get("defaulted_dims"), compute.get("ranges"))
    if compute["nodes_not_counted"]:
        console.print(
            f"[yellow]{len(compute['nodes_not_counted'])} MAC nodes (unknown shapes or "
            "layout-specific kernels) are not counted[/]"
        )
    ops = Table(title="op histogram", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
    place = info.get("placement")
    if place:
        if "error" in place:
            console.print(f"[red]placement unavailable: {place['error']}[/]")
        else:
            by = ", ".join(f"{k}: {v}" for k, v in place["by_provider"].items())
            console.print(f"placement on {place['provider']}: {by}")
            if place["not_on_provider"]:
                console.print(
                    f"[yellow]warning: {len(place['not_on_provider'])} nodes fall back off "
                    f"{place['provider']}; {place['memory_copies']} memory copies[/]"
                )
