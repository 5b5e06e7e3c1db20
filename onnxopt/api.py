"""One-call Python functions mirroring the step subcommands.

Each builds a one-step pipeline from keyword arguments (the same keys as in YAML), runs it
through the engine and puts the verified artifact at ``output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt.config import PipelineConfig, parse_config
from onnxopt.config.base import resolve_user_path
from onnxopt.config.data import folder_or_file_source
from onnxopt.engine import run_to_file
from onnxopt.errors import ConfigError
from onnxopt.records import BenchReport


def data_source(data: dict[str, Any] | str | Path) -> dict[str, Any]:
    """The ``data`` keyword as a data config: a mapping as it is; a path (an .npz file, a
    folder of .npz samples or of images) or ``module:function`` (a callable yielding input
    dicts) as the config that reads it."""
    if isinstance(data, dict):
        return data
    text = str(data)
    path = Path(resolve_user_path(text, Path.cwd()))
    if path.exists():
        return {"source": folder_or_file_source(path), "path": str(path.resolve())}
    target, sep, func = text.rpartition(":")
    if sep and target and func and not text.endswith(".npz"):
        return {"source": "callable", "callable": text}
    raise ConfigError(
        "--data/data expects an .npz file, a folder of .npz files or images, or "
        "module:function; "
        f"{text!r} is none of these (no such file)"
    )


def pipeline_config(
    kind: str,
    model: dict[str, Any],
    step: dict[str, Any],
    *,
    inputs: list[dict[str, Any]] | None = None,
    ranges: dict[str, list[float]] | None = None,
    dims: dict[str, int] | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    external_data: str | None = None,
    data: dict[str, Any] | str | Path | None = None,
    evaluate: dict[str, Any] | str | None = None,
    source: str | None = None,
) -> PipelineConfig:
    """The one-step pipeline of step ``kind``: the one builder behind every API step function
    and every step subcommand, so both take the same keywords and get the same errors.

    Only the keywords given (not None) reach the config: every default lives in the config
    classes. ``ranges`` (input name -> [low, high]; [v, v] for the value v) override the
    value range of those inputs: in ``inputs`` (an export's list) or the graph's.
    ``data``: see :func:`data_source`; ``evaluate``: an evaluate config, or just its
    ``callable``.
    """
    specs = [dict(s) for s in inputs] if inputs is not None else None
    for name, bounds in (ranges or {}).items():
        found = next((s for s in specs or [] if s["name"] == name), None)
        if found is not None:
            found["range"] = list(bounds)
        else:
            specs = [*(specs or []), {"name": name, "range": list(bounds)}]
    keys = {
        "inputs": specs,
        "dims": dims,
        "target": target,
        "verify": verify,
        "external_data": external_data,
        "data": None if data is None else data_source(data),
        "evaluate": {"callable": evaluate} if isinstance(evaluate, str) else evaluate,
    }
    config = {
        "name": kind,
        "model": model,
        "steps": [{"type": kind, **step}],
        **{k: v for k, v in keys.items() if v is not None},
    }
    return parse_config(config, source or f"{kind}()")


def _on_onnx(kind: str, model: str | Path, output: str | Path, **keywords: Any) -> dict[str, Any]:
    """Run one step on an ONNX file and put the verified result at ``output``."""
    source = Path(model)
    step = keywords.pop("step")
    config = pipeline_config(kind, {"path": str(source.resolve())}, step, **keywords)
    return run_to_file(config, output, source=source)


def export(
    factory: str,
    output: str | Path,
    inputs: list[dict[str, Any]],
    *,
    factory_args: dict[str, Any] | None = None,
    weights: str | None = None,
    **keywords: Any,
) -> dict[str, Any]:
    """Export a PyTorch factory to ONNX, validated against PyTorch.

    Args:
        factory: ``package.module:function`` or ``path/to/file.py:function``.
        output: the .onnx file to write.
        inputs: input specs, e.g. ``[{"name": "x", "shape": ["batch", 3, 224, 224]}]``.
        factory_args: keyword arguments for the factory.
        weights: .pt/.pth/.safetensors state dict.
        **keywords: the pipeline keywords of :func:`pipeline_config` (dims, target, verify,
            external_data, data, evaluate, ranges) and the export step's options (opset,
            exporter, output_names, tolerance).

    Returns:
        The manifest of the one-step pipeline.
    """
    model: dict[str, Any] = {"factory": factory, "factory_args": factory_args or {}}
    if weights is not None:
        model["weights"] = weights
    pipeline, step = _split(keywords)
    config = pipeline_config("export", model, step, inputs=inputs, **pipeline)
    return run_to_file(config, output)


#: the keywords of pipeline_config that every step function takes beside its step's own
PIPELINE_KEYWORDS = (
    "ranges",
    "dims",
    "target",
    "verify",
    "external_data",
    "data",
    "evaluate",
    "inputs",
)


def _split(keywords: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pipeline's keywords, the step's options)."""
    pipeline = {k: keywords.pop(k) for k in PIPELINE_KEYWORDS if k in keywords}
    return pipeline, keywords


def simplify(model: str | Path, output: str | Path, **keywords: Any) -> dict[str, Any]:
    """Simplify an ONNX model.

    ``**keywords``: the pipeline keywords of :func:`pipeline_config` (dims, target, verify,
    external_data, data, evaluate, inputs, ranges) and the simplify options (backend,
    onnxsim, ort, transformers, tolerance, guard).

    Returns:
        The manifest of the one-step pipeline.
    """
    pipeline, step = _split(keywords)
    return _on_onnx("simplify", model, output, step=step, **pipeline)


def quantize(model: str | Path, output: str | Path, mode: str, **keywords: Any) -> dict[str, Any]:
    """Quantize an ONNX model.

    ``**keywords``: the pipeline keywords of :func:`pipeline_config` (dims, target, verify,
    external_data, data, evaluate, inputs, ranges) and the quantize options (static,
    dynamic, fp16, int4, auto, op_types_to_quantize, tolerance, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    pipeline, step = _split(keywords)
    return _on_onnx("quantize", model, output, step={"mode": mode, **step}, **pipeline)


def prune(model: str | Path, output: str | Path, **keywords: Any) -> dict[str, Any]:
    """Prune an ONNX model.

    ``**keywords``: the pipeline keywords of :func:`pipeline_config` (dims, target, verify,
    external_data, data, evaluate, inputs, ranges) and the prune options (method, ratio,
    round_to, compensate, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    pipeline, step = _split(keywords)
    return _on_onnx("prune", model, output, step=step, **pipeline)


def distill(
    model: str | Path, output: str | Path, *, teacher: str | Path, **keywords: Any
) -> dict[str, Any]:
    """Distill ``teacher`` (an .onnx file) into ``model`` (the student, e.g. a pruned copy).

    ``**keywords``: the pipeline keywords of :func:`pipeline_config` (``data``: the samples
    to train on and verify with; ``evaluate``: a task metric; dims, target, ...) and the
    distill options (steps, batch_size, lr, loss, intermediates, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    pipeline, step = _split(keywords)
    step = {"teacher": str(Path(teacher).expanduser().resolve()), **step}
    return _on_onnx("distill", model, output, step=step, **pipeline)


def search_folder(output: str | Path) -> Path:
    """Where ``onnxopt optimize -o OUT.onnx`` keeps its candidates: ``OUT.search`` beside it
    (the run folder: a re-run resumes there)."""
    out = Path(output).expanduser().resolve()
    return out.with_name(out.name.removesuffix(".onnx") + ".search")


def optimize(model: str | Path, output: str | Path, **keywords: Any) -> dict[str, Any]:
    """Search chains of prune, distill, simplify and quantize for the fastest model that
    stays within the budget, and put it at ``output`` (an unchanged copy of ``model`` when
    nothing beats it), with its report, Pareto figure and pipeline file beside it.

    ``**keywords``: the pipeline keywords of :func:`pipeline_config` (``data``: samples of
    the inputs, split into a calibration/training part and a held-out part every candidate
    is judged and timed on; ``evaluate``: the task metric; dims, target, ...) and the
    optimize options (stages, prune_ratios, time_budget, latency_budget, beam, work_dir
    (default: :func:`search_folder`), ...).

    Returns:
        The manifest of the one-step pipeline; its step's ``report`` holds every candidate.
    """
    pipeline, step = _split(keywords)
    step.setdefault("work_dir", str(search_folder(output)))
    return _on_onnx("optimize", model, output, step=step, **pipeline)


def bench(
    models: list[str | Path] | list[Path],
    *,
    labels: list[str] | None = None,
    inputs_file: str | Path | None = None,
    shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
    ranges: dict[str, list[float]] | None = None,
    seed: int = 0,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    **settings: Any,
) -> BenchReport:
    """Benchmark ONNX files (the first is the baseline); ``**settings`` takes the bench keys
    (providers, runs, trials, threads (a sweep), baseline, max_regression, ...).
    ``ranges``: input name -> [low, high] of its generated values ([v, v]: the value v).

    Returns:
        The bench report (schema ``onnxopt.bench/1``); failed gates are in ``report["gates"]``
        (``onnxopt.bench.runner.raise_for_gates`` raises them).
    """
    from pydantic import ValidationError

    from onnxopt.bench.runner import bench_files
    from onnxopt.config import BenchStep, format_validation_error

    try:
        cfg = BenchStep.model_validate({"type": "bench", **settings})
    except ValidationError as err:
        raise format_validation_error(err, "bench", BenchStep) from None
    return bench_files(
        [Path(m) for m in models],
        cfg,
        labels=labels,
        inputs_file=Path(inputs_file) if inputs_file is not None else None,
        shapes=shapes,
        dims=dims,
        ranges=ranges,
        seed=seed,
        threads=intra_op_threads,
        inter_threads=inter_op_threads,
    )
