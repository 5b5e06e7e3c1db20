"""Which model of a stored report a measured model is compared with (gates, merges).

A comparison that finds nothing to compare must not pass, so the rules are explicit:
1. the same label;
2. else the same model sha256 (the same file under another name);
3. else, when both sides hold exactly one model, those two (said in the notes);
4. else it is an error naming the labels the stored report holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxopt.errors import InputError


def match_models(
    models: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    *,
    what: str,
    hint: str,
) -> tuple[dict[str, str], list[str]]:
    """Map each measured model's label to the label of its row in ``reference``.

    Args:
        models: ``{"label", "sha256"}`` of the models measured now (or in a later report).
        reference: the same of the stored report compared against.
        what: how the stored report is named in messages ("the baseline", "report a").
        hint: what the user can do when a model matches nothing.

    Returns:
        label -> reference label, and notes on every match not made by label.

    Raises:
        InputError: a model matches no model of the reference.
    """
    labels = [m["label"] for m in reference]
    by_sha: dict[str, str] = {}
    for m in reference:
        if m.get("sha256"):
            by_sha.setdefault(m["sha256"], m["label"])
    mapping: dict[str, str] = {}
    notes: list[str] = []
    unmatched: list[str] = []
    for m in models:
        label, sha = m["label"], m.get("sha256")
        if label in labels:
            mapping[label] = label
        elif sha and sha in by_sha:
            mapping[label] = by_sha[sha]
            notes.append(f"{label} is compared with {what}'s {by_sha[sha]} (the same sha256)")
        else:
            unmatched.append(label)
    if unmatched and len(models) == 1 and len(reference) == 1:
        (label,) = unmatched
        mapping[label] = labels[0]
        notes.append(
            f"{label} is compared with {what}'s only model, {labels[0]} (labels and sha256 "
            "differ; each side holds one model)"
        )
        unmatched = []
    if unmatched:
        raise InputError(
            f"{what} has no model to compare {unmatched} with (matched by label, then by "
            f"sha256); it holds {labels or 'no models'}",
            hint=hint,
        )
    return mapping, notes


def config_key(row: Mapping[str, Any], model: str | None = None) -> tuple[Any, ...]:
    """The configuration a result row was measured in: model, provider, threads, batch."""
    return (
        model if model is not None else row["model"],
        row["provider"],
        int(row.get("threads") or 0),
        int(row.get("batch", 1)),
    )


def missing_rows_error(
    missing: list[tuple[Any, ...]], stored: list[tuple[Any, ...]], what: str, hint: str
) -> InputError:
    """The error for measured configurations that ``what`` has no row of."""

    def text(keys: list[tuple[Any, ...]]) -> str:
        return ", ".join(f"{m} on {p} threads={t or 'default'} batch={b}" for m, p, t, b in keys)

    return InputError(
        f"{what} has no row for {text(missing[:4])}"
        + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
        + f"; it holds {text(stored[:6]) or 'no rows'}",
        hint=hint,
    )
