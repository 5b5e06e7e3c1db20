"""Find the nodes whose quantization breaks the accuracy budget, and exclude them.

Each compute node is quantized alone (every other one excluded) and the model's outputs are
compared with the float model's on the verification inputs: the error that quantizing
*that* node introduces. Nodes are then excluded most sensitive first, a group at a time,
re-quantizing and re-verifying after each group, until the budget holds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from onnxopt.config import QuantizeStep
from onnxopt.errors import OnnxoptError, VerificationError
from onnxopt.modelio import load_model
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.core import COMPUTE_OPS, name_nodes, quantize_once
from onnxopt.verify import Reference, Verification, resolve_tolerance

log = logging.getLogger("onnxopt")


def rank_nodes(
    src: Path,
    cfg: QuantizeStep,
    ctx: StepContext,
    reference: Reference,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Compute nodes, most sensitive first: the output error when only that node is quantized.

    Comparing intermediate activations is cheaper but misleads when one channel dominates a
    tensor (its cosine stays high while every other channel is ruined), so each node is
    measured by its effect on the model's outputs. Past ``deadline`` (time.monotonic) the
    nodes not yet measured are left out.
    """
    from onnxopt.graph import constants_to_initializers

    model = load_model(src, load_weights=False)
    constants_to_initializers(model)
    name_nodes(model)
    names = [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS]
    names = [n for n in names if n not in cfg.nodes_to_exclude]
    del model
    tol = resolve_tolerance(cfg)
    ranked = []
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        probe = Path(tmp) / "one.onnx"
        for name in names:
            if deadline is not None and time.monotonic() > deadline:
                break
            others = [n for n in names if n != name] + list(cfg.nodes_to_exclude)
            one = cfg.model_copy(update={"nodes_to_exclude": others, "diagnose": False})
            try:
                quantize_once(src, probe, one, ctx)
            except OnnxoptError:
                continue  # this node is not quantizable in this mode
            cosine = ctx.verify(probe, reference, tol).min_cosine
            ranked.append({"node": name, "error": 1.0 - cosine, "cosine_alone": cosine})
    ranked.sort(key=lambda r: r["error"], reverse=True)
    return ranked


def diagnose(
    src: Path,
    dst: Path,
    cfg: QuantizeStep,
    ctx: StepContext,
    reference: Reference,
    deadline: float | None = None,
) -> tuple[dict[str, Any], Verification | None]:
    """Exclude sensitive nodes until the budget holds; write the passing model to ``dst``.

    ``deadline`` (time.monotonic): the ranking may use up to two thirds of the time left,
    the exclusion rounds stop at it (``stopped: "time"`` in the report).

    Returns:
        A report with the ranking, the rounds tried and the final exclusion list (``passed``
        tells whether the budget was met), and the passing model's verification (None when
        no exclusion list met the budget).
    """

    tol = resolve_tolerance(cfg)
    rank_by = None
    if deadline is not None:
        rank_by = time.monotonic() + (deadline - time.monotonic()) * 2 / 3
    ranking = rank_nodes(src, cfg, ctx, reference, rank_by)
    stopped = None
    excluded = list(cfg.nodes_to_exclude)
    rounds: list[dict[str, Any]] = []
    candidates = [r["node"] for r in ranking if r["node"] not in excluded]
    passed: Verification | None = None
    while candidates and len(excluded) - len(cfg.nodes_to_exclude) < cfg.diagnose_max_excluded:
        if deadline is not None and time.monotonic() > deadline:
            stopped = "time"
            break
        group, candidates = candidates[: cfg.diagnose_group], candidates[cfg.diagnose_group :]
        excluded += group
        trial = cfg.model_copy(update={"nodes_to_exclude": list(excluded), "diagnose": False})
        try:
            quantize_once(src, dst, trial, ctx)
        except OnnxoptError as err:
            rounds.append({"excluded": list(excluded), "error": err.message})
            break
        verification = ctx.verify(dst, reference, tol)
        rounds.append(
            {
                "excluded": list(excluded),
                "cosine": verification.min_cosine,
                "passed": verification.passed,
            }
        )
        if verification.passed:
            passed = verification
            break
    report = {
        "ranking": ranking[:20],
        "rounds": rounds,
        "passed": passed is not None,
        **({"stopped": stopped} if stopped else {}),
        "nodes_to_exclude": excluded,
        "yaml": "nodes_to_exclude: [" + ", ".join(excluded) + "]",
    }
    return report, passed


def diagnose_if_needed(
    src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext
) -> tuple[dict[str, Any], Verification | None]:
    """Check the budget; when it fails, find and exclude the sensitive nodes.

    Returns the diagnosis report and the verification of the model left at ``dst`` (the
    engine does not verify it again).
    """
    reference = ctx.reference(src)
    tol = resolve_tolerance(cfg)
    first = ctx.verify(dst, reference, tol)
    if first.passed:
        return {"needed": False}, first
    failure = first.first_failure()
    result, verification = diagnose(src, dst, cfg, ctx, reference)
    result.update(needed=True, initial_failure=failure)
    if not result["passed"]:
        raise VerificationError(
            f"quantize: {failure}; diagnosis excluded {len(result['nodes_to_exclude'])} "
            "node(s) without meeting the budget",
            hint="widen the budget, give representative calibration data, or try another mode",
        )
    log.warning(
        "quantize: budget met after excluding %d node(s); paste into the step: %s",
        len(result["nodes_to_exclude"]),
        result["yaml"],
    )
    return result, verification
