"""One-step commands: run a pipeline in a hidden scratch folder and put its result at ``-o``."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from onnxopt import registry
from onnxopt.config import PipelineConfig
from onnxopt.engine.run import Pipeline
from onnxopt.engine.step import Event
from onnxopt.errors import ConfigError, InputError
from onnxopt.modelio import copy_model, move_model

log = logging.getLogger("onnxopt")


def run_to_file(
    config: PipelineConfig,
    output: str | Path,
    *,
    source: Path | None = None,
    on_event: Event | None = None,
) -> dict[str, Any]:
    """Run a pipeline in a hidden scratch folder beside ``output``; move the result there.

    This is how the one-step subcommands (``onnxopt simplify IN -o OUT``) work: the same
    engine, checks and manifest, but the verified artifact lands at a path of the caller's
    choosing and the scratch folder is removed. ``output`` is replaced only on success.

    Returns:
        The manifest, with paths rewritten to ``output``.
    """
    output = Path(output)
    if source is not None and output.resolve() == source.resolve():
        raise InputError(
            f"output {output} is the input model; onnxopt never overwrites its input",
            hint="choose another -o path",
        )
    last = registry.spec(config.steps[-1].type)
    packaging = last.kind == "files"
    suffix = last.suffix
    if output.suffix != suffix:
        raise ConfigError(f"-o expects a path ending in {suffix}, found {output}")
    if output.is_dir():
        raise InputError(f"output {output} is a folder; give a file path ending in .onnx")
    parent = output.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {parent} ({err.strerror})") from None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.work-", dir=parent))
    except OSError as err:
        raise InputError(
            f"cannot write to output folder {parent} ({err.strerror})",
            hint="choose a writable folder for -o",
        ) from None
    try:
        manifest = Pipeline(
            config, Path.cwd(), out_dir=scratch, force=True, on_event=on_event
        ).run()
        if packaging:
            files = manifest["steps"][-1]["files"]
            # the companions first, the main file last (its presence means complete)
            for f in reversed(files):
                dst = output.resolve()
                if not f["path"].endswith(suffix):
                    dst = dst.with_suffix("." + f["path"].split(".", 1)[1])
                os.replace(scratch / f["path"], dst)
                f["path"] = dst.name
        else:
            produced = scratch / manifest["final_artifact"]
            if produced.resolve().is_relative_to(scratch.resolve()):
                inputs = {Path(p).resolve() for p in config.input_files()}
                _move_companions(manifest, scratch, output.resolve(), inputs)
                move_model(produced, output.resolve())
            else:  # every step kept its parent, the user's file: copy it, never move it
                copy_model(produced, output.resolve())
                kept = [e for e in manifest["steps"] if e.get("kept_parent")]
                manifest["output_is_unchanged_copy"] = {
                    "of": str(produced),
                    "reason": "; ".join(str(e.get("kept_parent_reason")) for e in kept),
                }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    manifest["output_dir"] = str(parent)
    manifest["final_artifact"] = output.name
    for entry in manifest["steps"]:
        if entry.get("output"):
            entry["output"]["path"] = output.name
    return manifest


def _move_companions(
    manifest: dict[str, Any], scratch: Path, output: Path, inputs: set[Path]
) -> None:
    """A final model's companion files (a loss plot, a report) go beside ``output``, named
    after it: ``NN-step-hash.loss.png`` -> ``OUTPUT-STEM.loss.png``. They are part of the
    output: a re-run replaces them as it replaces ``output`` (never a file the run reads)."""
    final = manifest["final_artifact"]
    for entry in manifest["steps"]:
        out = entry.get("output") or {}
        if out.get("path") != final:
            continue
        for f in out.get("files") or []:
            rest = f["path"].removeprefix(final.removesuffix(".onnx"))
            dst = output.with_name(output.name.removesuffix(".onnx") + rest)
            if dst in inputs:  # never replace a file the run reads
                log.warning("%s is an input of this run and was left alone", dst)
                f["path"] = None
                continue
            os.replace(scratch / f["path"], dst)
            f["path"] = dst.name
