"""What a run sets up before its first step: the source model, the input set, the context
every step receives, and the check that it overwrites none of the user's files."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt import _fs, modelio
from onnxopt.config import InputSpec, PipelineConfig
from onnxopt.data import load_samples, split
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


def source_model(config: PipelineConfig) -> Path | None:
    """The pipeline's ONNX source, checked (None for a PyTorch source)."""
    if config.model.path is None:
        return None
    path = Path(config.model.path)
    modelio.load_model(path, load_weights=False)  # also runs onnx.checker on the file
    return path.resolve()


def input_specs(config: PipelineConfig, source: Path | None) -> list[InputSpec]:
    """The inputs' specs: from the config, a Hugging Face folder's processor, or the graph
    (with the config's entries overriding it by name)."""
    if config.inputs is not None and source is None:
        return list(config.inputs)
    if config.model.huggingface:
        from onnxopt.hf import input_specs as hf_specs

        folder = Path(config.model.huggingface)
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


@dataclass
class _Chosen:
    """The verification inputs one source gave, and what goes with them."""

    specs: list[InputSpec]
    inputs: Inputs
    dims: dict[str, int]
    defaulted: list[str] = field(default_factory=list)
    #: why dims were defaulted and ranges inferred (generated inputs)
    fitted: dict[str, Any] = field(default_factory=dict)
    calibration: list[Inputs] | None = None
    held: list[Inputs] | None = None
    held_index: list[int] = field(default_factory=list)
    pairs: dict[str, str] = field(default_factory=dict)


def _from_inputs_file(
    config: PipelineConfig, specs: list[InputSpec], source: Path | None, samples: list[Inputs]
) -> _Chosen:
    """Verification on exactly the inputs file; the data (if any) only calibrates."""
    assert config.verify.inputs_file is not None
    inputs = load_inputs(Path(config.verify.inputs_file))
    dims = _dims_from_arrays(specs, inputs)
    specs, _ = fit_ranges(source, specs)  # for the second-shape inputs
    return _Chosen(specs, inputs, dims, calibration=samples or None)


def _from_samples(
    data: Any, specs: list[InputSpec], source: Path | None, samples: list[Inputs]
) -> _Chosen:
    """The user's samples split: calibration part, held-out part (in order, for recurrent
    models verified in closed loop)."""
    pairs = _state_pairs(source)
    calibration, held, held_index = split(
        samples, getattr(data, "holdout", 0.25), getattr(data, "seed", 0), bool(pairs)
    )
    inputs = held[0]
    return _Chosen(
        specs,
        inputs,
        _dims_from_arrays(specs, inputs),
        calibration=calibration,
        held=held,
        held_index=held_index,
        pairs=pairs,
    )


def _generated(config: PipelineConfig, specs: list[InputSpec], source: Path | None) -> _Chosen:
    """Inputs generated to fit the model (dims and value ranges it can take)."""
    fit = fit_inputs(source, specs, config.dims, config.verify.seed, config.target)
    fitted = {"defaulted_dims_why": fit.defaulted, "ranges_why": fit.ranges}
    inputs = make_inputs(fit.specs, fit.dims, config.verify.seed)
    return _Chosen(fit.specs, inputs, fit.dims, list(fit.defaulted), fitted)


def _check_chosen(config: PipelineConfig, chosen: _Chosen, source: Path | None) -> None:
    """Refuse dims the inputs do not have and inputs the source cannot take."""
    unknown = sorted(set(config.dims) - set(symbolic_dims(chosen.specs)))
    if unknown:
        raise InputError(
            f"dims {unknown} are not symbolic dims of the inputs; "
            f"the inputs have {symbolic_dims(chosen.specs) or 'no symbolic dims'}"
        )
    if source is not None:
        model = modelio.load_model(source, load_weights=False)
        for i, feeds in enumerate(chosen.held or [chosen.inputs]):
            where = source.name if chosen.held is None else f"{source.name}, held-out sample {i}"
            check_inputs_fit(model, feeds, where)
    for name in chosen.defaulted:
        why = chosen.fitted["defaulted_dims_why"][name]
        log.info("dim %r has no value in 'dims': %s", name, why)


def _second_shape(
    config: PipelineConfig, chosen: _Chosen, source: Path | None
) -> tuple[dict[str, int] | None, Inputs | None]:
    """The second-shape dims and inputs (every symbolic dim changed), when they apply."""
    if not (config.verify.second_shape and chosen.dims and chosen.held is None):
        return None, None
    alt_dims, why = fit_second_dims(
        source,
        chosen.specs,
        chosen.dims,
        config.verify.second_dims,
        config.verify.seed,
        config.target,
    )
    if alt_dims is None:
        log.warning("the second-shape check is skipped: %s", why)
        chosen.fitted["second_dims_why"] = why
        return None, None
    return alt_dims, make_inputs(chosen.specs, alt_dims, config.verify.seed + 1)


def _data_record(data: Any, chosen: _Chosen, samples: list[Inputs]) -> dict[str, Any]:
    """What the manifest records of the user's data (its digest covers every sample)."""
    held = chosen.held
    record: dict[str, Any] = {
        "digest": _fs.digest_of(
            [inputs_digest(s) for s in held or [chosen.inputs]],
            [inputs_digest(s) for s in samples],
        ),
        "data": {
            "from": data.callable if data.source == "callable" else data.path,
            "samples": len(samples),
            "calibration": len(chosen.calibration or []),
            "held_out": len(held or []),
            "held_out_samples": chosen.held_index if held else [],
            "split_seed": getattr(data, "seed", 0),
        },
    }
    if held and chosen.pairs:
        record["closed_loop"] = chosen.pairs
        log.info(
            "recurrent states %s: the held-out samples are verified in closed loop, in "
            "order, each model carrying its own state",
            ", ".join(f"{i} <- {o}" for i, o in chosen.pairs.items()),
        )
    if held:
        record["source"] = f"{len(held)} held-out samples of the data"
        record["shapes"] = sorted({_shapes(s) for s in held})
    return record


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
    specs = input_specs(config, source)
    data = data_source(config)
    samples: list[Inputs] = []
    if data is not None:
        given, _ = resolve_dims(specs, config.dims)
        samples = load_samples(data, specs, given, base_dir, invocation_dir)
    if config.verify.inputs_file:
        chosen = _from_inputs_file(config, specs, source, samples)
    elif samples:
        chosen = _from_samples(data, specs, source, samples)
    else:
        chosen = _generated(config, specs, source)
    _check_chosen(config, chosen, source)
    alt_dims, alt_inputs = _second_shape(config, chosen, source)
    save_inputs(out_dir / INPUTS_NAME, chosen.inputs)
    record: dict[str, Any] = {
        "path": INPUTS_NAME,
        "digest": inputs_digest(chosen.inputs),
        "source": config.verify.inputs_file or f"generated (seed {config.verify.seed})",
        "synthetic": not config.verify.inputs_file and not chosen.held,
        "specs": [s.model_dump() for s in chosen.specs],
        "dims": chosen.dims,
        "defaulted_dims": chosen.defaulted,
        **chosen.fitted,
        "second_dims": alt_dims,
    }
    if data is not None:
        record.update(_data_record(data, chosen, samples))
    input_set = InputSet(
        main=chosen.inputs,
        dims=chosen.dims,
        second=alt_inputs,
        second_dims=alt_dims,
        samples=chosen.held,
        synthetic=bool(record["synthetic"]),
        state_pairs=chosen.pairs if chosen.held else None,
    )
    evaluator = None
    if config.evaluate is not None:
        from onnxopt.verify.task import Evaluator

        evaluator = Evaluator(config.evaluate, base_dir, invocation_dir, config.target)
        record["evaluate"] = _evaluate_record(config, base_dir)
    ctx = StepContext(
        config=config,
        base_dir=base_dir,
        specs=chosen.specs,
        input_set=input_set,
        invocation_dir=invocation_dir,
        calibration=chosen.calibration,
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
    # paths below the pipeline's folder relative: the files count by their digests below
    record: dict[str, Any] = config.evaluate.model_dump(
        mode="json", context={"relative_to": base_dir}
    )
    code = factory_source_file(config.evaluate.callable, base_dir)
    record["callable_sha256"] = _fs.sha256_file(code) if code and code.is_file() else None
    if config.evaluate.data is not None:
        data = Path(config.evaluate.data)
        record["data_sha256"] = _fs.sha256_file(data) if data.is_file() else None
    return record


def data_source(config: PipelineConfig) -> Any:
    """The run's data: its ``data``, or else the first quantize step's own calibration data
    (the data that calibrates also verifies, held out)."""
    if config.data is not None:
        return config.data
    return next((s.data_source() for s in config.steps if s.data_source() is not None), None)


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


def input_files(config: PipelineConfig) -> list[Path]:
    """The user's files a run reads (what the config names, see
    :meth:`PipelineConfig.input_files`), with the source model's external data files."""
    files = [Path(n).resolve() for n in config.input_files()]
    if config.model.path and files and files[0].is_file():
        with contextlib.suppress(OnnxoptError, OSError):
            files += [p.resolve() for p in modelio.external_data_files(files[0])]
    return files


def refuse_clobbering(
    config: PipelineConfig, out_dir: Path, previous: Any, owned: set[str]
) -> None:
    """Fail before any work if a run would overwrite or delete a file it did not write.

    The run writes inputs.npz and manifest.json into its folder and may delete artifacts
    that an earlier run's manifest records; none of them may be one of the user's files.
    """
    ours = {INPUTS_NAME, MANIFEST_NAME, LOCK_NAME} | owned
    for path in input_files(config):
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
