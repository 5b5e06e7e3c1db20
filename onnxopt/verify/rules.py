"""The rules that count over an output's values and over the held-out samples: per-slice
errors along the small axes, class agreement (and, for a sequence of labels such as a CTC
recogniser's [N, T, classes], the share of whole sequences kept: one changed position in
forty misreads a line), decision flips (see compare_outputs).

A share that must be kept (top-1 agreement, whole sequences) is judged as it is expected on
inputs not seen yet, not as it was observed on these: Laplace's rule of succession, (kept + 1)
/ (total + 2), so that 64 of 64 samples kept shows 0.985 and one changed in 64 (0.984 seen,
0.970 expected) does not pass a 0.98 bound by luck. Where even all samples kept cannot show
the bound (fewer than 48 for 0.98), every one must be kept.

Each sample's counts stay on its row (``_counts``) so several samples add up before they
are judged; :func:`judge_counts` then writes the figures and the verdict into the row.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

import numpy as np

from onnxopt.records import OutputRow
from onnxopt.verify.kinds import OutputKind


class Tol(Protocol):
    """The bounds the rules read (onnxopt.verify.compare.Tol has them)."""

    @property
    def elementwise(self) -> bool: ...
    @property
    def slice_bound(self) -> float: ...
    @property
    def class_top1(self) -> float: ...
    @property
    def max_score_change(self) -> float: ...
    @property
    def max_decision_flips(self) -> float: ...


#: an axis of at most this many entries (past the first) is judged slice by slice
SMALL_AXIS = 128
#: ... when each of its slices holds at least this many values of one sample
MIN_SLICE = 16
#: a slice's reference norm is floored at this share of the whole tensor's RMS (per value)
SLICE_FLOOR = 1e-4


def slice_axes(shape: tuple[int, ...]) -> list[int]:
    """The axes past the first judged slice by slice: at most SMALL_AXIS entries, each
    slice holding at least MIN_SLICE values."""
    total = int(np.prod(shape))
    return [
        axis
        for axis in range(1, len(shape))
        if 2 <= shape[axis] <= SMALL_AXIS and total // shape[axis] >= MIN_SLICE
    ]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=axis, keepdims=True))


def _decision_parts(shape: tuple[int, ...], kind: OutputKind | None) -> np.ndarray | None:
    """Where a values output holds Sigmoid decisions (``kind.parts``), as a mask; or None."""
    if kind is None or not kind.parts or len(shape) <= kind.axis:
        return None
    mask = np.zeros(shape, bool)
    for start, stop in kind.parts:
        index = [slice(None)] * len(shape)
        index[kind.axis] = slice(start, stop)
        mask[tuple(index)] = True
    return mask


def count(
    row: OutputRow, ref64: np.ndarray, got64: np.ndarray, tol: Tol, kind: OutputKind | None
) -> None:
    """The counts the output's rule is judged on, kept on the row (``_counts``) so several
    samples add up: per-slice squared errors and norms, class agreements, flips."""
    counts: dict[str, Any] = {}
    ok = ~(np.isnan(ref64) | np.isnan(got64))
    ref0, got0 = np.where(ok, ref64, 0.0), np.where(ok, got64, 0.0)
    decided = _decision_parts(ref0.shape, kind)  # judged by their flips, not their errors
    if decided is not None:
        flipped = (ref0 > 0.5) != (got0 > 0.5)
        counts["decisions"] = [int(np.count_nonzero(flipped & decided)), int(decided.sum())]
    if not tol.elementwise and ref0.ndim >= 2:
        slices = {}
        err, ref_values = got0 - ref0, ref0
        if decided is not None:
            err, ref_values = np.where(decided, 0.0, err), np.where(decided, 0.0, ref0)
        for axis in slice_axes(ref0.shape):
            size = ref0.shape[axis]
            others = tuple(i for i in range(ref0.ndim) if i != axis)
            err2 = (err**2).sum(axis=others)
            slices[axis] = [err2, (ref_values**2).sum(axis=others), ref0.size // size]
        if slices:
            counts["slices"] = slices
    if kind is not None and kind.kind == "classes" and ref0.ndim >= 1:
        axis = kind.axis % ref0.ndim
        if ref0.shape[axis] >= 2 and not (kind.coerced and axis != ref0.ndim - 1):
            if kind.scores == "logits":
                ref_p, got_p = softmax(ref0, axis), softmax(got0, axis)
            elif kind.scores == "log-probabilities":
                ref_p, got_p = np.exp(ref0), np.exp(got0)
            else:
                ref_p, got_p = ref0, got0
            top = np.expand_dims(np.argmax(ref_p, axis=axis), axis)
            agree = np.argmax(got_p, axis=axis) == np.squeeze(top, axis)
            change = np.abs(
                np.take_along_axis(got_p, top, axis) - np.take_along_axis(ref_p, top, axis)
            )
            counts["classes"] = [int(agree.sum()), int(agree.size), float(change.sum())]
            if agree.ndim == 2 and agree.size > 1:  # a sequence of labels: [N, T] or [T, N]
                batch = 1 if agree.shape[0] > 1 and agree.shape[1] == 1 else 0
                whole = agree.all(axis=1 - batch)
                counts["sequences"] = [int(whole.sum()), int(whole.size)]
    if kind is not None and kind.kind == "decisions":
        flips = int(np.count_nonzero((ref0 > 0.5) != (got0 > 0.5)))
        counts["decisions"] = [flips, int(ref0.size)]
    if counts:
        cast("dict[str, Any]", row)["_counts"] = counts


def add_counts(rows: list[OutputRow]) -> dict[str, Any]:
    """The counts of one output over several samples, added up."""
    total: dict[str, Any] = {}
    for row in rows:
        counts = cast("dict[str, Any]", row).get("_counts") or {}
        for key, value in counts.items():
            if key == "slices":
                into = total.setdefault("slices", {})
                for axis, (err2, ref2, n) in value.items():
                    if axis in into and into[axis][0].shape == err2.shape:
                        into[axis] = [into[axis][0] + err2, into[axis][1] + ref2, into[axis][2] + n]
                    else:
                        into[axis] = [err2, ref2, n]
            else:
                before = total.get(key)
                total[key] = (
                    list(value)
                    if before is None
                    else [a + b for a, b in zip(before, value, strict=True)]
                )
    return total


def expected_share(kept: int, total: int) -> float:
    """The share expected kept on unseen inputs after ``kept`` of ``total`` were: Laplace's
    rule of succession (the mean of the uniform prior's posterior)."""
    return (kept + 1) / (total + 2)


def share_kept(kept: int, total: int, bound: float) -> bool:
    """Whether ``kept`` of ``total`` shows a kept share of at least ``bound`` on unseen inputs
    (every one kept where too few samples could show it at all)."""
    if total <= 0:
        return False
    return expected_share(kept, total) >= bound or (
        kept == total and expected_share(total, total) < bound
    )


def _expected_text(kept: int, total: int) -> str:
    return f"{expected_share(kept, total):.4f} expected on unseen inputs"


def slice_text(axis: int, index: int) -> str:
    return "[" + ", ".join([":"] * axis + [str(index)]) + "]"


def judge_counts(row: OutputRow, tol: Tol, counts: dict[str, Any] | None = None) -> None:
    """Judge the rules that count (class agreement, flips, the worst slice) into ``row``
    from ``counts`` (default: the row's own) and drop the counts from the row."""
    own = cast("dict[str, Any]", row).pop("_counts", None)
    counts = own if counts is None else counts
    if not counts:
        return
    extra = cast("dict[str, Any]", row)
    problems = []
    if "classes" in counts:
        agree, total, change = counts["classes"]
        agreement, moved = agree / max(total, 1), change / max(total, 1)
        extra.update(top1_agreement=agreement, top_score_change=moved)
        extra["top1_agreement_expected"] = expected_share(agree, total)
        extra["judged_by"] = "top-1 agreement, expected on unseen inputs, and the top score"
        if "sequences" in counts:
            kept, sequences = counts["sequences"]
            extra["sequences_kept"] = kept / max(sequences, 1)
            extra["judged_by"] = "top-1 agreement, whole label sequences kept, the top score"
        if not share_kept(agree, total, tol.class_top1):
            problems.append(
                f"top-1 agreement {agreement:.4f} ({total - agree} of {total} changed; "
                f"{_expected_text(agree, total)}) below {tol.class_top1}"
            )
        elif "sequences" in counts and not share_kept(
            counts["sequences"][0], counts["sequences"][1], tol.class_top1
        ):
            kept, sequences = counts["sequences"]
            problems.append(
                f"{sequences - kept} of {sequences} label sequences changed "
                f"({kept / max(sequences, 1):.4f} kept, {_expected_text(kept, sequences)}; below "
                f"{tol.class_top1}; top-1 agreement per position {agreement:.4f})"
            )
        elif moved > tol.max_score_change:
            problems.append(
                f"the top class's score moved {moved:.4f} on average, above {tol.max_score_change}"
            )
    if "decisions" in counts:
        flips, total = counts["decisions"]
        share = flips / max(total, 1)
        extra.update(decision_flips=flips, decisions=total)
        extra["judged_by"] = "decisions at 0.5 that flip"
        if share > tol.max_decision_flips:
            problems.append(
                f"{flips} of {total} decisions at 0.5 flipped ({share:.2%}), above "
                f"{tol.max_decision_flips:.2%}"
            )
    worst = worst_slice(counts.get("slices") or {})
    if worst is not None:
        extra["worst_slice"] = worst
        extra.setdefault("judged_by", "cosine and the worst slice")
        if worst["relative_error"] > tol.slice_bound:
            problems.append(
                f"slice {worst['slice']}: relative error {worst['relative_error']:.3g} above "
                f"{tol.slice_bound:.3g} (the whole tensor's cosine is ruled by its largest "
                "values)"
            )
    if problems and row.get("passed", True):
        row["passed"] = False
        row["problem"] = problems[0]


def worst_slice(slices: dict[int, list[Any]]) -> dict[str, Any] | None:
    """The slice with the largest relative error ||candidate - reference|| / ||reference||
    (each slice's norm floored at SLICE_FLOOR of the tensor's RMS)."""
    worst: dict[str, Any] | None = None
    for axis, (err2, ref2, n) in sorted(slices.items()):
        rms = math.sqrt(float(ref2.sum()) / max(n * len(ref2), 1))
        floor = (SLICE_FLOOR * rms) ** 2 * n
        rel = np.sqrt(err2 / np.maximum(ref2, max(floor, 1e-300)))
        index = int(np.argmax(rel))
        if worst is None or rel[index] > worst["relative_error"]:
            worst = {
                "slice": slice_text(axis, index),
                "axis": axis,
                "index": index,
                "relative_error": float(rel[index]),
            }
    return worst
