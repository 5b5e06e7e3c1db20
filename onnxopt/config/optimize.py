"""Configuration of the optimize step: the search over chains of the other steps."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from onnxopt.config.base import StepBase, StrictModel, UserPath, parse_duration, parse_millis

Stage = Literal["structure", "graph", "precision"]
#: the order the stages compose in: structure, then (its recovery), graph, precision
STAGE_ORDER: tuple[Stage, ...] = ("structure", "graph", "precision")


def parse_seconds(value: Any) -> Any:
    """'30m' -> 1800.0, '90s' -> 90.0, '1h' -> 3600.0; numbers are seconds."""
    units = (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    return parse_duration(value, units, "30m")


class SearchTiming(StrictModel):
    """How each stage's candidates are timed against the source (interleaved, fresh sessions)."""

    warmup: int = Field(3, ge=0, description="Warm-up runs per model.")
    runs: int = Field(20, ge=3, description="Timed runs per model per trial.")
    trials: int = Field(2, ge=1, description="Trials, each with fresh sessions.")
    final_trials: int = Field(
        3, ge=1, description="Trials of the re-timing of the winner against the runner-up."
    )


class OptimizeStep(StepBase):
    """Search chains of structure, graph and precision steps for the fastest model that
    stays within the budget (the task metric when the run has one, else ``tolerance``)."""

    type: Literal["optimize"] = Field(description="Step type.")
    stages: list[Stage] = Field(
        default_factory=lambda: list[Stage](STAGE_ORDER),
        description="The stages searched, always composed in the order structure -> graph "
        "-> precision.",
    )
    prune_targets: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.35, 0.5, 0.65, 0.8],
        description="structure: shares of the model's MACs to remove, tried from the smallest "
        "up, each spent on the groups whose measured output change costs least (prune "
        "macs_target); the ladder stops at the first that misses the budget even after "
        "recovery (the model's sensitivity decides how far it goes).",
    )
    prune_ratios: list[float] = Field(
        default_factory=list,
        description="structure: uniform channel-pruning ratios to climb instead of "
        "prune_targets (every group loses the same share), from the smallest up.",
    )
    recover: Literal["auto", "distill", "compensate", "none"] = Field(
        "auto",
        description="structure: how a pruned model wins back fidelity: distill (from the "
        "source, needs torch and data), compensate (removed channels' means folded into the "
        "next biases), auto (distill when torch and enough data are there, else compensate).",
    )
    min_distill_samples: int = Field(
        64, ge=2, description="auto: the fewest training samples worth distilling on."
    )
    prune: dict[str, Any] = Field(
        default_factory=lambda: {"round_to": 8},
        description="Options of every prune candidate (a prune step's keys), e.g. "
        "{round_to: 8, criterion: l2}.",
    )
    distill: dict[str, Any] = Field(
        default_factory=lambda: {"steps": 300, "batch_size": 16, "max_seconds": 300},
        description="Options of every distill candidate (a distill step's keys).",
    )
    simplify: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of every simplify candidate (a simplify step's keys; the "
        "backends default to onnxsim and ort, plus transformers on attention models).",
    )
    quantize: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of every quantize candidate (mode auto: every recipe it would "
        "try on this target), e.g. {auto: {rescue: false}}.",
    )
    beam: int = Field(
        2,
        ge=1,
        le=8,
        description="The fastest candidates on the Pareto front expanded per stage (the "
        "source is expanded too).",
    )
    min_speedup: float = Field(
        1.0,
        ge=1.0,
        description="A candidate is chosen only when its median beats the source's by this "
        "factor and the 95% interval of the ratio excludes 1.",
    )
    time_budget: float | None = Field(
        1800.0,
        gt=0,
        description="Seconds (or '30m', '90s') the search may take; it then stops with the "
        "best so far (a candidate already running finishes the recipe it is on; a quantize auto "
        "candidate starts no further recipe). null: no limit.",
    )
    timing: SearchTiming = Field(default_factory=SearchTiming, description="Timing.")
    latency_budget: float | None = Field(
        None,
        gt=0,
        description="Milliseconds (or '20ms'): also search the serving plan (bench --plan) "
        "of the chosen model for the most throughput within this latency.",
    )
    percentile: Literal["p50", "p90", "p99"] = Field(
        "p99", description="The latency percentile the latency budget bounds."
    )
    work_dir: UserPath | None = Field(
        None,
        description="Folder that keeps every candidate (the search's cache: an interrupted "
        "search resumes there, a re-run is all cache hits); default: NN-optimize.search in "
        "the output folder (for the optimize subcommand: OUT.search beside -o).",
    )

    _seconds = field_validator("time_budget", mode="before")(parse_seconds)
    _millis = field_validator("latency_budget", mode="before")(parse_millis)

    @field_validator("prune_ratios", "prune_targets")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        bad = [v for v in value if not 0 < v < 1]
        if bad:
            raise ValueError(f"prune ratios and targets must be in (0, 1), found {bad}")
        return sorted(set(value))

    @field_validator("stages")
    @classmethod
    def _stages(cls, value: list[Stage]) -> list[Stage]:
        if not value:
            raise ValueError("stages must name at least one of structure, graph, precision")
        return [s for s in STAGE_ORDER if s in value]

    def step_options(self, kind: str, **extra: Any) -> dict[str, Any]:
        """The config of one candidate step of type ``kind`` (``extra`` on top)."""
        base: dict[str, Any] = {"mode": "auto"} if kind == "quantize" else {}
        return {"type": kind, **base, **getattr(self, kind), **extra}

    @model_validator(mode="after")
    def _step_options(self) -> OptimizeStep:
        """Each stage's options must make a valid step of its type (named in the error)."""
        from onnxopt import registry

        for kind in ("prune", "distill", "simplify", "quantize"):
            options = getattr(self, kind)
            if "type" in options:
                raise ValueError(f"{kind} options name no 'type' (it is {kind})")
            try:
                registry.config_class(kind).model_validate(self.step_options(kind))
            except ValidationError as err:
                problem = err.errors()[0]
                where = ".".join(str(p) for p in problem["loc"])
                text = str(problem["msg"]).removeprefix("Value error, ")
                raise ValueError(f"{kind}.{where}: {text}") from None
        return self
