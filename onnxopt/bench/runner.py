"""A whole benchmark: providers x threads x batch sizes, concurrency, gates, the report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt import _fs
from onnxopt.bench.core import (
    Candidate,
    concurrency,
    measure,
    resolve_providers,
    summarize_measured,
    uses_io_binding,
)
from onnxopt.bench.machine import machine_info
from onnxopt.bench.match import config_key, match_models, missing_rows_error
from onnxopt.config import BenchStep, InputSpec, Target
from onnxopt.errors import GateError, InputError
from onnxopt.modelio import model_digest
from onnxopt.records import BenchReport
from onnxopt.runtime import provider_id
from onnxopt.verify import Inputs, inputs_digest, make_inputs

log = logging.getLogger("onnxopt")

REPORT_SCHEMA = "onnxopt.bench/1"


@dataclass
class InputSource:
    """Where benchmark inputs come from: fixed arrays, or specs + dims to generate them."""

    specs: list[InputSpec]
    dims: dict[str, int]
    seed: int = 0
    fixed: Inputs | None = None
    #: how generated inputs were fitted to the model: dims defaulted and ranges inferred, why
    fitted: dict[str, Any] = field(default_factory=dict)

    def feeds(self, batch: int | None, batch_dim: str) -> Inputs:
        """Inputs for one configuration (``batch`` overrides the batch dim)."""
        if batch is None:
            return (
                self.fixed
                if self.fixed is not None
                else make_inputs(self.specs, self.dims, self.seed)
            )
        if self.fixed is not None:
            raise InputError(
                "a batch-size sweep needs generated inputs, but fixed inputs were given",
                hint="drop the inputs file, or drop batch_sizes",
            )
        if batch_dim not in self.dims:
            raise InputError(
                f"batch sweep: the inputs have no symbolic dim {batch_dim!r}; "
                f"they have {sorted(self.dims) or 'none'}",
                hint="set batch_dim to the name of the batch dim",
            )
        return make_inputs(self.specs, {**self.dims, batch_dim: batch}, self.seed)


#: concurrency_mode -> the modes it measures
MODES = {"both": ["threads", "async"], "all": ["threads", "async", "processes"]}


def _batch_of(feeds: Inputs, source: InputSource, batch_dim: str) -> int:
    for spec in source.specs:
        for axis, dim in enumerate(spec.shape):
            if dim == batch_dim and spec.name in feeds:
                return int(feeds[spec.name].shape[axis])
    return 1


def run_bench(
    candidates: list[Candidate],
    source: InputSource,
    cfg: BenchStep,
    target: Target,
) -> BenchReport:
    """Measure every candidate in every configuration; apply gates; return the report.

    The first candidate is the baseline of the ratios and fidelity columns. Gate failures are
    recorded in the report (``passed: false``); :func:`raise_for_gates` turns them into
    exit code 4.
    """
    providers, skipped = resolve_providers(cfg.providers, cfg.strict)
    report: BenchReport = {
        "schema": REPORT_SCHEMA,
        "created": _fs.now(),
        "machine": machine_info(),
        "settings": cfg.model_dump(mode="json", exclude={"name", "tolerance"}),
        "models": [
            {"label": c.label, "path": str(c.path), "sha256": model_digest(c.path)}
            for c in candidates
        ],
        "results": [],
        "skipped": skipped,
        "concurrency": [],
        "placement": {},
    }
    baseline = _baseline(report, cfg)  # before measuring: a gate that compares nothing fails now
    threads_list: list[int | None] = list(cfg.threads) if cfg.threads else [None]
    input_facts: dict[str, Any] = {}
    for provider in providers:
        for threads in threads_list:
            run_target = _run_target(cfg, target, provider, threads)
            input_facts = _latency_rows(report, candidates, source, cfg, run_target)
            if cfg.concurrency:
                _concurrency_rows(report, candidates, source, cfg, run_target)
        if cfg.placement:
            _placement(report, candidates, source, cfg, provider)
    if source.fixed is None:
        input_facts["generated"] = {"dims": source.dims, **source.fitted}
    report["inputs"] = input_facts
    if cfg.plan:
        report["plans"] = _plans(candidates, source, cfg, target, providers)
    report["gates"] = evaluate_gates(report, cfg, baseline)
    report["passed"] = all(g["passed"] for g in report["gates"])
    return report


def _run_target(cfg: BenchStep, target: Target, provider: str, threads: int | None) -> Target:
    """The target of one configuration: the provider's options, the thread count."""
    options = (
        cfg.provider_options.get(provider, target.provider_options)
        if provider == target.provider
        else cfg.provider_options.get(provider, {})
    )
    return Target(
        provider=provider,
        provider_options=options,
        intra_op_threads=threads if threads is not None else target.intra_op_threads,
        inter_op_threads=target.inter_op_threads,
    )


def _latency_rows(
    report: BenchReport,
    candidates: list[Candidate],
    source: InputSource,
    cfg: BenchStep,
    run_target: Target,
) -> dict[str, Any]:
    """Time every candidate at every batch size on one target; the rows join the report.
    Returns the facts of the last inputs used (digest, shapes, dtypes)."""
    provider = run_target.provider
    input_facts: dict[str, Any] = {}
    batches: list[int | None] = list(cfg.batch_sizes) if cfg.batch_sizes else [None]
    for batch in batches:
        feeds = source.feeds(batch, cfg.batch_dim)
        input_facts = {
            "digest": inputs_digest(feeds),
            "shapes": {k: list(v.shape) for k, v in feeds.items()},
            "dtypes": {k: str(v.dtype) for k, v in feeds.items()},
        }
        items = _batch_of(feeds, source, cfg.batch_dim)
        log.info(
            "measuring on %s, threads=%s, batch=%s", provider, run_target.intra_op_threads, items
        )
        measured = measure(candidates, feeds, cfg, run_target)
        bound = uses_io_binding(cfg, provider)
        for row in summarize_measured(measured, items, seed=cfg.seed):
            row["provider"] = provider
            row["threads"] = run_target.intra_op_threads or 0
            row["batch"] = items
            row["inputs"] = input_facts["shapes"]
            row["io_binding"] = bound
            row["copies_timed"] = not bound and provider_id(provider) != "CPUExecutionProvider"
            report["results"].append(row)
    return input_facts


def _concurrency_rows(
    report: BenchReport,
    candidates: list[Candidate],
    source: InputSource,
    cfg: BenchStep,
    run_target: Target,
) -> None:
    """Requests in flight at each concurrency level, per mode (threads, async, processes)."""
    modes = MODES.get(cfg.concurrency_mode, [cfg.concurrency_mode])
    feeds = source.feeds(None, cfg.batch_dim)
    for cand in candidates:
        for mode in modes:
            for level in cfg.concurrency or []:
                if mode == "processes":
                    from onnxopt.bench.processes import process_concurrency

                    row = process_concurrency(
                        cand.path, [feeds], cfg, run_target, level, threads=cfg.process_threads
                    )
                else:
                    row = concurrency(cand.path, feeds, cfg, run_target, level, mode)
                row["model"] = cand.label
                row["provider"] = run_target.provider
                row["threads"] = run_target.intra_op_threads or 0
                report["concurrency"].append(row)


def _placement(
    report: BenchReport,
    candidates: list[Candidate],
    source: InputSource,
    cfg: BenchStep,
    provider: str,
) -> None:
    """Which provider runs each node of each candidate; fallbacks and copies warned."""
    from onnxopt.inspection import placement

    feeds = source.feeds(None, cfg.batch_dim)
    report["placement"][provider] = {
        c.label: placement(c.path, provider, feeds) for c in candidates
    }
    for label, place in report["placement"][provider].items():
        if place["not_on_provider"] or place["memory_copies"]:
            log.warning(
                "%s on %s: %d of %d nodes fall back to another provider, %d memory "
                "copies; timings include them",
                label,
                provider,
                len(place["not_on_provider"]),
                place["executed_nodes"],
                place["memory_copies"],
            )


def _plans(
    candidates: list[Candidate],
    source: InputSource,
    cfg: BenchStep,
    target: Target,
    providers: list[str],
) -> list[dict[str, Any]]:
    """A serving plan per model, on the first provider."""
    from onnxopt.bench.plan import serving_plan

    symbolic = (
        any(s.shape and s.shape[0] == cfg.batch_dim for s in source.specs) and source.fixed is None
    )
    batches = list(cfg.batch_sizes or ([1, 2, 4, 8] if symbolic else [1]))
    run_target = target.model_copy(update={"provider": providers[0]}) if providers else target

    def feeds_of(batch: int) -> Inputs:
        return source.feeds(batch if symbolic else None, cfg.batch_dim)

    plans = []
    for cand in candidates:
        plan = serving_plan(cand, feeds_of, batches, cfg, run_target)
        plan["provider"] = run_target.provider
        plans.append(plan)
    return plans


BASELINE_HINT = (
    "label the models as the baseline does (onnxopt bench ... --labels NAME,...; a "
    "pipeline's bench step labels them source, 01-export, ...), or record a new baseline"
)


def _baseline(report: BenchReport, cfg: BenchStep) -> dict[str, Any] | None:
    """The stored baseline report with ``matched``: measured label -> its baseline label."""
    if cfg.baseline is None:
        return None
    stored = load_report(cfg.baseline)
    mapping, notes = match_models(
        report["models"], stored.get("models", []), what="the baseline", hint=BASELINE_HINT
    )
    for note in notes:
        log.warning("baseline: %s", note)
    report["baseline_matches"] = {"models": mapping, "notes": notes}
    return {**stored, "matched": mapping}


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a stored bench report, checking its schema."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"baseline report not found: {file}") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{file}: not a readable JSON report ({err})") from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"{file}: expected a bench report with schema {REPORT_SCHEMA!r}, found {found!r}",
            hint="write one with 'onnxopt bench ... --output report.json'",
        )
    return data


def evaluate_gates(
    report: BenchReport, cfg: BenchStep, baseline: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Regression against a baseline report and latency budgets; each with pass/fail.

    Every measured row is compared with the baseline's row of the same configuration, its
    model matched as :mod:`onnxopt.bench.match` says; a row with nothing to compare with is
    an input error (exit 2), never a pass.
    """
    gates: list[dict[str, Any]] = []
    for plan in report.get("plans", []):  # with a plan, the budget is the plan's
        gates.append(
            {
                "gate": "serving_plan",
                "model": plan["model"],
                "provider": plan["provider"],
                "statistic": f"{plan['percentile']} per request",
                "value_ms": min((r["request_latency_ms"] for r in plan["table"]), default=None),
                "budget_ms": plan["budget_ms"],
                "passed": plan["chosen"] is not None,
            }
        )
    if cfg.latency_budget_ms is not None and not cfg.plan:
        for row in report["results"]:
            value = row["latency_ms"][cfg.percentile]
            gates.append(
                {
                    "gate": "latency_budget",
                    "model": row["model"],
                    "provider": row["provider"],
                    "statistic": cfg.percentile,
                    "value_ms": value,
                    "budget_ms": cfg.latency_budget_ms,
                    "passed": value <= cfg.latency_budget_ms,
                }
            )
    if cfg.baseline is not None:
        if baseline is None:
            baseline = _baseline(report, cfg)
        assert baseline is not None
        stored = {config_key(r): r for r in baseline.get("results", [])}
        matched = baseline["matched"]
        missing = [
            config_key(r, matched[r["model"]])
            for r in report["results"]
            if config_key(r, matched[r["model"]]) not in stored
        ]
        if missing:
            raise missing_rows_error(
                missing,
                sorted(stored),
                "the baseline",
                "measure the same providers, threads and batch sizes as the baseline, or "
                "record a new baseline",
            )
        threshold = cfg.max_regression if cfg.max_regression is not None else 0.0
        for row in report["results"]:
            base = stored[config_key(row, matched[row["model"]])]
            cur_med = row["latency_ms"]["p50"]
            base_med = base["latency_ms"]["p50"]
            ratio = cur_med / base_med
            beyond_noise = row["median_ci_ms"][0] > base["median_ci_ms"][1]
            slower = ratio > 1.0 + threshold and beyond_noise  # CIs of both runs do not overlap
            gates.append(
                {
                    "gate": "regression",
                    "model": row["model"],
                    "baseline_model": base["model"],
                    "provider": row["provider"],
                    "median_ms": cur_med,
                    "baseline_median_ms": base_med,
                    "ratio": ratio,
                    "max_regression": threshold,
                    "beyond_noise": beyond_noise,
                    "passed": not slower,
                }
            )
    return gates


def raise_for_gates(report: BenchReport) -> None:
    """Raise :class:`GateError` naming the first failed gate."""
    failed = [g for g in report.get("gates", []) if not g["passed"]]
    if not failed:
        return
    g = failed[0]
    if g["gate"] == "serving_plan":
        best = g["value_ms"]
        text = (
            f"serving plan for {g['model']}: no configuration meets the budget of "
            f"{g['budget_ms']:.3f} ms ({g['statistic']}"
            + (f"; the best measured {best:.3f} ms)" if best is not None else "; none measured)")
        )
    elif g["gate"] == "latency_budget":
        text = (
            f"{g['model']} on {g['provider']}: {g['statistic']} latency {g['value_ms']:.3f} ms "
            f"exceeds the budget of {g['budget_ms']:.3f} ms"
        )
    else:
        text = (
            f"{g['model']} on {g['provider']}: median {g['median_ms']:.3f} ms is "
            f"{(g['ratio'] - 1) * 100:.1f}% slower than the baseline's "
            f"{g['baseline_median_ms']:.3f} ms (allowed {g['max_regression'] * 100:.1f}%, "
            "and beyond the noise)"
        )
    more = f" ({len(failed) - 1} more gate(s) failed)" if len(failed) > 1 else ""
    raise GateError(f"benchmark gate failed: {text}{more}")


def median_of(report: BenchReport, label: str) -> float:
    """Median latency of a model in a report (first matching row)."""
    for row in report["results"]:
        if row["model"] == label:
            return float(row["latency_ms"]["p50"])
    raise KeyError(label)


def bench_files(
    models: list[Path],
    cfg: BenchStep,
    *,
    labels: list[str] | None = None,
    inputs_file: Path | None = None,
    shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
    ranges: dict[str, list[float]] | None = None,
    seed: int = 0,
    threads: int | None = None,
    inter_threads: int | None = None,
) -> BenchReport:
    """Benchmark ONNX files that take the same inputs; the first is the baseline.

    Inputs are generated from the first model's specs (``shapes`` replaces an input's shape,
    ``dims`` gives symbolic dims their values, ``ranges`` inputs' value ranges) or read
    from ``inputs_file``.

    Raises:
        InputError: unreadable models, models with other inputs, shapes of unknown inputs.
    """
    from onnxopt.errors import ConfigError
    from onnxopt.modelio import load_model
    from onnxopt.verify import fit_inputs, load_inputs, specs_from_model

    names = labels or [m.stem for m in models]
    if len(names) != len(models):
        raise ConfigError(f"--labels has {len(names)} names for {len(models)} models")
    if len(set(names)) != len(names):
        names = [str(m) for m in models]
    specs_of = [specs_from_model(load_model(m, load_weights=False)) for m in models]
    signatures = [[(s.name, s.dtype, len(s.shape)) for s in specs] for specs in specs_of]
    for m, sig in zip(models[1:], signatures[1:], strict=True):
        if sig != signatures[0]:
            raise InputError(
                f"{m.name} takes other inputs than {models[0].name} (name, dtype, rank: "
                f"{sig} vs {signatures[0]}); bench compares models on the same inputs",
                hint="bench models with the same inputs together, or in separate runs",
            )
    specs = specs_of[0]
    overrides, ranges = shapes or {}, ranges or {}
    for flag, named in (("--shape", overrides), ("--value/--range", ranges)):
        unknown = sorted(set(named) - {s.name for s in specs})
        if unknown:
            raise ConfigError(
                f"{flag} names {unknown} that are not inputs of {models[0].name}; "
                f"inputs: {[s.name for s in specs]}"
            )
    specs = [
        s.model_copy(update={"shape": overrides[s.name]}) if s.name in overrides else s
        for s in specs
    ]
    specs = [
        s.model_copy(update={"range": tuple(ranges[s.name])}) if s.name in ranges else s
        for s in specs
    ]
    target = Target(
        provider=cfg.providers[0] if cfg.providers else "cpu",
        intra_op_threads=threads,
        inter_op_threads=inter_threads,
    )
    if inputs_file is not None:
        source = InputSource(specs=specs, dims={}, seed=seed, fixed=load_inputs(inputs_file))
    else:  # inputs that fit the model: index ranges, dims at which it runs (verify.fit)
        fit = fit_inputs(models[0], specs, dims or {}, seed, target)
        source = InputSource(
            specs=fit.specs,
            dims=fit.dims,
            seed=seed,
            fitted={"defaulted_dims": fit.defaulted, "ranges": fit.ranges},
        )
    candidates = [Candidate(n, m) for n, m in zip(names, models, strict=True)]
    return run_bench(candidates, source, cfg, target)
