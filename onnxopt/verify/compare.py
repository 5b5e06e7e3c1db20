"""Comparing outputs with precision-aware tolerances, and the result of a verification."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from onnxopt.config import StepBase
from onnxopt.records import Comparison, OutputRow
from onnxopt.verify.kinds import OutputKind
from onnxopt.verify.rules import add_counts, count, judge_counts

#: the top-1 agreement a class-score output needs unless the tolerance says otherwise
DEFAULT_CLASS_TOP1 = 0.98


@dataclass(frozen=True)
class Tol:
    """Resolved tolerance of one comparison."""

    atol: float
    rtol: float
    min_cosine: float
    min_top1: float | None = None
    #: the outputs judged (None: all)
    outputs: tuple[str, ...] | None = None
    #: the step set its own tolerance (with a task metric, the outputs are then judged too)
    explicit: bool = True
    #: the largest relative error of any slice along a small axis (None: from min_cosine)
    max_slice_error: float | None = None
    #: class-score outputs: the mean change of the reference's top class probability
    max_score_change: float = 0.1
    #: decision (Sigmoid) outputs: the share of decisions at 0.5 that may flip
    max_decision_flips: float = 0.001
    #: output name -> what it is (onnxopt.verify.kinds); absent: values
    kinds: Mapping[str, OutputKind] = field(default_factory=dict)

    @property
    def elementwise(self) -> bool:
        """Whether elementwise bounds are checked (they see every element already)."""
        return not (math.isinf(self.atol) or math.isinf(self.rtol))

    @property
    def slice_bound(self) -> float:
        """The worst slice's relative error accepted: given, or twice what the cosine bound
        allows an error of the reference's own size (2 * sqrt(2 * (1 - min_cosine)))."""
        if self.max_slice_error is not None:
            return self.max_slice_error
        return 2.0 * math.sqrt(2.0 * max(1.0 - self.min_cosine, 1e-8))

    @property
    def class_top1(self) -> float:
        """The top-1 agreement a class-score output needs."""
        return DEFAULT_CLASS_TOP1 if self.min_top1 is None else self.min_top1

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for reports (unchecked bounds as None)."""
        result: dict[str, Any] = {
            "atol": None if math.isinf(self.atol) else self.atol,
            "rtol": None if math.isinf(self.rtol) else self.rtol,
            "min_cosine": self.min_cosine,
            "min_top1_agreement": self.min_top1,
        }
        if not self.elementwise:
            result["max_slice_error"] = round(self.slice_bound, 6)
        if self.kinds:
            result["rules"] = {name: kind.describe() for name, kind in self.kinds.items()}
            result["max_score_change"] = self.max_score_change
            result["max_decision_flips"] = self.max_decision_flips
        if self.outputs is not None:
            result["outputs"] = list(self.outputs)
        return result


def resolve_tolerance(step: StepBase, mode: str | None = None) -> Tol:
    """A step's tolerance: its type's default (per backend for quantize, ``mode``
    overriding the step's own), with the step config's ``tolerance`` overrides applied."""
    from onnxopt import registry

    bounds = registry.default_bounds(step, mode)
    atol, rtol, cos = bounds
    override = step.tolerance
    # a step that changes the function on purpose (prune, distill) has no default bound of
    # any kind: with no tolerance set, its class, decision and slice rules are unbounded
    # too (with one bound set, the rules of the other output kinds keep their defaults)
    free = bounds == registry.NO_BOUND and not override.model_fields_set
    unset: dict[str, Any] = (
        {"max_score_change": 1.0, "max_decision_flips": 1.0, "max_slice_error": math.inf,
         "min_top1_agreement": 0.0} if free else {}
    )  # fmt: skip

    def given(key: str) -> Any:
        value = getattr(override, key)
        return unset.get(key) if value is None else value

    optional: dict[str, Any] = {
        key: given(key)
        for key in ("max_score_change", "max_decision_flips")
        if given(key) is not None
    }
    return Tol(
        atol=override.atol if override.atol is not None else atol,
        rtol=override.rtol if override.rtol is not None else rtol,
        min_cosine=override.min_cosine if override.min_cosine is not None else cos,
        min_top1=given("min_top1_agreement"),
        outputs=tuple(override.outputs) if override.outputs is not None else None,
        explicit=bool(override.model_fields_set),
        max_slice_error=given("max_slice_error"),
        **optional,
    )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (1 when both are all zeros)."""
    a64 = a.astype(np.float64).ravel()
    b64 = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def compare_outputs(
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    names: list[str],
    tol: Tol,
    deferred: bool = False,
) -> Comparison:
    """Compare candidate outputs to the reference, output by output.

    Each output is judged by the rule that fits what it is (``tol.kinds``): class scores by
    top-1 agreement and the top score's change, decisions by the share that flip, values by
    the cosine; without elementwise bounds every output's worst slice along its small axes
    is judged too (a whole-tensor cosine is ruled by the largest values: a part of small
    range can be destroyed under a cosine of 0.99).

    ``deferred``: one sample of several; the rules that count over samples (agreement,
    flips, slices) are left to :func:`merge_samples`, which gets the counts.

    Returns:
        ``{"passed": bool, "outputs": [{name, max_abs_err, max_rel_err, cosine, passed, ...}]}``;
        with ``tol.outputs`` only those outputs decide ``passed``, the others are recorded
        with ``judged: False``.

    Raises:
        InputError: ``tol.outputs`` names an output the model does not have.
    """
    if tol.outputs is not None:
        unknown = [n for n in tol.outputs if n not in names]
        if unknown:
            from onnxopt.errors import InputError

            raise InputError(
                f"tolerance.outputs names {unknown}, which are not outputs of the model; "
                f"its outputs are {names}",
                hint="name the outputs the budget judges as the graph names them",
            )
    if len(reference) != len(candidate):
        return {
            "passed": False,
            "outputs": [],
            "problem": f"output count differs: {len(reference)} vs {len(candidate)}",
        }
    rows = [
        _compare_one(name, ref, got, tol)
        for name, ref, got in zip(names, reference, candidate, strict=True)
    ]
    if not deferred:
        for row in rows:
            judge_counts(row, tol)
    if tol.outputs is not None:
        for row in rows:
            if row["name"] not in tol.outputs:
                row["judged"] = False
    return {"passed": _judged_pass(rows), "outputs": rows}


def _compare_one(name: str, ref: np.ndarray, got: np.ndarray, tol: Tol) -> OutputRow:
    """One output's row: shape, errors, cosine, top-k agreement, the counts its rule needs,
    and the verdict on what one sample shows."""
    row: OutputRow = {"name": name, "shape": list(got.shape)}
    if ref.shape != got.shape:
        row["passed"] = False
        row["problem"] = f"shape {list(got.shape)} != {list(ref.shape)}"
    elif ref.dtype.kind in "fc" or got.dtype.kind in "fc":
        kind = tol.kinds.get(name)
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        _compare_floats(row, ref64, got64, tol, kind)
        if "problem" not in row:
            count(row, ref64, got64, tol, kind)
    else:
        mismatched = int(np.count_nonzero(ref != got))
        row["mismatched"] = mismatched
        row["passed"] = mismatched == 0
        if mismatched:
            row["problem"] = f"{mismatched} of {ref.size} values differ"
    return row


def _compare_floats(
    row: OutputRow, ref64: np.ndarray, got64: np.ndarray, tol: Tol, kind: OutputKind | None
) -> None:
    """A float output judged into ``row``: NaN/inf where the reference has numbers fail at
    once, then the elementwise bounds, the cosine (values only: class scores and decisions
    have rules of their own) and (classifier-like outputs) top-1 agreement."""
    ref_nan, got_nan = np.isnan(ref64), np.isnan(got64)
    if np.any(got_nan & ~ref_nan):
        row["passed"] = False
        row["problem"] = "NaN where the reference has numbers"
        return
    if np.any(np.isinf(got64) & np.isfinite(ref64)):
        row["passed"] = False
        row["problem"] = "inf where the reference is finite (overflow?)"
        return
    ok = ~(ref_nan | got_nan)
    diff = np.abs(got64[ok] - ref64[ok])
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(ref64[ok]), 1e-12)
    max_rel = float(rel.max()) if rel.size else 0.0
    cos = cosine(np.where(ok, ref64, 0), np.where(ok, got64, 0))
    if math.isinf(tol.atol) or math.isinf(tol.rtol):
        within = True  # elementwise bounds not checked (inf * 0 would be NaN)
    else:
        within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref64[ok])))
    row["max_abs_err"] = max_abs
    row["max_rel_err"] = max_rel
    row["cosine"] = cos
    top1_ok = True
    if ref64.ndim == 2 and ref64.shape[1] > 1:
        top1 = float(np.mean(np.argmax(ref64, axis=1) == np.argmax(got64, axis=1)))
        row["top1_agreement"] = top1
        top1_ok = tol.min_top1 is None or top1 >= tol.min_top1
        if ref64.shape[1] > 5:
            top5 = np.argsort(-got64, axis=1)[:, :5]
            hits = (top5 == np.argmax(ref64, axis=1)[:, None]).any(axis=1)
            row["top5_agreement"] = float(np.mean(hits))
    by_rule = kind is not None and kind.kind != "values"
    cos_ok = by_rule or cos >= tol.min_cosine
    top1_ok = by_rule or top1_ok
    row["passed"] = within and cos_ok and top1_ok
    if not within:
        row["problem"] = f"max abs error {max_abs:.3g} beyond atol {tol.atol} + rtol {tol.rtol}"
    elif not cos_ok:
        row["problem"] = f"cosine {cos:.6f} below {tol.min_cosine}"
    elif not top1_ok:
        row["problem"] = f"top-1 agreement {row['top1_agreement']:.4f} below {tol.min_top1}"


def _judged_pass(rows: list[OutputRow]) -> bool:
    """Every judged output passed (a shape change fails whatever is judged)."""
    return all(
        r["passed"] or (r.get("judged") is False and not r.get("problem", "").startswith("shape"))
        for r in rows
    )


def failure_text(result: Comparison) -> str:
    """One-line summary of the first failing output."""
    if result.get("problem"):
        return str(result["problem"])
    for row in result["outputs"]:
        if not row["passed"] and row.get("judged") is not False:
            return f"output {row['name']!r}: {row.get('problem', 'mismatch')}"
    return "mismatch"


def merge_samples(results: list[Comparison], tol: Tol | None = None) -> Comparison:
    """One comparison from the comparisons of several samples: per output its worst figures
    (lowest cosine and top-1 agreement, largest errors), failing where any sample failed
    (the first such sample named in the problem); with ``tol``, the rules that count over
    the samples (compare_outputs ``deferred``) judged on their added-up counts."""
    if any(r.get("problem") and not r["outputs"] for r in results):
        first = next(r for r in results if r.get("problem") and not r["outputs"])
        return {
            "passed": False,
            "outputs": [],
            "problem": first["problem"],
            "samples": len(results),
        }
    merged = []
    for rows in zip(*(r["outputs"] for r in results), strict=True):
        row: OutputRow = {"name": rows[0]["name"], "shape": rows[0]["shape"]}
        if rows[0].get("judged") is False:
            row["judged"] = False
        for key, pick in (
            ("max_abs_err", max),
            ("max_rel_err", max),
            ("cosine", min),
            ("top1_agreement", min),
            ("top5_agreement", min),
            ("mismatched", max),
        ):
            values = [cast("dict[str, Any]", r)[key] for r in rows if key in r]
            if values:
                cast("dict[str, Any]", row)[key] = pick(values)
        cosines = [r["cosine"] for r in rows if "cosine" in r]
        if cosines:
            row["mean_cosine"] = float(np.mean(cosines))
        failing = [i for i, r in enumerate(rows) if not r["passed"]]
        row["passed"] = not failing
        if failing:
            row["problem"] = f"{rows[failing[0]].get('problem', 'mismatch')} (sample {failing[0]})"
        counts = add_counts(list(rows))
        for one in rows:
            cast("dict[str, Any]", one).pop("_counts", None)
        if tol is not None and counts:
            judge_counts(row, tol, counts)
        merged.append(row)
    return {"passed": _judged_pass(merged), "outputs": merged, "samples": len(results)}


def _structural(result: Comparison) -> bool:
    """A comparison that failed on the outputs' structure (their count or a shape)."""
    if result.get("problem") and not result["outputs"]:
        return True
    return any(str(r.get("problem", "")).startswith("shape") for r in result["outputs"])


def min_cosine(result: Mapping[str, Any], default: float | None = 1.0) -> float | None:
    """The lowest cosine of a comparison's judged outputs (``default`` when none was
    measured); a bench report's fidelity has the same form."""
    rows = [o for o in result.get("outputs") or [] if o.get("judged") is not False]
    return min((o["cosine"] for o in rows if "cosine" in o), default=default)


@dataclass(frozen=True)
class Verification:
    """The verdict on an artifact: its outputs compared with a reference on an input set.

    ``main`` and ``second`` are :func:`compare_outputs` results on the main and the
    second-shape inputs; ``problem`` is set when no comparison could be made (a dynamic dim
    became fixed). :meth:`as_dict` is what the manifest records.
    """

    tolerance: dict[str, float | None] | None = None
    main: Comparison | None = None
    second: Comparison | None = None
    second_dims: dict[str, int] | None = None
    problem: str | None = None
    #: the task metric's verdict (onnxopt.verify.task), when the run has one
    task: dict[str, Any] | None = None
    #: with a task metric: whether the outputs' budget counts too (else only a changed
    #: output shape fails)
    outputs_judged: bool = True

    @classmethod
    def failed(cls, problem: str) -> Verification:
        """A verification that could not compare anything, with the reason."""
        return cls(problem=problem)

    @property
    def passed(self) -> bool:
        """All outputs within tolerance on every input set."""
        if self.problem is not None or self.main is None:
            return False
        parts = [p for p in (self.main, self.second) if p is not None]
        outputs_ok = all(bool(p["passed"]) for p in parts)
        if self.task is None:
            return outputs_ok
        if not self.outputs_judged:
            outputs_ok = not any(_structural(p) for p in parts)
        return bool(self.task["passed"]) and outputs_ok

    @property
    def min_cosine(self) -> float:
        """The lowest cosine over the outputs on the main inputs."""
        value = None if self.main is None else min_cosine(self.main)
        return 1.0 if value is None else value

    def first_failure(self) -> str:
        """One line on what failed first (the task, main inputs, then the second shape)."""
        if self.task is not None and not self.task["passed"]:
            t = self.task
            return (
                f"task score {t['primary']!r} {t['score']:.4g} dropped {t['drop']:.4g} from the "
                f"parent's {t['parent_score']:.4g} (budget: max_drop {t['max_drop']})"
            )
        for part, where in ((self.main, ""), (self.second, " at the second shape")):
            if part is not None and not part["passed"]:
                return failure_text(part) + where
        return self.problem or "mismatch"

    def as_dict(self) -> dict[str, Any]:
        """The manifest's form of the verification."""
        if self.problem is not None:
            return {"passed": False, "problem": self.problem}
        result: dict[str, Any] = {"tolerance": self.tolerance, "main": self.main}
        if self.second is not None:
            result["second_shape"] = {**self.second, "dims": self.second_dims}
        if self.task is not None:
            result["task"] = self.task
            result["outputs_judged"] = self.outputs_judged
        result["passed"] = self.passed
        return result
