"""What a step receives and returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.config import InputSpec, PipelineConfig, Target
from onnxopt.verify import Inputs, Tol

log = logging.getLogger("onnxopt")


@dataclass
class Reference:
    """Reference outputs a step computed itself (e.g. PyTorch for export)."""

    main: list[np.ndarray]
    second: list[np.ndarray] | None = None


@dataclass
class StepContext:
    """Everything a step may read about the pipeline it runs in."""

    config: PipelineConfig
    base_dir: Path
    specs: list[InputSpec]
    dims: dict[str, int]
    inputs: Inputs
    second_dims: dict[str, int] | None
    second_inputs: Inputs | None
    #: the folder the run started from: the user's own code (factories, callables) runs there
    invocation_dir: Path

    @property
    def target(self) -> Target:
        """The pipeline's execution target."""
        return self.config.target

    def verify(
        self, child: Path, reference: Reference, tol: Tol, output_names: list[str] | None = None
    ) -> dict[str, Any]:
        """Compare ``child`` with reference outputs on the shared (and second) input set."""
        from onnxopt.pipeline import verify_model

        return verify_model(child, reference, tol, self, output_names)


@dataclass
class StepResult:
    """What a step hands back to the engine.

    Attributes:
        report: step-specific facts for the manifest (sizes, op counts, choices made).
        verification: set when the step verified against its own reference (export);
            otherwise the engine verifies against the parent ONNX model.
        warnings: messages to show and record.
        source_label: what the parent was, when it is not an ONNX file (e.g. PyTorch).
        keep_parent: the step decided that its parent is the better artifact (no new file).
    """

    report: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    source_label: str | None = None
    keep_parent: bool = False
