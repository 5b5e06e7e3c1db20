"""How close a model's outputs are to the teacher's on the held-out samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.steps.base import StepContext
from onnxopt.verify import Reference, cosine, outputs_on, reference_outputs


def teacher_reference(
    teacher: Path, mapping: dict[str, str], outputs: list[str], ctx: StepContext
) -> Reference:
    """The teacher's outputs on the run's input set, in the student's output order."""
    from onnxopt.modelio import load_model

    ref = reference_outputs(teacher, ctx.input_set, ctx.target)
    names = [o.name for o in load_model(teacher, load_weights=False).graph.output]
    order = [names.index(mapping[n]) for n in outputs]

    def pick(values: list[np.ndarray] | None) -> list[np.ndarray] | None:
        return None if values is None else [values[i] for i in order]

    main = pick(ref.main)
    assert main is not None
    samples = None if ref.samples is None else [pick(s) or [] for s in ref.samples]
    return Reference(main=main, second=pick(ref.second), samples=samples, model=teacher)


def fidelity(
    model: Path, reference: Reference, names: list[str], ctx: StepContext
) -> dict[str, Any]:
    """``model``'s outputs ``names`` against the teacher's: the lowest and the mean cosine
    per sample and the relative mean squared error (MSE over the teacher's mean square)."""
    from onnxopt.runtime import make_session

    session = make_session(model, ctx.target)
    order = [o.name for o in session.get_outputs()]
    got = outputs_on(session, ctx.input_set, model.name)
    sets_got = got.sets()
    cosines, errors, scales = [], [], []
    for values, wanted in zip(sets_got, reference.sets(), strict=True):
        for name in names:
            a = values[order.index(name)].astype(np.float64)
            b = wanted[order.index(name)].astype(np.float64)
            cosines.append(cosine(a, b))
            errors.append(float(np.mean((a - b) ** 2)))
            scales.append(float(np.mean(b**2)))
    return {
        "min_cosine": float(min(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "relative_mse": float(np.mean(errors)) / max(float(np.mean(scales)), 1e-30),
        "samples": len(sets_got),
    }
