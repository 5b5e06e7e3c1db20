"""One-call Python functions mirroring the step subcommands.

Each builds a one-step pipeline from keyword arguments (the same keys as in YAML), runs it
through the engine and puts the verified artifact at ``output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt.config import parse_config
from onnxopt.engine import run_to_file


def export(
    factory: str,
    output: str | Path,
    inputs: list[dict[str, Any]],
    *,
    dims: dict[str, int] | None = None,
    factory_args: dict[str, Any] | None = None,
    weights: str | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    external_data: str = "auto",
    **step: Any,
) -> dict[str, Any]:
    """Export a PyTorch factory to ONNX, validated against PyTorch.

    Args:
        factory: ``package.module:function`` or ``path/to/file.py:function``.
        output: the .onnx file to write.
        inputs: input specs, e.g. ``[{"name": "x", "shape": ["batch", 3, 224, 224]}]``.
        dims: values of symbolic dims for the verification inputs.
        factory_args: keyword arguments for the factory.
        weights: .pt/.pth/.safetensors state dict.
        target: execution target (provider, threads) for verification.
        verify: verification settings (seed, inputs_file, second_shape, second_dims).
        external_data: ``auto``, ``always`` or ``never``.
        **step: export step options: opset, exporter, output_names, tolerance.

    Returns:
        The manifest of the one-step pipeline.
    """
    model: dict[str, Any] = {"factory": factory, "factory_args": factory_args or {}}
    if weights is not None:
        model["weights"] = weights
    data = {
        "name": "export",
        "model": model,
        "inputs": inputs,
        "dims": dims or {},
        "target": target or {},
        "verify": verify or {},
        "external_data": external_data,
        "steps": [{"type": "export", **step}],
    }
    return run_to_file(parse_config(data, "export()"), output)


def _on_onnx(
    kind: str,
    model: str | Path,
    output: str | Path,
    step: dict[str, Any],
    dims: dict[str, int] | None,
    target: dict[str, Any] | None,
    verify: dict[str, Any] | None,
    external_data: str,
    **pipeline: Any,
) -> dict[str, Any]:
    """Run one step on an ONNX file and put the verified result at ``output``;
    ``pipeline``: more top-level keys (data, evaluate), those given."""
    source = Path(model)
    data = {
        "name": kind,
        "model": {"path": str(source.resolve())},
        "dims": dims or {},
        "target": target or {},
        "verify": verify or {},
        "external_data": external_data,
        "steps": [{"type": kind, **step}],
        **{k: v for k, v in pipeline.items() if v is not None},
    }
    return run_to_file(parse_config(data, f"{kind}()"), output, source=source)


def simplify(
    model: str | Path,
    output: str | Path,
    *,
    dims: dict[str, int] | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    external_data: str = "auto",
    **step: Any,
) -> dict[str, Any]:
    """Simplify an ONNX model; ``**step`` takes the simplify keys (backend, onnxsim, ort, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    return _on_onnx("simplify", model, output, step, dims, target, verify, external_data)


def quantize(
    model: str | Path,
    output: str | Path,
    mode: str,
    *,
    dims: dict[str, int] | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    external_data: str = "auto",
    **step: Any,
) -> dict[str, Any]:
    """Quantize an ONNX model; ``**step`` takes the quantize keys (static, dynamic, fp16, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    return _on_onnx(
        "quantize", model, output, {"mode": mode, **step}, dims, target, verify, external_data
    )


def prune(
    model: str | Path,
    output: str | Path,
    *,
    dims: dict[str, int] | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    external_data: str = "auto",
    **step: Any,
) -> dict[str, Any]:
    """Prune an ONNX model; ``**step`` takes the prune keys (method, ratio, round_to, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    return _on_onnx("prune", model, output, step, dims, target, verify, external_data)


def distill(
    model: str | Path,
    output: str | Path,
    *,
    teacher: str | Path,
    data: dict[str, Any] | str | Path | None = None,
    dims: dict[str, int] | None = None,
    target: dict[str, Any] | None = None,
    verify: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    external_data: str = "auto",
    **step: Any,
) -> dict[str, Any]:
    """Distill ``teacher`` (an .onnx file) into ``model`` (the student, e.g. a pruned copy).

    Args:
        data: the samples to train on and verify with: a data config (``{"source": "npz",
            "path": ...}``), or a path to an .npz file or folder.
        evaluate: a task metric (``{"callable": ..., "budget": {"max_drop": 0.01}}``).
        **step: the distill keys (steps, batch_size, lr, loss, intermediates, ...).

    Returns:
        The manifest of the one-step pipeline.
    """
    if isinstance(data, str | Path):
        data = {"source": "npz", "path": str(Path(data).resolve())}
    step = {"teacher": str(Path(teacher).resolve()), **step}
    return _on_onnx(
        "distill", model, output, step, dims, target, verify, external_data,
        data=data, evaluate=evaluate,
    )  # fmt: skip


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
) -> dict[str, Any]:
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
