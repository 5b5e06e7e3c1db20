"""Cache keys, artifact names and cache checks.

A step's key covers what it reads (its parent's bytes, external data included, or the
models it measures), its resolved config, the input set, the settings that change its
result for its kind, and the tool versions. A cached entry is reused only when the files it
recorded are still on disk with the recorded sha256.
"""

from __future__ import annotations

import functools
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxopt import _fs, modelio
from onnxopt.config import PipelineConfig, StepBase
from onnxopt.errors import OnnxoptError
from onnxopt.records import StepEntry, artifact_of
from onnxopt.registry import StepSpec

log = logging.getLogger("onnxopt")


def tool_versions(include_torch: bool = False) -> dict[str, str | None]:
    """Versions of python and the libraries that shape an artifact."""
    from onnxopt import __version__

    versions: dict[str, str | None] = {
        "onnxopt": __version__,
        "python": platform.python_version(),
    }
    for dist in ("onnx", "onnxruntime", "onnxsim", "numpy"):
        versions[dist] = _dist_version(dist)
    versions["torch"] = _dist_version("torch") if include_torch else None
    return versions


@functools.cache
def _dist_version(name: str) -> str | None:
    """An installed distribution's version (read once: its metadata is parsed to tell)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def output_name(spec: StepSpec, index: int, key: str) -> str:
    """A model step's ``NN-<step>-<hash8>.onnx``; other steps' ``NN-<step><suffix>``."""
    if spec.kind == "model":
        return f"{index:02d}-{spec.name}-{key[:8]}.onnx"
    return f"{index:02d}-{spec.name}{spec.suffix}"


def source_digest(config: PipelineConfig, base_dir: Path) -> str:
    """Digest of a PyTorch source: the factory's file, weights and arguments, or a Hugging
    Face folder's files."""
    from onnxopt.factory import factory_source_file

    model = config.model
    if model.huggingface:
        from onnxopt.hf import folder_digest_parts

        folder = Path(model.huggingface)
        return _fs.digest_of("huggingface", model.task, model.pooling, folder_digest_parts(folder))
    named = model.model_dump(mode="json", context={"relative_to": base_dir})
    parts: list[Any] = [named["factory"], model.factory_args]
    src = factory_source_file(model.factory or "", base_dir)
    parts.append(_fs.sha256_file(src) if src and src.is_file() else None)
    if model.weights:
        weights = Path(model.weights)
        parts.append(_fs.sha256_file(weights) if weights.is_file() else named["weights"])
    return _fs.digest_of(*parts)


def step_key(
    spec: StepSpec,
    index: int,
    step: StepBase,
    reads: Any,
    config: PipelineConfig,
    inputs: dict[str, Any],
    base_dir: Path,
    more: Any = None,
) -> str:
    """The cache key of step ``index``; ``reads``: its parent's digest, or for a measuring
    step the (label, digest) of every model it measures; ``inputs``: the manifest's record
    of the input set; ``more``: what the step type adds (:func:`onnxopt.registry.key_extra`).
    Paths below ``base_dir`` count relative to it: files are covered by their bytes, and the
    same project in another folder keeps its keys."""
    relative = {"relative_to": base_dir}
    extra: list[Any]
    if spec.kind == "model":  # verified against its parent at two shapes, on the target
        extra = [
            inputs["second_dims"],
            config.verify.model_dump(mode="json", context=relative),
            config.target.model_dump(mode="json"),
            config.external_data,
            inputs.get("evaluate"),  # the task metric: its config and its code's digest
        ]
    elif spec.kind == "measure":
        extra = [config.target.model_dump(mode="json")]
    else:
        extra = []
    return _fs.digest_of(
        index,
        step.model_dump(mode="json", context=relative),
        reads,
        inputs["digest"],
        *extra,
        *([more] if more is not None else []),
        tool_versions(include_torch=spec.reads_pytorch or spec.uses_torch),
    )


def intact(entry: StepEntry, out_dir: Path) -> bool:
    """Whether a finished entry's files are on disk as recorded (a kept parent has none)."""
    if entry.get("kept_parent"):
        return True
    if entry.get("files"):
        return all(
            (out_dir / f["path"]).is_file() and _fs.sha256_file(out_dir / f["path"]) == f["sha256"]
            for f in entry["files"]
        )
    if entry.get("report_file"):
        report = out_dir / entry["report_file"]["path"]
        return report.is_file() and _fs.sha256_file(report) == entry["report_file"]["sha256"]
    output = artifact_of(entry)
    out = out_dir / output["path"]
    try:
        return out.is_file() and modelio.model_digest(out) == output["sha256"]
    except (OnnxoptError, OSError) as err:
        log.info("cached artifact %s is unusable (%s); rebuilding", out.name, err)
        return False
