"""PyTorch -> ONNX export, validated against PyTorch on the shared inputs."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt._fs import user_cwd
from onnxopt.config import ExportStep, ModelSource
from onnxopt.errors import (
    InputError,
    StepError,
    VerificationError,
    described,
    first_line,
    require,
)
from onnxopt.factory import load_factory
from onnxopt.modelio import TWO_GB, check_model, load_model, remove_model, save_model
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.verify import (
    Inputs,
    Reference,
    Tol,
    Verification,
    make_inputs,
    pinned_dims,
    resolve_tolerance,
    symbolic_axes,
)

log = logging.getLogger("onnxopt")


def build_module(source: ModelSource, base_dir: Path, input_names: list[str] | None = None) -> Any:
    """Call the factory, load weights, and return the module in eval mode.

    ``input_names``: the model's input names when already known (a Hugging Face folder's
    come from its tokenizer, which then need not be loaded again).
    """
    require("torch")
    import torch

    if source.huggingface:
        from onnxopt.hf import build

        return build(
            Path(source.huggingface),
            source.task,
            source.pooling,
            input_names=input_names,
        )
    assert source.factory is not None
    fn = load_factory(source.factory, base_dir)
    try:
        module = fn(**source.factory_args)
    except Exception as err:
        raise InputError(
            f"factory {source.factory!r} raised {type(err).__name__}: {err}",
            hint="fix the factory or its factory_args",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"factory {source.factory!r} returned {type(module).__name__}, expected torch.nn.Module"
        )
    if source.weights:
        _load_weights(module, Path(source.weights))
    return module.eval()


def _load_weights(module: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise InputError(f"weights file not found: {path}", hint="check model.weights")
    try:
        if path.suffix == ".safetensors":
            require("safetensors")
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise InputError(
                f"weights file {path.name}: expected .pt, .pth or .safetensors, "
                f"found {path.suffix or 'no extension'}"
            )
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"cannot read weights {path.name}: {first_line(err, 200)}",
            hint="weights must be a state_dict saved with torch.save or safetensors",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # type: ignore[assignment]
    if not isinstance(state, dict):
        raise InputError(
            f"weights {path.name}: expected a state_dict, found {type(state).__name__}"
        )
    result = None
    try:
        result = module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        detail = "; ".join(lines)[:300] or str(err)[:300]
        raise InputError(
            f"weights {path.name} do not fit the module: {detail}",
            hint="check that the weights belong to this architecture and factory_args",
        ) from None
    del result


# ---------------------------------------------------------------- running torch


def _to_torch(arrays: dict[str, np.ndarray], names: list[str]) -> tuple[Any, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names)


def flatten_tensors(value: Any) -> list[Any]:
    """A module's outputs (tensors, nested in tuples, lists and dicts) as one flat list, in
    the order the exporters give them."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in flatten_tensors(v)]
    raise StepError(f"the module returned {type(value).__name__}; expected tensors")


def torch_outputs(module: Any, arrays: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Run the module on the arrays (in input order) and flatten its outputs to numpy."""
    import torch

    try:
        with torch.no_grad():
            out = module(*_to_torch(arrays, names))
    except Exception as err:
        raise InputError(
            f"the PyTorch module failed on the inputs spec: {type(err).__name__}: "
            f"{first_line(err, 200)}",
            hint="check the input names, order, shapes and dtypes",
        ) from None
    return [t.detach().cpu().numpy() for t in flatten_tensors(out)]


@contextlib.contextmanager
def _quiet_torch() -> Iterator[io.StringIO]:
    """Keep the exporters' prints, warnings and log lines off the user's terminal."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(buf),
            contextlib.redirect_stderr(buf),
        ):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(
    exporter: str,
    module: Any,
    args: tuple[Any, ...],
    cfg: ExportStep,
    ctx: StepContext,
    output_names: list[str],
    tmp: Path,
) -> Any:
    """Export with one exporter; return the ONNX ModelProto."""
    import torch

    input_names = [s.name for s in ctx.specs]
    big = sum(p.numel() * p.element_size() for p in module.parameters()) >= TWO_GB - 2**26
    with _quiet_torch():
        if exporter == "dynamo":
            dims: dict[str, Any] = {}
            dynamic_shapes = []
            for spec in ctx.specs:
                axes = {}
                for axis, dim in enumerate(spec.shape):
                    if isinstance(dim, str):
                        dims.setdefault(dim, torch.export.Dim(dim))
                        axes[axis] = dims[dim]
                dynamic_shapes.append(axes)
            program = torch.onnx.export(
                module,
                args,
                input_names=input_names,
                output_names=output_names,
                opset_version=cfg.opset,
                dynamo=True,
                dynamic_shapes=tuple(dynamic_shapes) if dims else None,
                external_data=big,
                optimize=True,
                verify=False,
            )
            if program is None:
                raise StepError("the dynamo exporter returned no program")
            return program.model_proto
        dynamic_axes = {
            spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            for spec in ctx.specs
        }
        dynamic_axes = {k: v for k, v in dynamic_axes.items() if v}
        path = tmp.with_name(tmp.stem + ".torchscript.onnx")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            opset_version=cfg.opset,
            dynamo=False,
            dynamic_axes=dynamic_axes or None,
        )
        return load_model(path)


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(model: Any) -> int:
    """Remove the exporter's per-node stack traces (absolute paths); return how many."""
    from onnxopt.graph import iter_graphs

    removed = 0
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            keep = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            if len(keep) != len(node.metadata_props):
                removed += len(node.metadata_props) - len(keep)
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
    return removed


def run(src: Path | None, dst: Path, cfg: ExportStep, ctx: StepContext) -> StepResult:
    """Export the pipeline's PyTorch factory to ``dst``; try exporters per ``cfg.exporter``."""
    require("torch")
    with user_cwd(ctx.invocation_dir):  # the factory is the user's code
        module = build_module(ctx.config.model, ctx.base_dir, [s.name for s in ctx.specs])
    reference = _torch_reference(module, ctx)
    output_names = _output_names(cfg, module, reference)
    args = _to_torch(_trace_example(ctx), [s.name for s in ctx.specs])
    tol = resolve_tolerance(cfg)
    order = ["dynamo", "torchscript"] if cfg.exporter == "auto" else [cfg.exporter]
    attempts: list[dict[str, Any]] = []
    failed_verification: Verification | None = None
    for exporter in order:
        attempt: dict[str, Any] = {"exporter": exporter}
        attempts.append(attempt)
        stripped, verification = _attempt(
            exporter, module, args, cfg, ctx, output_names, dst, reference, tol, attempt
        )
        if verification is None or not verification.passed:
            failed_verification = verification or failed_verification
            continue
        warnings_ = [
            f"exporter {a['exporter']} was not used: {a['reason']}" for a in attempts if not a["ok"]
        ]
        return StepResult(
            report={
                "exporter": exporter,
                "attempts": attempts,
                "opset": cfg.opset,
                "output_names": output_names,
                "stack_traces_removed": stripped,
                "torch_outputs": [list(o.shape) for o in reference.main],
            },
            verification=verification,
            warnings=warnings_,
        )
    summary = "; ".join(f"{a['exporter']}: {a['reason']}" for a in attempts)
    if failed_verification is not None or any("fixed" in a["reason"] for a in attempts):
        raise VerificationError(
            f"export produced no model that matches PyTorch ({summary})",
            hint="try another exporter or opset, or check the inputs spec",
        )
    raise StepError(f"export failed with every exporter ({summary})")


def _torch_reference(module: Any, ctx: StepContext) -> Reference:
    """PyTorch's outputs on the input set: the held-out samples, or the main and
    second-shape inputs."""
    names = [s.name for s in ctx.specs]
    if ctx.input_set.samples:  # the user's held-out samples
        per_sample = [torch_outputs(module, s, names) for s in ctx.input_set.samples]
        return Reference(main=per_sample[0], samples=per_sample)
    second = ctx.second_inputs
    return Reference(
        main=torch_outputs(module, ctx.inputs, names),
        second=torch_outputs(module, second, names) if second is not None else None,
    )


def _output_names(cfg: ExportStep, module: Any, reference: Reference) -> list[str]:
    """The configured output names, the module's own, or output_0, output_1, ..."""
    names: list[str] = (
        cfg.output_names
        or getattr(module, "onnxopt_output_names", None)
        or [f"output_{i}" for i in range(len(reference.main))]
    )
    if len(names) != len(reference.main):
        raise InputError(
            f"output_names has {len(names)} names but the module returns "
            f"{len(reference.main)} tensors"
        )
    return names


def _trace_example(ctx: StepContext) -> Inputs:
    """The example to trace with: the larger one, since exporters may specialise a dim whose
    example value is 1."""
    if ctx.second_inputs is not None:
        return ctx.second_inputs
    bigger = {name: value + 1 for name, value in ctx.dims.items()}
    return make_inputs(ctx.specs, bigger, ctx.config.verify.seed + 1) if bigger else ctx.inputs


def _attempt(
    exporter: str,
    module: Any,
    args: Any,
    cfg: ExportStep,
    ctx: StepContext,
    output_names: list[str],
    dst: Path,
    reference: Reference,
    tol: Tol,
    attempt: dict[str, Any],
) -> tuple[int, Verification | None]:
    """Export with one exporter into ``dst``, check and verify it; (stack traces removed,
    the verification: None when it failed before verifying). A failed attempt leaves no
    ``dst`` and says why in ``attempt``."""
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as scratch:
        try:
            model = _export(exporter, module, args, cfg, ctx, output_names, Path(scratch) / "m")
        except Exception as err:
            attempt.update(ok=False, reason=f"export failed: {described(err, 200)}")
            log.info("exporter %s failed: %s", exporter, attempt["reason"])
            return 0, None
    stripped = 0 if cfg.keep_stack_traces else strip_stack_traces(model)
    save_model(model, dst, external_data=ctx.config.external_data)
    del model
    try:
        check_model(dst, produced_by=f"the {exporter} exporter")
    except StepError as err:
        attempt.update(ok=False, reason=err.message)
        remove_model(dst)
        return stripped, None
    pinned = pinned_dims(dst, symbolic_axes(ctx.specs))
    if pinned:
        attempt.update(ok=False, reason=f"dynamic dims became fixed: {', '.join(pinned)}")
        remove_model(dst)
        return stripped, None
    verification = ctx.verify(dst, reference, tol, output_names)
    if not verification.passed:
        attempt.update(ok=False, reason=f"differs from PyTorch: {verification.first_failure()}")
        remove_model(dst)
        return stripped, verification
    attempt["ok"] = True
    return stripped, verification
