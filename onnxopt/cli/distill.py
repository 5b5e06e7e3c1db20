"""``onnxopt distill``: knowledge distillation from a teacher into the input model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.app import app
from onnxopt.cli.options import (
    Common,
    CosOpt,
    OutputOpt,
    float_arg,
    given,
    on_onnx,
    step_command,
    tolerance,
)


@app.command()
@step_command()
def distill(
    model: Annotated[Path, typer.Argument(help="The student: an .onnx model (e.g. pruned).")],
    output: OutputOpt,
    teacher: Annotated[
        Path,
        typer.Option("--teacher", help="The .onnx model whose outputs the student learns."),
    ],
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps (300).")] = None,
    epochs: Annotated[
        str | None, typer.Option("--epochs", help="Passes over the samples instead.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Samples per step (16).")
    ] = None,
    lr: Annotated[str | None, typer.Option("--lr", help="Peak learning rate (1e-3).")] = None,
    loss: Annotated[
        str | None, typer.Option("--loss", help="mse (default) or kl (classifier logits).")
    ] = None,
    temperature: Annotated[str | None, typer.Option("--temperature", help="kl: 2.0.")] = None,
    intermediate: Annotated[
        list[str] | None,
        typer.Option("--intermediate", help="A tensor matched by name too (repeatable)."),
    ] = None,
    max_seconds: Annotated[
        str | None, typer.Option("--max-seconds", help="Training time budget (600).")
    ] = None,
    train_threads: Annotated[
        int | None, typer.Option("--train-threads", help="torch threads while training.")
    ] = None,
    train_seed: Annotated[
        int | None, typer.Option("--train-seed", help="Seed of sample order (0).")
    ] = None,
    allow_synthetic: Annotated[
        bool,
        typer.Option("--allow-synthetic", help="With no --data, train on generated inputs."),
    ] = False,
    min_cosine: CosOpt = None,
    *,
    common: Common,
) -> None:
    """Distill a teacher into the model on your (unlabelled) data: win back what pruning cost."""
    step: dict[str, Any] = {
        "type": "distill",
        "teacher": str(teacher.resolve()),
        **given(
            steps=steps,
            epochs=None if epochs is None else float_arg(epochs, "--epochs"),
            batch_size=batch_size,
            lr=None if lr is None else float_arg(lr, "--lr"),
            loss=loss,
            temperature=None if temperature is None else float_arg(temperature, "--temperature"),
            intermediates=intermediate or None,
            max_seconds=None if max_seconds is None else float_arg(max_seconds, "--max-seconds"),
            threads=train_threads,
            seed=train_seed,
            allow_synthetic=allow_synthetic or None,
        ),
        "tolerance": tolerance(min_cosine=min_cosine),
    }
    on_onnx(step, model, output, common)
