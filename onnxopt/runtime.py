"""ONNX Runtime sessions built from a pipeline's target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxopt.errors import InputError, StepError, first_line

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxopt.config import Target

#: Short provider names accepted on the command line and in configs.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "acl": "ACLExecutionProvider",
    "azure": "AzureExecutionProvider",
}

LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}


def provider_id(name: str) -> str:
    """Map a short name (``cuda``) or a full id (``CUDAExecutionProvider``) to the full id."""
    if name in PROVIDERS.values():
        return name
    key = name.lower().removesuffix("executionprovider")
    if key in PROVIDERS:
        return PROVIDERS[key]
    from onnxopt.errors import did_you_mean

    raise InputError(
        f"unknown execution provider {name!r}{did_you_mean(key, PROVIDERS)}",
        hint=f"known: {', '.join(PROVIDERS)}",
    )


def short_name(provider: str) -> str:
    """Full provider id back to its short name."""
    for short, full in PROVIDERS.items():
        if full == provider:
            return short
    return provider


def available_providers() -> list[str]:
    """Providers compiled into the installed onnxruntime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def require_provider(name: str) -> str:
    """Full id of ``name``, or an error listing the providers that are available."""
    full = provider_id(name)
    available = available_providers()
    if full not in available:
        raise InputError(
            f"execution provider '{name}' ({full}) is not available in this onnxruntime build; "
            f"available: {', '.join(short_name(p) for p in available)}",
            hint="install the onnxruntime package built for it (e.g. onnxruntime-gpu) "
            "or choose another provider",
        )
    return full


def session_options(
    target: Target | None = None,
    *,
    level: str = "all",
    optimized_path: Path | None = None,
) -> ort.SessionOptions:
    """SessionOptions from a target's thread settings and an optimization level."""
    import logging

    import onnxruntime as ort

    opts = ort.SessionOptions()
    # errors (a kernel failing at run time) reach the user as onnxopt's one error line;
    # ONNX Runtime's own log of them is kept for --debug
    opts.log_severity_level = 2 if logging.getLogger("onnxopt").isEnabledFor(10) else 4
    opts.graph_optimization_level = ort.GraphOptimizationLevel(LEVELS[level])
    if target is not None:
        if target.intra_op_threads:
            opts.intra_op_num_threads = target.intra_op_threads
        if target.inter_op_threads:
            opts.inter_op_num_threads = target.inter_op_threads
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return opts


def make_session(
    model_path: Path,
    target: Target | None = None,
    *,
    level: str = "all",
    optimized_path: Path | None = None,
    options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on the target's provider (with CPU as fallback)."""
    import onnxruntime as ort

    name = target.provider if target is not None else "cpu"
    full = require_provider(name)
    providers: list[Any] = [(full, dict(target.provider_options))] if target else [full]
    if full != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    opts = options or session_options(target, level=level, optimized_path=optimized_path)
    try:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types
        raise StepError(
            f"{model_path.name}: ONNX Runtime cannot load the model: {first_line(err)}",
            hint="run 'onnxopt inspect' on it, or try another opset/exporter",
        ) from None


def expose_outputs(model: Any, names: list[str]) -> None:
    """Append ``names`` (tensors the graph computes) to ``model``'s outputs, once each."""
    import onnx

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)


def run_exposing(
    model: Any,
    names: list[str],
    feeds_list: list[dict[str, np.ndarray]],
    *,
    target: Target | None = None,
    work_dir: Path | None = None,
    where: str = "model",
) -> list[dict[str, np.ndarray]]:
    """Values of intermediate tensors: run ``model`` with ``names`` added as outputs.

    ``model`` (an onnx.ModelProto) is modified: the extra outputs are appended; pass a copy
    to keep the original. Graph optimizations are disabled so tensors keep their names.
    Every sample's values are held at once: for many samples or many tensors, iterate
    :func:`iter_exposing` instead.

    Returns:
        One ``{name: value}`` dict of the requested tensors per feeds in ``feeds_list``.
    """
    return list(
        iter_exposing(model, names, feeds_list, target=target, work_dir=work_dir, where=where)
    )


def iter_exposing(
    model: Any,
    names: list[str],
    feeds_list: list[dict[str, np.ndarray]],
    *,
    target: Target | None = None,
    work_dir: Path | None = None,
    where: str = "model",
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`run_exposing` one sample at a time: only one sample's values are held."""
    import tempfile

    from onnxopt.modelio import save_model

    expose_outputs(model, names)
    wanted = set(names)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        probe = save_model(model, Path(tmp) / "probe.onnx")
        session = make_session(probe, target, level="disable")
        outs = [o.name for o in session.get_outputs()]
        for feeds in feeds_list:
            values = run_session(session, feeds, where)
            yield {n: v for n, v in zip(outs, values, strict=True) if n in wanted}


def require_feeds(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    where: str,
    hint: str = "make the inputs spec (or .npz) use the model's input names",
) -> list[str]:
    """The session's input names; an input error when ``feeds`` lacks one of them."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(
            f"{where}: inputs {missing} have no data; the input set has {sorted(feeds)}",
            hint=hint,
        )
    return names


def run_session(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], where: str = "model"
) -> list[np.ndarray]:
    """Run a session and return its outputs as numpy arrays."""
    names = require_feeds(session, feeds, where)
    try:
        outputs = session.run(None, {n: feeds[n] for n in names})
    except Exception as err:
        first = first_line(err, None)
        hint = None
        if "out of data bounds" in first or "out of bounds" in first:
            hint = (
                "generated integer inputs are drawn from [0, 8) unless the inputs spec gives a "
                "range (token ids, type ids); pass real inputs with --inputs-file or set range"
            )
        raise StepError(
            f"{where}: ONNX Runtime failed to run the model: {first[:300]}", hint=hint
        ) from None
    return [as_array(o) for o in outputs]


def as_array(value: Any) -> np.ndarray:
    """One output as an array, non-tensor outputs included, so that it can be compared.

    A sequence of equally shaped tensors is stacked (otherwise flattened and joined); a map
    becomes its values in key order; a sequence of maps (ZipMap's output) a matrix with one
    row per item and one column per key.
    """
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        return np.asarray([value[k] for k in sorted(value)], dtype=np.float64)
    if isinstance(value, list | tuple):
        if not value:
            return np.zeros((0,), np.float32)
        parts = [as_array(v) for v in value]
        if len({p.shape for p in parts}) == 1:
            return np.stack(parts)
        return np.concatenate([p.ravel() for p in parts])
    return np.asarray(value)


def import_quietly(module: str, *loggers: str) -> Any:
    """Import an onnxruntime tool module without its logging side effects.

    Some of them call ``logging.basicConfig`` on import (a root handler at INFO level, which
    would print their progress even under ``-q`` and turn on every library's INFO logs) or
    set their own loggers to DEBUG. The root logger is restored and ``loggers`` are set to
    WARNING.
    """
    import importlib
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(module)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for name in loggers:
            logging.getLogger(name).setLevel(logging.WARNING)
