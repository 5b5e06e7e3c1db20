"""What a step receives and returns. Steps import this, never the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.config import InputSpec, PipelineConfig, Target
from onnxopt.errors import OnnxoptError
from onnxopt.verify import (
    Inputs,
    InputSet,
    Reference,
    Tol,
    Verification,
    reference_outputs,
    verify_model,
)


@dataclass
class StepContext:
    """Everything a step may read about the pipeline it runs in."""

    config: PipelineConfig
    base_dir: Path
    specs: list[InputSpec]
    input_set: InputSet
    #: the folder the run started from: the user's own code (factories, callables) runs there
    invocation_dir: Path
    #: this step's own scratch folder (also its current and temp folder), removed afterwards
    scratch: Path | None = None
    #: the models measured so far, oldest first, as (label, path): what a bench step times
    chain: list[tuple[str, Path]] = field(default_factory=list)
    #: the calibration part of the run's data (None without data), disjoint from the
    #: held-out samples in ``input_set``
    calibration: list[Inputs] | None = None
    #: the config the run's data came from (a DataConfig, or a step's CalibrationConfig)
    data_source: Any = None
    #: the user's task metric (onnxopt.verify.task.Evaluator), when the run has one
    evaluator: Any = None
    #: shows a line of progress of long work (a training loop) while the step runs
    progress: Callable[[str], None] | None = None
    #: the run's output folder
    out_dir: Path | None = None
    #: runs a whole pipeline, ``(config, base_dir, *, out_dir, on_event) -> manifest``: how a
    #: search step (optimize) runs each candidate as an ordinary, cached step of its own
    run_pipeline: Callable[..., dict[str, Any]] | None = None

    def report_progress(self, text: str) -> None:
        """Show ``text`` as the step's progress (nothing when no one listens)."""
        if self.progress is not None:
            self.progress(text)

    @property
    def target(self) -> Target:
        """The pipeline's execution target."""
        return self.config.target

    @property
    def inputs(self) -> Inputs:
        """The main verification inputs."""
        return self.input_set.main

    @property
    def dims(self) -> dict[str, int]:
        """The symbolic dims' values of the main inputs."""
        return self.input_set.dims

    @property
    def second_inputs(self) -> Inputs | None:
        """The second-shape inputs (every symbolic dim changed), if any."""
        return self.input_set.second

    @property
    def second_dims(self) -> dict[str, int] | None:
        """The symbolic dims' values of the second-shape inputs."""
        return self.input_set.second_dims

    def reference(self, model: Path) -> Reference:
        """``model``'s outputs on the input set (graph rewrites disabled)."""
        return reference_outputs(model, self.input_set, self.target)

    def verify(
        self, child: Path, reference: Reference, tol: Tol, output_names: list[str] | None = None
    ) -> Verification:
        """Compare ``child`` with reference outputs on the input set, on the target (and score
        both with the task metric, when the run has one)."""
        verification = verify_model(
            child, reference, tol, self.input_set, self.target, output_names
        )
        if self.evaluator is not None and reference.model is not None:
            verification = self.evaluator.apply(verification, reference.model, child, tol)
        return verification


@dataclass
class StepResult:
    """What a step hands back to the engine.

    Attributes:
        report: step-specific facts for the manifest (sizes, op counts, choices made).
        verification: set when the step verified its output itself (export against
            PyTorch, package against its parent at the conversion's settings, quantize when
            it chose among candidates); otherwise the engine verifies against the parent.
        warnings: messages to show and record.
        keep_parent: the step decided that its parent is the better artifact (no new file).
        files: the files the step wrote beside its output (a package's operator config, a
            bench report's Markdown), published with it.
        failure: an error to raise after the step's files are published and recorded (a
            bench gate: the report is kept for reading).
        speed: the step timed its result against its parent itself (quantize auto): the
            comparison, which the engine records instead of timing again.
    """

    report: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None
    warnings: list[str] = field(default_factory=list)
    keep_parent: bool = False
    files: list[Path] = field(default_factory=list)
    failure: OnnxoptError | None = None
    speed: dict[str, Any] | None = None
