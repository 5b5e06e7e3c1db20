"""Configuration of the distill step: teacher, student, losses and training settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from onnxopt.config.base import ModelRef, StepBase, StrictModel, UserCode, UserPath


class StudentSource(StrictModel):
    """A PyTorch student of the user's own architecture (instead of the parent ONNX graph)."""

    factory: UserCode = Field(
        description="'package.module:function' or 'path/to/file.py:function' returning an "
        "nn.Module that takes the model's inputs in order (runs that code)."
    )
    factory_args: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the factory."
    )
    weights: UserPath | None = Field(
        None, description="Optional initial state_dict: .pt/.pth (weights_only) or .safetensors."
    )
    opset: int = Field(18, ge=7, le=23, description="Opset the trained student is exported at.")


class DistillStep(StepBase):
    """Knowledge distillation: train the student (the parent model, or a PyTorch factory) to
    reproduce the teacher's outputs on samples of the user's inputs."""

    type: Literal["distill"] = Field(description="Step type.")

    def input_files(self) -> list[str]:
        """A teacher given as a file, and a factory student's initial weights."""
        files = [self.teacher] if self.teacher.endswith(".onnx") else []
        return files + ([self.student.weights] if self.student and self.student.weights else [])

    teacher: ModelRef = Field(
        "source",
        description="The model whose outputs are learned: 'source' (the pipeline's original "
        "model, or its export), the name of an earlier step, or a path to an .onnx file. It "
        "runs in ONNX Runtime, so any ONNX model with the student's inputs and outputs works.",
    )
    student: StudentSource | None = Field(
        None,
        description="A PyTorch factory student; default: the parent ONNX model itself, "
        "converted for training (its graph is kept, only its weights change).",
    )
    loss: Literal["mse", "kl"] = Field(
        "mse",
        description="mse: mean squared error on the outputs, relative to the teacher's mean "
        "square (regression, embeddings); kl: KL divergence of softened logits over the last "
        "axis (classifiers).",
    )
    temperature: float = Field(2.0, gt=0, description="kl: softmax temperature.")
    outputs: list[str] | None = Field(
        None,
        min_length=1,
        description="Outputs the loss covers (default: the judged outputs, else every float "
        "output).",
    )
    output_weights: dict[str, float] = Field(
        default_factory=dict, description="Loss weight per output name (default 1)."
    )
    intermediates: list[str] = Field(
        default_factory=list,
        description="Tensors matched between teacher and student by name (after channel "
        "pruning they keep their names); a differing channel count is bridged by a learned "
        "linear map that is discarded after training.",
    )
    intermediate_weight: float = Field(
        0.5, ge=0, description="Loss weight of each matched intermediate tensor."
    )
    features: Literal["pruned", "none"] = Field(
        "none",
        description="Features matched besides 'intermediates': 'pruned' matches, where the "
        "parent graph has fewer channels than the teacher (channel pruning), the outputs of "
        "the nodes that read a pruned tensor (at most 6, spread over the depth); 'none' "
        "matches the outputs only (the default: on real CNNs pruned by a third of their "
        "MACs the features cost task fidelity, docs/performance.md).",
    )
    feature_weight: float = Field(
        0.5, ge=0, description="Loss weight of the 'pruned' features, shared among them."
    )
    steps: int | None = Field(
        None, ge=1, description="Optimizer steps (default 300 unless 'epochs' is given)."
    )
    epochs: float | None = Field(
        None, gt=0, description="Passes over the training samples instead of 'steps'."
    )
    batch_size: int = Field(16, ge=1, description="Samples per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after the warm-up."
    )
    warmup: float = Field(
        0.05, ge=0, lt=1, description="Fraction of the steps with a linearly rising rate."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradient norm to this (null: no clipping)."
    )
    seed: int = Field(0, description="Seed of the sample order and of synthetic samples.")
    threads: int | None = Field(
        None, ge=1, description="torch intra-op threads while training (default: torch's)."
    )
    max_seconds: float = Field(
        600.0, gt=0, description="Wall-clock budget of the training loop; it stops there."
    )
    eval_every: int = Field(
        25, ge=1, description="Steps between evaluations on the validation part."
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without improvement (default: never).",
    )
    validation: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="Fraction of the training samples kept apart for early stopping and for "
        "choosing the best weights (the held-out samples that prove the result are never "
        "seen by training).",
    )
    augment: UserCode | None = Field(
        None,
        description="'module:function' or 'file.py:function' applied to each training batch: "
        "fn(feeds: dict of arrays, rng: numpy Generator) -> dict of arrays (runs that code).",
    )
    allow_synthetic: bool = Field(
        False,
        description="With no data, train on generated inputs (as verification generates "
        "them). Only useful when random inputs are representative of the real ones.",
    )
    synthetic_samples: int = Field(
        512, ge=2, description="Generated training samples when allow_synthetic is on."
    )

    @field_validator("output_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, found {bad}")
        return value

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> DistillStep:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give 'steps' or 'epochs', not both")
        return self
