"""How close a model's outputs are to the teacher's on the held-out samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.steps.base import StepContext
from onnxopt.verify import Reference, cosine, outputs_on, reference_outputs
from onnxopt.verify.rules import slice_axes


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


#: an output whose parts along a small axis differ this much in mean square is normalized
#: part by part (a detector's boxes, hundreds of pixels, beside its scores, 0..1)
UNEVEN = 10.0


def uneven_parts(values: list[np.ndarray]) -> tuple[int, np.ndarray] | None:
    """The axis past the first along which the teacher's values (one array per sample) are
    made of parts of very different scales, and each part's mean square; None when the
    output is even (the whole tensor's mean square then normalizes it). The axes are those
    the verification judges slice by slice."""
    first = values[0]
    best: tuple[float, int, np.ndarray] | None = None
    for axis in slice_axes(first.shape):
        size = first.shape[axis]
        if any(v.shape[axis] != size for v in values):
            continue
        square = _part_means([v.astype(np.float64) ** 2 for v in values], axis)
        floor = max(float(square.max()) * 1e-9, 1e-12)
        square = np.maximum(square, floor)
        spread = float(square.max() / square.min())
        if spread >= UNEVEN and (best is None or spread > best[0]):
            best = (spread, axis, square)
    return None if best is None else (best[1], best[2])


def relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The squared error over the teacher's mean square (per sample arrays), part by part
    where the teacher's output is uneven (as the loss weighs it)."""
    parts = uneven_parts(want)
    if parts is None:
        err = np.mean([np.mean((a - b) ** 2) for a, b in zip(got, want, strict=True)])
        return float(err) / max(float(np.mean([np.mean(b**2) for b in want])), 1e-30)
    axis, scale = parts
    per_part = _part_means([(a - b) ** 2 for a, b in zip(got, want, strict=True)], axis)
    return float(np.mean(per_part / scale))


def _part_means(arrays: list[np.ndarray], axis: int) -> np.ndarray:
    """The mean of each index along ``axis``, over the other axes and the arrays."""
    return np.mean(
        [np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]).mean(0) for a in arrays], axis=0
    )


def fidelity(
    model: Path, reference: Reference, names: list[str], ctx: StepContext
) -> dict[str, Any]:
    """``model``'s outputs ``names`` against the teacher's: the lowest and the mean cosine
    per sample and the relative mean squared error (MSE over the teacher's mean square,
    part by part for an uneven output; the mean over the outputs)."""
    from onnxopt.runtime import make_session

    session = make_session(model, ctx.target)
    order = [o.name for o in session.get_outputs()]
    got = outputs_on(session, ctx.input_set, model.name)
    sets_got = got.sets()
    cosines, errors = [], []
    for name in names:
        k = order.index(name)
        a = [values[k].astype(np.float64) for values in sets_got]
        b = [wanted[k].astype(np.float64) for wanted in reference.sets()]
        cosines += [cosine(x, y) for x, y in zip(a, b, strict=True)]
        errors.append(relative_error(a, b))
    return {
        "min_cosine": float(min(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "relative_mse": float(np.mean(errors)),
        "samples": len(sets_got),
    }
