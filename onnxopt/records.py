"""The records that cross modules, typed: an output comparison, a bench result row and a
manifest entry.

They stay plain dicts at run time (they are written to JSON as they are); the types let
the type checker catch a misspelt key wherever one is read or written. Keys beyond the
required ones are optional (``total=False``): a record carries what its path produced.
"""

from __future__ import annotations

from typing import Any, Literal, Required, TypedDict


class OutputRow(TypedDict, total=False):
    """One output of a model compared with the reference (onnxopt.verify.compare)."""

    name: Required[str]
    shape: Required[list[int]]
    passed: bool
    problem: str
    #: False when the budget names other outputs: recorded, not judged
    judged: bool
    max_abs_err: float
    max_rel_err: float
    cosine: float
    #: merged over samples: the mean beside the lowest (``cosine``)
    mean_cosine: float
    top1_agreement: float
    top5_agreement: float
    #: integer outputs: how many values differ
    mismatched: int


class Comparison(TypedDict, total=False):
    """Every output of a model compared with the reference on one input set."""

    passed: Required[bool]
    outputs: Required[list[OutputRow]]
    #: set when nothing could be compared output by output (their count differs)
    problem: str
    #: merged over several samples: how many
    samples: int


#: where a search's candidate stands (quantize auto, optimize, prune's ratio search)
CandidateStatus = Literal[
    "running", "verified", "outside budget", "failed", "kept its parent", "not tried"
]


class CandidateRow(TypedDict, total=False):
    """One candidate of a search, as its report records it (onnxopt.steps.candidates).

    quantize auto keys its rows by ``recipe``; optimize by ``id`` with the search ``stage``
    and the ``chain`` of steps from the source. Every search fills the rest the same way.
    """

    id: str
    label: str
    recipe: str
    stage: str
    parent: str
    chain: list[Any]
    status: Required[CandidateStatus]
    #: where a failed candidate failed: build, load, run, verify or timing
    failed_at: str
    reason: str
    cosine: float
    min_cosine: float
    task_score: float
    task_drop: float
    #: what the search ranks by: the task score when there is one, else the cosine
    score: float
    median_ms: float
    #: the model the candidate is timed against (quantize auto: its parent; optimize: the
    #: source), in the same interleaved run
    baseline_median_ms: float
    speedup: float
    ratio_ci: list[float]
    verdict: str
    seconds: float
    cached: bool
    # quantize auto: what the recipe wrote, and the rescue by diagnosis
    mode: str
    quantized_ops: dict[str, int]
    reduce_range: bool
    weight_type: str
    rescue: str
    repaired_from: str
    nodes_to_exclude: list[str]
    yaml: str
    # optimize: the final choice
    first_speedup: float
    retimed: bool
    pareto: bool


class RatioCompare(TypedDict, total=False):
    """A bench row's latency against the report's first model."""

    baseline: str
    ratio: float
    ratio_ci: list[float]
    speedup: float
    verdict: str


class BenchRow(TypedDict, total=False):
    """One model timed on one provider, thread count and batch (onnxopt.bench.runner)."""

    model: Required[str]
    path: str
    provider: str
    threads: int
    batch: int
    inputs: dict[str, list[int]]
    #: statistics of the per-run latencies: p50, p90, p99, mean, max, ...
    latency_ms: dict[str, float]
    median_ci_ms: list[float]
    cold_start: dict[str, float]
    trials: list[dict[str, float]]
    samples_ms: list[float]
    compare: RatioCompare
    fidelity: dict[str, Any]
    io_binding: bool
    copies_timed: bool


class ConcurrencyRow(TypedDict, total=False):
    """Requests in flight at one concurrency level in one mode (threads, async, processes)."""

    mode: Required[str]
    concurrency: Required[int]
    model: str
    provider: str
    threads: int
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    processes: int
    threads_per_process: int
    startup_s: dict[str, float]


class FileRecord(TypedDict, total=False):
    """A file a step wrote (a plot, a report, a measure step's output), in the output folder."""

    path: Required[str]
    sha256: Required[str]
    size_bytes: int


class ArtifactRecord(TypedDict, total=False):
    """The model a step wrote: its file, digest (external data included) and companions."""

    path: Required[str]
    sha256: Required[str]
    size_bytes: int
    external_data: list[str]
    files: list[FileRecord]


class StepEntry(TypedDict, total=False):
    """One step of a run in manifest.json (onnxopt.engine)."""

    index: Required[int]
    type: Required[str]
    name: Required[str]
    #: running, ok, cached, failed, interrupted
    status: Required[str]
    key: str
    parent: str
    input: dict[str, Any]
    versions: dict[str, str | None]
    output: ArtifactRecord | None
    models: list[dict[str, Any]]
    files: list[FileRecord]
    report_file: FileRecord
    config: dict[str, Any]
    started: str
    ended: str
    duration_s: float
    error: str
    report: dict[str, Any]
    warnings: list[str]
    verification: dict[str, Any]
    speed: dict[str, Any]
    guard: dict[str, Any]
    kept_parent: bool
    kept_parent_reason: str


def artifact_of(entry: StepEntry) -> ArtifactRecord:
    """The model a finished model step recorded (not one that kept its parent)."""
    output = entry.get("output")
    if output is None:
        raise KeyError(f"step {entry['index']} recorded no artifact of its own")
    return output


class BenchReport(TypedDict, total=False):
    """What ``onnxopt bench`` writes (onnxopt.bench.runner.run_bench)."""

    schema: Required[str]
    created: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    models: Required[list[dict[str, Any]]]
    results: Required[list[BenchRow]]
    skipped: list[dict[str, str]]
    concurrency: list[ConcurrencyRow]
    placement: dict[str, Any]
    inputs: dict[str, Any]
    plans: list[dict[str, Any]]
    baseline_matches: dict[str, Any]
    gates: list[dict[str, Any]]
    passed: bool
