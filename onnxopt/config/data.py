"""The user's data: where samples of the model's inputs come from, and how they are split."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from onnxopt.config.base import StrictModel, UserCode, UserPath


class ImagePreprocessing(StrictModel):
    """How images become one model input (RGB, resized, center-cropped, normalized)."""

    input: str | None = Field(None, description="Input that receives the image (default: first).")
    resize: int | None = Field(
        256, ge=1, description="Resize so the shorter side has this length (None: keep)."
    )
    crop: tuple[int, int] = Field((224, 224), description="Center crop [height, width].")
    scale: float = Field(1 / 255, description="Pixel values are multiplied by this first.")
    mean: list[float] = Field(
        default_factory=lambda: [0.485, 0.456, 0.406], description="Per-channel mean (RGB)."
    )
    std: list[float] = Field(
        default_factory=lambda: [0.229, 0.224, 0.225], description="Per-channel std (RGB)."
    )
    layout: Literal["nchw", "nhwc"] = Field("nchw", description="Tensor layout.")
    channels: Literal["rgb", "bgr"] = Field("rgb", description="Channel order.")


#: the memory the user's samples may take by default (bytes)
MAX_BYTES = 2 * 2**30


def folder_or_file_source(path: Path) -> Literal["npz", "images"]:
    """How a data path reads: a folder without .npz files is a folder of images; anything
    else (an .npz file, a folder of .npz samples) is npz."""
    if path.is_dir() and not any(path.glob("*.npz")):
        return "images"
    return "npz"


class DataConfig(StrictModel):
    """Samples of the model's inputs, the user's own (unlabelled is enough).

    A seeded split draws a calibration part and a disjoint held-out part: every step is
    verified against its parent on the held-out samples and timed at their shapes; static
    quantization calibrates on the other part.
    """

    source: Literal["npz", "images", "callable"] = Field(
        "npz",
        description="npz: an .npz file or a folder of .npz files; images: a folder of images "
        "with 'preprocessing'; callable: 'module:function' or 'file.py:function' returning an "
        "iterable of input dicts (runs that code).",
    )
    path: UserPath | None = Field(
        None,
        description="npz: a file whose arrays hold samples (an array of the input's own rank: "
        "samples stacked on its first axis; of rank + 1: one whole sample per leading index), "
        "or a folder of .npz files, one sample each; images: a folder of images.",
    )
    callable: UserCode | None = Field(None, description="For source callable: the function.")
    preprocessing: ImagePreprocessing = Field(
        default_factory=ImagePreprocessing, description="For source images."
    )
    samples: int | None = Field(
        None,
        ge=1,
        description="Samples to read at most (default: all of them, up to max_bytes).",
    )
    max_bytes: int = Field(
        MAX_BYTES,
        ge=1,
        description="Memory the samples may take (2 GiB): reading stops at the last whole "
        "sample within it, with a warning.",
    )
    holdout: float = Field(
        0.25,
        gt=0,
        description="Held-out part for verification: a fraction (0.25) or a count (8); at least "
        "one sample, and at least one left for calibration.",
    )
    seed: int = Field(0, description="Seed of the split (recorded in the manifest).")

    @field_validator("holdout")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"expected a fraction below 1 or a whole count, found {value}")
        return value

    @model_validator(mode="after")
    def _where(self) -> DataConfig:
        if self.source == "callable" and not self.callable:
            raise ValueError("source callable needs 'callable' (module:function)")
        if self.source != "callable" and not self.path:
            raise ValueError(f"source {self.source} needs 'path'")
        return self


class TaskBudget(StrictModel):
    """How far the task score may fall from the parent's."""

    max_drop: float = Field(
        0.01, ge=0, description="Largest accepted drop of the score (parent - candidate)."
    )


class EvaluateConfig(StrictModel):
    """The user's task metric: a function that scores a model through a runner.

    ``fn(runner)`` (or ``fn(runner, data)`` when ``data`` is given) gets an object whose
    ``predict(feeds) -> {output name: array}`` runs the artifact on the pipeline's target,
    and returns a score, higher is better, or a dict of named scores (``primary`` names the
    one judged; default: the first).
    """

    callable: UserCode = Field(
        description="'module:function' or 'file.py:function' (runs that code, in the folder "
        "onnxopt was started from)."
    )
    data: UserPath | None = Field(
        None,
        description="Passed to the function as its second argument (a path, resolved "
        "against the config's folder).",
    )
    primary: str | None = Field(
        None, description="The score judged when the function returns several (default: the first)."
    )
    budget: TaskBudget = Field(default_factory=TaskBudget, description="The task budget.")
