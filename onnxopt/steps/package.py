"""The package step: the ONNX artifact in ONNX Runtime's ORT format, for ORT Mobile and
minimal builds, plus the reduced operator configuration such a build is compiled with.

It uses the converter that ships in onnxruntime (``onnxruntime.tools``): a session saves the
optimized graph as ``.ort`` (``session.save_model_format=ORT``), and
``create_config_from_models`` lists the operators (and optionally types) the file needs.
The pipeline then loads the ``.ort`` file in ONNX Runtime and compares it with the ONNX
parent on the shared inputs.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from onnxopt.config import PackageStep
from onnxopt.errors import StepError, first_line
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.verify import Reference, resolve_tolerance


def _options(cfg: PackageStep) -> tuple[Any, list[str] | None]:
    """Session options and disabled optimizers of the conversion (shared with its reference)."""
    import onnxruntime as ort

    from onnxopt.runtime import LEVELS

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel(LEVELS[cfg.optimization_level])
    opts.add_session_config_entry(
        "session.qdqisint8allowed", "1" if cfg.target_platform == "arm" else "0"
    )
    # the NCHWc layout rewrite is x86-only; leaving it out keeps the file portable
    disabled = ["NchwcTransformer"] if cfg.target_platform != "amd64" else None
    return opts, disabled


def reference(parent: Path, cfg: PackageStep, ctx: StepContext) -> Reference:
    """The parent's outputs under the conversion's own settings (what the .ort freezes)."""
    import onnxruntime as ort

    from onnxopt.verify import outputs_on

    opts, disabled = _options(cfg)
    session = ort.InferenceSession(
        str(parent), sess_options=opts, providers=["CPUExecutionProvider"],
        disabled_optimizers=disabled,
    )  # fmt: skip
    return outputs_on(session, ctx.input_set, parent.name)


def convert(parent: Path, ort_path: Path, config_path: Path, cfg: PackageStep) -> dict[str, Any]:
    """Write ``ort_path`` and ``config_path`` from the ONNX model ``parent``; return facts."""
    import onnxruntime as ort

    from onnxopt.runtime import import_quietly

    tools = import_quietly("onnxruntime.tools.ort_format_model", "ort_format_model.utils")

    opts, disabled = _options(cfg)
    opts.optimized_model_filepath = str(ort_path)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    if cfg.optimization_style == "runtime":
        opts.add_session_config_entry("optimization.minimal_build_optimizations", "save")
    try:
        ort.InferenceSession(
            str(parent),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled,
        )
        with contextlib.redirect_stdout(io.StringIO()):
            tools.create_config_from_models([ort_path], config_path, cfg.type_reduction)
    except Exception as err:  # onnxruntime raises its own exception types
        raise StepError(
            f"ORT format conversion of {parent.name} failed: {first_line(err)}",
            hint="the model may use an op or type the ORT format does not support",
        ) from None
    if not ort_path.is_file() or not config_path.is_file():
        raise StepError(f"ORT format conversion of {parent.name} wrote no file")
    # the converter names the model it read by its full path, a scratch path here: name the
    # file only, so the config's bytes do not depend on the folder it was made in
    text = config_path.read_text(encoding="utf-8")
    config_path.write_text(text.replace(str(ort_path), ort_path.name), encoding="utf-8")
    ops = [
        line.strip()
        for line in config_path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {
        "target_platform": cfg.target_platform,
        "optimization_level": cfg.optimization_level,
        "optimization_style": cfg.optimization_style,
        "ort_bytes": ort_path.stat().st_size,
        "onnx_bytes": parent.stat().st_size,
        "operator_config_lines": ops,
        "operators": [op for line in ops for op in _op_names(line)],
    }


def _op_names(line: str) -> list[str]:
    """'domain;opset;A,B{"inputs": {...}},C' -> ['domain::A', ...] (type JSON skipped)."""
    domain, _, rest = line.partition(";")
    _, _, ops = rest.partition(";")
    names, depth, current = [], 0, ""
    for ch in ops + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            if current.strip():
                names.append(f"{domain}::{current.strip()}")
            current = ""
        elif depth == 0:
            current += ch
    return names


def run(src: Path | None, dst: Path, cfg: PackageStep, ctx: StepContext) -> StepResult:
    """Convert ``src`` into ``dst`` (.ort) and its operator config beside it, then check the
    .ort file against ``src`` run at the conversion's own settings."""
    assert src is not None
    kind = "required_operators_and_types" if cfg.type_reduction else "required_operators"
    config_path = dst.with_suffix(f".{kind}.config")
    report = convert(src, dst, config_path, cfg)
    verification = ctx.verify(dst, reference(src, cfg, ctx), resolve_tolerance(cfg))
    return StepResult(report=report, verification=verification, files=[config_path])
