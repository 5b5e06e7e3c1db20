"""What a run sets up before its first step: the source model, the input set, the context
every step receives, and the check that it overwrites none of the user's files."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from onnxopt import _fs, modelio
from onnxopt.config import InputSpec, PipelineConfig
from onnxopt.data import load_samples, split
from onnxopt.engine.cache import resolve
from onnxopt.engine.lock import LOCK_NAME
from onnxopt.engine.manifest import INPUTS_NAME, MANIFEST_NAME, written_by_onnxopt
from onnxopt.errors import InputError, OnnxoptError
from onnxopt.steps.base import StepContext
from onnxopt.verify import (
    Inputs,
    InputSet,
    check_inputs_fit,
    fit_inputs,
    fit_ranges,
    fit_second_dims,
    inputs_digest,
    load_inputs,
    make_inputs,
    resolve_dims,
    save_inputs,
    specs_from_model,
    symbolic_dims,
    trials,
)

log = logging.getLogger("onnxopt")


def source_model(config: PipelineConfig, base_dir: Path) -> Path | None:
    """The pipeline's ONNX source, checked (None for a PyTorch source)."""
    if config.model.path is None:
        return None
    path = resolve(base_dir, config.model.path)
    modelio.load_model(path, load_weights=False)  # also runs onnx.checker on the file
    return path.resolve()


def input_specs(config: PipelineConfig, base_dir: Path, source: Path | None) -> list[InputSpec]:
    """The inputs' specs: from the config, a Hugging Face folder's processor, or the graph
    (with the config's entries overriding it by name)."""
    if config.inputs is not None and source is None:
        return list(config.inputs)
    if config.model.huggingface:
        from onnxopt.hf import input_specs as hf_specs

        folder = resolve(base_dir, config.model.huggingface)
        return [InputSpec(**s) for s in hf_specs(folder, config.model.task)]
    assert source is not None
    specs = specs_from_model(modelio.load_model(source, load_weights=False))
    return override_specs(specs, config.inputs or [], source.name)


def override_specs(
    specs: list[InputSpec], overrides: list[InputSpec], where: str
) -> list[InputSpec]:
    """The graph's input specs with the given fields of ``overrides`` (by name) applied."""
    names = [s.name for s in specs]
    unknown = [o.name for o in overrides if o.name not in names]
    if unknown:
        raise InputError(
            f"inputs {unknown} are not inputs of {where}; its inputs are {names}",
            hint="name the graph's inputs in 'inputs' (or --value/--range)",
        )
    by_name = {o.name: o for o in overrides}
    out = []
    for spec in specs:
        given = by_name.get(spec.name)
        if given is None:
            out.append(spec)
            continue
        fields = {k: getattr(given, k) for k in given.model_fields_set if k != "name"}
        out.append(spec.model_copy(update=fields))
    return out


@trials()
def build_context(
    config: PipelineConfig,
    base_dir: Path,
    invocation_dir: Path,
    source: Path | None,
    out_dir: Path,
) -> tuple[StepContext, dict[str, Any]]:
    """The input set (saved as ``inputs.npz``) and the context every step gets.

    Returns the context and the manifest's record of the input set. Fitting the dims and
    the second-shape dims shares one trial session (``trials``).
    """
    specs = input_specs(config, base_dir, source)
    data = data_source(config)
    samples: list[Inputs] = []
    if data is not None:
        given, _ = resolve_dims(specs, config.dims)
        samples = load_samples(data, specs, given, base_dir, invocation_dir)
    calibration = held = None
    pairs: dict[str, str] = {}
    fitted: dict[str, Any] = {}
    if config.verify.inputs_file:
        inputs = load_inputs(resolve(base_dir, config.verify.inputs_file))
        dims = _dims_from_arrays(specs, inputs)
        defaulted: list[str] = []
        specs, _ = fit_ranges(source, specs)  # for the second-shape inputs
        calibration = samples or None  # verification is on exactly the inputs file
    elif samples:
        pairs = _state_pairs(source)
        calibration, held, held_index = split(
            samples, getattr(data, "holdout", 0.25), getattr(data, "seed", 0), bool(pairs)
        )
        inputs = held[0]
        dims = _dims_from_arrays(specs, inputs)
        defaulted = []
    else:
        fit = fit_inputs(source, specs, config.dims, config.verify.seed, config.target)
        specs, dims, defaulted = fit.specs, fit.dims, list(fit.defaulted)
        fitted = {"defaulted_dims_why": fit.defaulted, "ranges_why": fit.ranges}
        inputs = make_inputs(specs, dims, config.verify.seed)
    unknown = sorted(set(config.dims) - set(symbolic_dims(specs)))
    if unknown:
        raise InputError(
            f"dims {unknown} are not symbolic dims of the inputs; "
            f"the inputs have {symbolic_dims(specs) or 'no symbolic dims'}"
        )
    if source is not None:
        model = modelio.load_model(source, load_weights=False)
        for i, feeds in enumerate(held or [inputs]):
            where = source.name if held is None else f"{source.name}, held-out sample {i}"
            check_inputs_fit(model, feeds, where)
    for name in defaulted:
        log.info("dim %r has no value in 'dims': %s", name, fitted["defaulted_dims_why"][name])
    alt_dims = alt_inputs = None
    if config.verify.second_shape and dims and held is None:
        alt_dims, why = fit_second_dims(
            source, specs, dims, config.verify.second_dims, config.verify.seed, config.target
        )
        if alt_dims is None:
            log.warning("the second-shape check is skipped: %s", why)
            fitted["second_dims_why"] = why
        else:
            alt_inputs = make_inputs(specs, alt_dims, config.verify.seed + 1)
    save_inputs(out_dir / INPUTS_NAME, inputs)
    record: dict[str, Any] = {
        "path": INPUTS_NAME,
        "digest": inputs_digest(inputs),
        "source": config.verify.inputs_file or f"generated (seed {config.verify.seed})",
        "synthetic": not config.verify.inputs_file and not held,
        "specs": [s.model_dump() for s in specs],
        "dims": dims,
        "defaulted_dims": defaulted,
        **fitted,
        "second_dims": alt_dims,
    }
    if data is not None:
        record["digest"] = _fs.digest_of(
            [inputs_digest(s) for s in held or [inputs]], [inputs_digest(s) for s in samples]
        )
        record["data"] = {
            "from": data.callable if data.source == "callable" else data.path,
            "samples": len(samples),
            "calibration": len(calibration or []),
            "held_out": len(held or []),
            "held_out_samples": held_index if held else [],
            "split_seed": getattr(data, "seed", 0),
        }
        if held and pairs:
            record["closed_loop"] = pairs
            log.info(
                "recurrent states %s: the held-out samples are verified in closed loop, in "
                "order, each model carrying its own state",
                ", ".join(f"{i} <- {o}" for i, o in pairs.items()),
            )
        if held:
            record["source"] = f"{len(held)} held-out samples of the data"
            record["shapes"] = sorted({_shapes(s) for s in held})
    input_set = InputSet(
        main=inputs,
        dims=dims,
        second=alt_inputs,
        second_dims=alt_dims,
        samples=held,
        synthetic=bool(record["synthetic"]),
        state_pairs=pairs if held else None,
    )
    evaluator = None
    if config.evaluate is not None:
        from onnxopt.verify.task import Evaluator

        evaluator = Evaluator(config.evaluate, base_dir, invocation_dir, config.target)
        record["evaluate"] = _evaluate_record(config, base_dir)
    ctx = StepContext(
        config=config,
        base_dir=base_dir,
        specs=specs,
        input_set=input_set,
        invocation_dir=invocation_dir,
        calibration=calibration,
        data_source=data,
        evaluator=evaluator,
    )
    return ctx, record


def _state_pairs(source: Path | None) -> dict[str, str]:
    """The recurrent states of an ONNX source (none for a PyTorch one)."""
    if source is None:
        return {}
    from onnxopt.verify.stream import state_pairs

    return state_pairs(modelio.load_model(source, load_weights=False))


def _evaluate_record(config: PipelineConfig, base_dir: Path) -> dict[str, Any]:
    """The task metric as the manifest (and the cache key) see it: its settings and the
    digests of its code and data files, so that editing either re-runs the steps."""
    from onnxopt.factory import factory_source_file

    assert config.evaluate is not None
    record: dict[str, Any] = config.evaluate.model_dump(mode="json")
    code = factory_source_file(config.evaluate.callable, base_dir)
    record["callable_sha256"] = _fs.sha256_file(code) if code and code.is_file() else None
    if config.evaluate.data is not None:
        data = resolve(base_dir, config.evaluate.data)
        record["data_sha256"] = _fs.sha256_file(data) if data.is_file() else None
    return record


def data_source(config: PipelineConfig) -> Any:
    """The run's data: its ``data``, or else the first quantize step's own calibration data
    (the data that calibrates also verifies, held out)."""
    if config.data is not None:
        return config.data
    for step in config.steps:
        static = getattr(step, "static", None)
        if static is not None and static.calibration.source != "synthetic":
            return static.calibration
    return None


def _shapes(sample: Inputs) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in sorted(sample.items()))


def _dims_from_arrays(specs: list[InputSpec], arrays: dict[str, Any]) -> dict[str, int]:
    dims: dict[str, int] = {}
    for spec in specs:
        if spec.name not in arrays:
            raise InputError(
                f"the inputs file has no array {spec.name!r}; it has {sorted(arrays)}",
                hint="name the arrays after the model inputs",
            )
        arr = arrays[spec.name]
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"inputs file: {spec.name!r} has shape {list(arr.shape)}, "
                f"expected rank {len(spec.shape)} {spec.shape}"
            )
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                dims.setdefault(dim, int(arr.shape[axis]))
    return dims


def input_files(config: PipelineConfig, base_dir: Path) -> list[Path]:
    """The user's files a run reads: model, weights, inputs, calibration data, baselines."""
    named = [config.model.path, config.model.weights, config.verify.inputs_file]
    named.append(config.data.path if config.data is not None else None)
    for step in config.steps:
        static = getattr(step, "static", None)
        named.append(static.calibration.path if static is not None else None)
        named.append(getattr(step, "baseline", None))
        teacher = getattr(step, "teacher", None)
        named.append(teacher if teacher and teacher.endswith(".onnx") else None)
        student = getattr(step, "student", None)
        named.append(student.weights if student is not None else None)
    files = [resolve(base_dir, n).resolve() for n in named if n]
    if config.model.path and files and files[0].is_file():
        with contextlib.suppress(OnnxoptError, OSError):
            files += [p.resolve() for p in modelio.external_data_files(files[0])]
    return files


def refuse_clobbering(
    config: PipelineConfig, base_dir: Path, out_dir: Path, previous: Any, owned: set[str]
) -> None:
    """Fail before any work if a run would overwrite or delete a file it did not write.

    The run writes inputs.npz and manifest.json into its folder and may delete artifacts
    that an earlier run's manifest records; none of them may be one of the user's files.
    """
    ours = {INPUTS_NAME, MANIFEST_NAME, LOCK_NAME} | owned
    for path in input_files(config, base_dir):
        if path.parent == out_dir and path.name in ours:
            raise InputError(
                f"{path} is an input of this run, and the run writes or removes "
                f"{path.name} in its output folder {out_dir}",
                hint="choose another output_dir (or rename the file)",
            )
    manifest = out_dir / MANIFEST_NAME
    if previous is None and (manifest.exists() or (out_dir / INPUTS_NAME).exists()):
        found = manifest if manifest.exists() else out_dir / INPUTS_NAME
        if not written_by_onnxopt(manifest):
            raise InputError(
                f"output folder {out_dir} holds {found.name}, which onnxopt did not write; "
                "a run would overwrite it",
                hint="choose another output_dir, or move that file away",
            )
