"""The distill step: train the student (the parent model, or a PyTorch factory) to reproduce
the teacher's outputs on samples of the user's inputs, then prove it against the teacher.

The parent ONNX graph is run for training by :mod:`.torch_graph` (its weights as torch
parameters; the trained values go back into the same graph); a factory student is trained
as a torch module and exported by the export step's code. Training samples come from the
run's calibration part (a validation part of them chooses the best weights and stops
early); the held-out samples, never seen by training, prove the result. When training did
not bring the student closer to the teacher on them, the parent is kept.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.config.distill import DistillStep
from onnxopt.errors import ConfigError, InputError, StepError, require
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.steps.distill.features import Features, pruned_features
from onnxopt.steps.distill.fidelity import fidelity, teacher_reference
from onnxopt.steps.distill.setup import (
    Teacher,
    augmentation,
    loss_outputs,
    output_map,
    training_samples,
)
from onnxopt.steps.distill.teacher import resolve_teacher

log = logging.getLogger("onnxopt")

__all__ = ["run"]

#: fewer training samples than this get a warning
SMALL_TRAINING_SET = 100


@contextlib.contextmanager
def _torch_state(threads: int | None, seed: int) -> Iterator[None]:
    """torch's thread count and RNG set for the run, restored afterwards."""
    import torch

    saved = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)


@contextlib.contextmanager
def _ours(src: Path) -> Iterator[None]:
    """A node failing in the torch form of a graph that ONNX Runtime runs is onnxopt's
    failure (exit 1), named, not the user's."""
    from onnxopt.steps.distill.torch_graph import GraphRunError

    try:
        yield
    except GraphRunError as err:
        raise StepError(
            f"the torch form of {src.name} failed: {err}",
            hint="this is onnxopt's failure, not your input's; please report it, or give a "
            "PyTorch student (student: {factory: ...})",
        ) from None


def run(src: Path | None, dst: Path, cfg: DistillStep, ctx: StepContext) -> StepResult:
    """Distill the teacher into the student, writing ``dst``."""
    require("torch")
    from onnxopt.modelio import load_model

    assert src is not None
    teacher_path = _teacher(cfg, ctx)
    parent = load_model(src, load_weights=False)
    student_outputs = [o.name for o in parent.graph.output]
    mapping = output_map(student_outputs, load_model(teacher_path, load_weights=False))
    names = loss_outputs(cfg, parent, student_outputs)
    train_set, validation, data_facts = training_samples(cfg, ctx)
    features = _features(src, teacher_path, cfg, ctx, train_set, len(validation))
    matched = {**{n: cfg.intermediate_weight for n in cfg.intermediates}, **features.weights}
    teacher = Teacher(teacher_path, mapping, names, list(matched), ctx)
    reference = teacher_reference(teacher_path, mapping, student_outputs, ctx)
    before = fidelity(src, reference, names, ctx)
    with _torch_state(cfg.threads, cfg.seed), _ours(src):
        from onnxopt.steps.distill.student import make_student
        from onnxopt.steps.distill.train import Batches, Targets, train

        student = make_student(src, cfg, ctx, names, train_set, list(matched))
        targets = Targets(teacher.run)
        loss = student.loss_spec(cfg, names, targets, train_set, validation, matched)

        batches = Batches(
            train_set, cfg.batch_size, student.concat, np.random.default_rng(cfg.seed)
        )
        history = train(
            student.module,
            student.forward,
            loss,
            batches,
            targets,
            validation,
            cfg,
            augmentation(cfg, ctx),
            ctx.report_progress,
        )
    report: dict[str, Any] = {
        "teacher": _label(cfg.teacher, teacher_path),
        "student": student.facts,
        "loss": {
            "kind": cfg.loss,
            "outputs": names,
            "intermediates": cfg.intermediates,
            "features": features.facts(),
            **({"temperature": cfg.temperature} if cfg.loss == "kl" else {}),
        },
        "data": data_facts,
        "training": history.as_dict(),
        "fidelity_before": before,
    }
    if history.best_step == 0:
        reason = f"training did not lower the validation error ({history.stopped}; best at step 0)"
        report["reason"] = reason
        return StepResult(report=report, warnings=[f"{reason}; kept the parent"], keep_parent=True)
    student.write(dst)
    after = fidelity(dst, reference, names, ctx)
    report["fidelity_after"] = after
    verification = ctx.verify(dst, reference, _tolerance(cfg), student_outputs)
    if ctx.evaluator is not None:
        report["task"] = {
            "teacher": ctx.evaluator.scores(teacher_path),
            "before": ctx.evaluator.scores(src),
            "after": ctx.evaluator.scores(dst),
        }
    if not after["relative_mse"] < before["relative_mse"]:
        reason = (
            f"distillation did not bring the held-out outputs closer to the teacher "
            f"(relative error {before['relative_mse']:.4g} -> {after['relative_mse']:.4g})"
        )
        report["reason"] = reason
        return StepResult(report=report, warnings=[f"{reason}; kept the parent"], keep_parent=True)
    plot = _plot(history.as_dict(points=400), dst)
    return StepResult(
        report=report,
        verification=verification,
        warnings=_data_warnings(data_facts),
        files=[plot] if plot is not None else [],
    )


def _teacher(cfg: DistillStep, ctx: StepContext) -> Path:
    """The teacher's file; models and settings distill cannot train are refused first."""
    chain = [(label, path, "") for label, path in ctx.chain]
    teacher_path, _ = resolve_teacher(cfg.teacher, chain, ctx.base_dir)
    if ctx.input_set.state_pairs:
        raise InputError(
            f"distill does not train recurrent models yet (state inputs "
            f"{sorted(ctx.input_set.state_pairs)} are carried from sample to sample)",
            hint="leave distill out of this pipeline",
        )
    if cfg.intermediates and cfg.student is not None:
        raise ConfigError(
            "intermediates match tensors of the ONNX graph; a factory student has none",
            hint="leave 'intermediates' out, or distill the parent graph (no 'student')",
        )
    return teacher_path


def _features(
    src: Path, teacher: Path, cfg: DistillStep, ctx: StepContext, train: list[Any], n_val: int
) -> Features:
    """The features matched where the parent was pruned (none for a factory student)."""
    from onnxopt.modelio import load_model

    if cfg.features == "none" or cfg.student is not None:
        return Features()
    samples = len(train) + n_val
    return pruned_features(
        load_model(src), load_model(teacher), train[0], samples, cfg.feature_weight, ctx
    )


def _data_warnings(data_facts: dict[str, Any]) -> list[str]:
    """What the training data could not prove: too few samples, or generated ones."""
    warnings = []
    if data_facts["source"] == "data" and data_facts["train"] < SMALL_TRAINING_SET:
        warnings.append(
            f"trained on {data_facts['train']} samples only: a student generalizes better "
            "from more of them (give more samples in --data)"
        )
    if data_facts["source"] == "synthetic":
        warnings.append(
            "trained on generated inputs (allow_synthetic): the student learned the teacher "
            "on random data; give --data (samples of your inputs) to train on your workload"
        )
    return warnings


def _tolerance(cfg: DistillStep) -> Any:
    from onnxopt.verify import resolve_tolerance

    return resolve_tolerance(cfg)


def _label(teacher: str, path: Path) -> str:
    return teacher if teacher == "source" or not teacher.endswith(".onnx") else path.name


def _plot(history: dict[str, Any], dst: Path) -> Path | None:
    """The loss curve as a PNG beside the model (with the plot extra), else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    curve, evals = history["loss_curve"], history["validation"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="training", lw=1)
    ax.plot([p["step"] for p in evals], [p["loss"] for p in evals], "o-", label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"distill: best at step {history['best_step']}")
    ax.legend()
    fig.tight_layout()
    path = dst.with_name(dst.name.removesuffix(".onnx") + ".loss.png")
    fig.savefig(path)
    plt.close(fig)
    return path
