"""A step that is not part of onnxopt, registered by a test: one module, one config class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from onnxopt.config import StepBase
from onnxopt.steps.base import StepContext, StepResult


class RenameStep(StepBase):
    """Renames the graph (a rewrite that changes no output)."""

    type: Literal["rename"] = Field(description="Step type.")
    graph_name: str = Field("renamed", description="The new graph name.")


def run(src: Path | None, dst: Path, cfg: RenameStep, ctx: StepContext) -> StepResult:
    """Write ``src`` with its graph renamed to ``dst``."""
    assert src is not None
    model = onnx.load(str(src))
    before = model.graph.name
    model.graph.name = cfg.graph_name
    onnx.save_model(model, str(dst))
    return StepResult(report={"renamed_from": before})
