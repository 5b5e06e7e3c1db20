"""Running an artifact on the input set and judging it against a reference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.config import InputSpec, Target
from onnxopt.graph import graph_inputs, value_info_shape
from onnxopt.modelio import load_model
from onnxopt.verify.compare import Tol, Verification, compare_outputs, merge_samples
from onnxopt.verify.inputs import InputSet
from onnxopt.verify.kinds import output_kinds


@dataclass
class Reference:
    """Reference outputs on an input set: its main and second-shape inputs, or its held-out
    samples (one list of outputs per sample)."""

    main: list[np.ndarray]
    second: list[np.ndarray] | None = None
    samples: list[list[np.ndarray]] | None = None
    #: the model these are the outputs of (a task metric scores it too)
    model: Path | None = None

    def sets(self) -> list[list[np.ndarray]]:
        """The outputs per input set, in :meth:`InputSet.sets` order."""
        if self.samples:
            return list(self.samples)
        return [self.main] if self.second is None else [self.main, self.second]


def outputs_on(session: Any, inputs: InputSet, where: str) -> Reference:
    """A session's outputs on the input set (every held-out sample when it has them)."""
    from onnxopt.runtime import run_session

    if inputs.samples:
        if inputs.state_pairs:
            from onnxopt.verify.stream import closed_loop

            per_sample = closed_loop(session, inputs.samples, inputs.state_pairs, where)
        else:
            per_sample = [run_session(session, s, where) for s in inputs.samples]
        return Reference(main=per_sample[0], samples=per_sample)
    second = run_session(session, inputs.second, where) if inputs.second is not None else None
    return Reference(main=run_session(session, inputs.main, where), second=second)


def reference_outputs(parent: Path, inputs: InputSet, target: Target) -> Reference:
    """Outputs of ``parent`` on the input set.

    The parent runs as written, with ONNX Runtime's graph rewrites disabled, so a bug in a
    rewrite cannot hide in the reference.
    """
    from onnxopt.runtime import make_session

    reference = outputs_on(make_session(parent, target, level="disable"), inputs, parent.name)
    reference.model = parent
    return reference


def verify_model(
    child: Path,
    reference: Reference,
    tol: Tol,
    inputs: InputSet,
    target: Target,
    output_names: list[str] | None = None,
) -> Verification:
    """Run ``child`` on the input set and compare its outputs with ``reference``."""
    from onnxopt.runtime import make_session, run_session

    session = make_session(child, target)
    names = output_names or [o.name for o in session.get_outputs()]
    if not tol.kinds:
        tol = dataclasses.replace(tol, kinds=output_kinds(reference.model))
    if inputs.samples and reference.samples is not None:
        got_all = outputs_on(session, inputs, child.name).samples or []
        states = set((inputs.state_pairs or {}).values())
        if states and tol.outputs is None and set(names) - states:
            # in closed loop a state's error reaches the outputs it feeds, where it is
            # judged; the states themselves are recorded (a hidden state at cosine 0.95
            # can carry an intact task)
            tol = dataclasses.replace(tol, outputs=tuple(n for n in names if n not in states))
        results = [
            compare_outputs(ref, got, names, tol, deferred=True)
            for ref, got in zip(reference.samples, got_all, strict=True)
        ]
        return Verification(tolerance=tol.as_dict(), main=merge_samples(results, tol))
    got = run_session(session, inputs.main, child.name)
    main = compare_outputs(reference.main, got, names, tol)
    second = None
    if reference.second is not None and inputs.second is not None:
        got = run_session(session, inputs.second, child.name)
        second = compare_outputs(reference.second, got, names, tol)
    return Verification(
        tolerance=tol.as_dict(), main=main, second=second, second_dims=inputs.second_dims
    )


def dynamic_axes(model_path: Path) -> dict[str, set[int]]:
    """input name -> axes that are not fixed in the model file."""
    model = load_model(model_path, load_weights=False)
    return {
        v.name: {i for i, d in enumerate(value_info_shape(v)) if not isinstance(d, int) or d <= 0}
        for v in graph_inputs(model)
    }


def pinned_dims(child: Path, symbolic: dict[str, set[int]]) -> list[str]:
    """Inputs whose requested symbolic axes became fixed in ``child``."""
    model = load_model(child, load_weights=False)
    problems = []
    for value in graph_inputs(model):
        shape = value_info_shape(value)
        for axis in sorted(symbolic.get(value.name, set())):
            dim = shape[axis] if axis < len(shape) else None
            if isinstance(dim, int) and dim > 0:
                problems.append(f"{value.name}[{axis}] fixed to {dim}")
    return problems


def symbolic_axes(specs: list[InputSpec]) -> dict[str, set[int]]:
    """input name -> axes that are symbolic in the specs."""
    return {s.name: {i for i, d in enumerate(s.shape) if isinstance(d, str)} for s in specs}


def verify_against_parent(
    parent: Path, child: Path, tol: Tol, inputs: InputSet, target: Target
) -> Verification:
    """The check every model-changing step gets: the dynamic dims of the parent are still
    dynamic, and the child's outputs match the parent's on the input set."""
    pinned = pinned_dims(child, dynamic_axes(parent))
    if pinned:
        return Verification.failed(f"dynamic dims became fixed: {', '.join(pinned)}")
    return verify_model(child, reference_outputs(parent, inputs, target), tol, inputs, target)
