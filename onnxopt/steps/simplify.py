"""Graph simplification: onnxsim, ONNX Runtime offline optimization, transformer fusions."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import SimplifyStep
from onnxopt.errors import ConfigError, StepError, did_you_mean, first_line
from onnxopt.graph import external_locations, iter_tensors, summary
from onnxopt.modelio import load_graph, load_model, model_size, remove_model, save_model
from onnxopt.runtime import make_session, short_name
from onnxopt.steps.base import StepContext, StepResult

log = logging.getLogger("onnxopt")


def _onnxsim(src: Path, dst: Path, cfg: SimplifyStep, ctx: StepContext) -> dict[str, Any]:
    import onnxsim

    load_model(src, load_weights=False)  # clear errors for a bad input, weights not read
    opts = cfg.onnxsim
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # by path, with output_path: onnxsim's C++ core reads and writes the files itself
            # (measured on a 2.25 GiB model: 15 s and 1.25x its size in peak memory, against
            # 98 s and 3.25x through an in-memory ModelProto)
            _, ok = onnxsim.simplify(
                str(src),
                check_n=0,
                skip_fuse_bn=opts.skip_fuse_bn,
                skip_constant_folding=opts.skip_constant_folding,
                skipped_optimizers=list(opts.skipped_optimizers) or None,
                output_path=str(dst),
                external_data_threshold="1B" if ctx.config.external_data == "always" else "2GB",
            )
    except Exception as err:
        return _onnxsim_failed(f"onnxsim failed: {first_line(err)}", src, dst, cfg, ctx)
    if not ok:
        return _onnxsim_failed("onnxsim reported that simplification failed", src, dst, cfg, ctx)
    _own_external_data_name(dst, ctx.config.external_data)
    return {}


def _onnxsim_failed(
    problem: str, src: Path, dst: Path, cfg: SimplifyStep, ctx: StepContext
) -> dict[str, Any]:
    """onnxsim failed on a model that loads: ONNX Runtime's basic level instead, or fail."""
    if cfg.onnxsim.fallback == "none":
        raise StepError(
            problem,
            hint="try backend 'ort', skip the failing pass with onnxsim.skipped_optimizers, "
            "or let onnxsim.fallback: ort_basic take over",
        )
    remove_model(dst)  # whatever onnxsim left half written
    basic = cfg.model_copy(update={"ort": cfg.ort.model_copy(update={"level": "basic"})})
    facts = _ort(src, dst, basic, ctx)
    return {**facts, "fallback": "ort_basic", "onnxsim_error": problem}


def _own_external_data_name(path: Path, policy: str) -> None:
    """Give a model written by another tool this project's external-data layout.

    onnxsim names the weights file with a random UUID; artifacts keep theirs in
    ``NAME.onnx.data`` (one file), which is what publishing, hashing and caching expect. The
    file is renamed and the references rewritten without reading the weights.
    """
    import os

    import onnx

    model = load_graph(path)
    locations = external_locations(model)
    wanted = path.name + ".data"
    if locations == {wanted} or not locations:
        if not locations and policy == "always":
            save_model(load_model(path), path, external_data="always")
        return
    if len(locations) > 1:  # not seen from onnxsim; the slow, general way
        save_model(load_model(path), path, external_data=policy)
        return
    (location,) = locations
    os.replace(path.parent / location, path.parent / wanted)
    for t in iter_tensors(model):
        for e in t.external_data:
            if e.key == "location":
                e.value = wanted
    onnx.save_model(model, str(path))


def _ort(src: Path, dst: Path, cfg: SimplifyStep, ctx: StepContext) -> dict[str, Any]:
    from onnxopt.runtime import session_options

    level = cfg.ort.level
    # ORT writes weights beside its output (otherwise it may point back at the parent's
    # .data file); the result is then re-saved under the pipeline's external-data policy.
    raw = dst.with_name(f"ort-{dst.name}")
    opts = session_options(ctx.target, level=level, optimized_path=raw)
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", raw.name + ".data"
    )
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    make_session(src, ctx.target, options=opts)
    if not raw.is_file():
        raise StepError("ONNX Runtime wrote no optimized model")
    save_model(load_model(raw), dst, external_data=ctx.config.external_data)
    remove_model(raw)
    facts: dict[str, Any] = {"level": level}
    if level != "basic":
        provider = short_name(ctx.target.provider) if ctx.target.provider else "cpu"
        facts["valid_for_provider"] = provider
    return facts


def _transformers(src: Path, dst: Path, cfg: SimplifyStep, ctx: StepContext) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    opts = cfg.transformers
    if opts.model_type not in MODEL_TYPES:
        raise ConfigError(
            f"transformers.model_type {opts.model_type!r} is not known to "
            f"onnxruntime.transformers{did_you_mean(opts.model_type, MODEL_TYPES)}",
            hint=f"available: {', '.join(sorted(MODEL_TYPES))}",
        )
    facts = fuse_transformer(
        src, dst, opts.model_type, opts.num_heads, opts.hidden_size, ctx.config.external_data
    )
    return {"model_type": opts.model_type, **facts}


def fuse_transformer(
    src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int, external_data: str
) -> dict[str, Any]:
    """onnxruntime.transformers' fusions (attention, LayerNorm, GELU, ...) on the CPU; the
    fused op counts and the optimizer's warnings."""
    from onnxruntime.transformers.optimizer import optimize_model

    class _Collect(logging.Handler):  # the optimizer's warnings go to the report, not stderr
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text not in self.messages:
                self.messages.append(text)

    collect = _Collect()
    ort_log = logging.getLogger("onnxruntime.transformers")
    saved = ort_log.propagate
    ort_log.addHandler(collect)
    ort_log.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            optimized = optimize_model(
                str(src),
                model_type=model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=0,
                use_gpu=False,
            )
    except Exception as err:
        raise StepError(
            f"onnxruntime.transformers optimizer failed: {first_line(err)}",
            hint="check transformers.model_type, num_heads and hidden_size",
        ) from None
    finally:
        ort_log.removeHandler(collect)
        ort_log.propagate = saved
    stats: dict[str, int] = getattr(optimized, "get_fused_operator_statistics", dict)()
    fused = {k: v for k, v in stats.items() if v}
    model = optimized.model
    declared = {entry.domain for entry in model.opset_import}
    used = {node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")}
    for domain in sorted(used - declared):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    save_model(model, dst, external_data=external_data)
    return {"fused": fused, "optimizer_notes": collect.messages}


BACKENDS = {"onnxsim": _onnxsim, "ort": _ort, "transformers": _transformers}


def run(src: Path | None, dst: Path, cfg: SimplifyStep, ctx: StepContext) -> StepResult:
    """Apply the configured backends in order, writing ``dst``."""
    assert src is not None
    before_model = load_model(src, load_weights=False)
    before = summary(before_model)
    size_before = model_size(src)
    del before_model
    current = src
    passes: list[dict[str, Any]] = []
    warnings: list[str] = []
    for i, backend in enumerate(cfg.backend):
        out = dst if i == len(cfg.backend) - 1 else dst.with_name(f"{dst.stem}.{i}-{backend}.onnx")
        nodes_in = summary(load_model(current, load_weights=False))["nodes"]
        facts = BACKENDS[backend](current, out, cfg, ctx)
        nodes_out = summary(load_model(out, load_weights=False))["nodes"]
        passes.append(
            {"backend": backend, "nodes_before": nodes_in, "nodes_after": nodes_out, **facts}
        )
        if "fallback" in facts:
            warnings.append(
                f"{facts['onnxsim_error']}; simplified with ONNX Runtime's basic level instead"
            )
        if "valid_for_provider" in facts:
            warnings.append(
                f"ORT level '{facts['level']}' output is valid only for the "
                f"'{facts['valid_for_provider']}' provider it was made with"
            )
        current = out
    after_model = load_model(dst, load_weights=False)
    after = summary(after_model)
    ops_before, ops_after = before["ops"], after["ops"]
    op_delta = {
        op: ops_after.get(op, 0) - ops_before.get(op, 0)
        for op in sorted(set(ops_before) | set(ops_after))
        if ops_after.get(op, 0) != ops_before.get(op, 0)
    }
    report = {
        "backends": passes,
        "before": before,
        "nodes_before": before["nodes"],
        "nodes_after": after["nodes"],
        "op_delta": op_delta,
        "size_before": size_before,
        "size_after": model_size(dst),
    }
    valid_for = [p["valid_for_provider"] for p in passes if "valid_for_provider" in p]
    if valid_for:
        report["valid_for_provider"] = valid_for[-1]
    return StepResult(report=report, warnings=warnings)
