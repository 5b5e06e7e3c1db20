"""The run loop: one pipeline run into an output folder, step by step."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from onnxopt import modelio
from onnxopt.config import PipelineConfig, resolve_paths
from onnxopt.engine import cache
from onnxopt.engine.context import build_context, refuse_clobbering, source_model
from onnxopt.engine.lock import folder_lock
from onnxopt.engine.manifest import MANIFEST_SCHEMA, Manifest, read_manifest
from onnxopt.engine.step import Chain, Event, StepRun
from onnxopt.errors import InputError, OnnxoptError

log = logging.getLogger("onnxopt")


class Pipeline:
    """One run of a pipeline config into an output folder."""

    def __init__(
        self,
        config: PipelineConfig,
        base_dir: Path,
        *,
        out_dir: Path | None = None,
        force: bool = False,
        on_event: Event | None = None,
        wait: bool = True,
    ) -> None:
        # absolute: steps run with their scratch folder as the current folder
        self.base_dir = base_dir.resolve()
        # every path the config names, absolute from here on (the one place they resolve)
        self.config = resolve_paths(config, self.base_dir)
        self.invocation_dir = Path.cwd()
        self.out_dir = (out_dir or Path(self.config.output_dir)).resolve()
        self.force = force
        self.wait = wait
        self.emit: Event = on_event or (lambda *a, **k: None)

    def run(self) -> dict[str, Any]:
        """Run every step; return the manifest.

        Raises:
            OnnxoptError: the first failure (the manifest records it).
        """
        self._prepare_out_dir()
        with folder_lock(self.out_dir, wait=self.wait, emit=self.emit):
            return self._run_locked()

    def _prepare_out_dir(self) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(
                f"output folder {self.out_dir} exists and is not a folder",
                hint="choose another output_dir",
            )
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(
                f"cannot write to output folder {self.out_dir} ({err.strerror})",
                hint="choose a writable output_dir",
            ) from None

    def _run_locked(self) -> dict[str, Any]:
        cfg = self.config
        for stale in self.out_dir.glob(".*.partial"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        previous = read_manifest(self.out_dir)
        manifest = Manifest(
            self.out_dir,
            {
                "schema_version": MANIFEST_SCHEMA,
                "tool": "onnxopt",
                "pipeline": {"name": cfg.name, "config": cfg.model_dump(mode="json")},
                "output_dir": str(self.out_dir),
                "versions": cache.tool_versions(include_torch=cfg.model.is_pytorch),
                "target": cfg.target.model_dump(mode="json"),
            },
            previous,
        )
        refuse_clobbering(cfg, self.out_dir, previous, manifest.inherited)
        failure: BaseException | None = None
        try:
            manifest.write()  # first: a folder with our inputs.npz always has our manifest
            self._steps(manifest)
        except BaseException as err:
            failure = err
            if isinstance(err, OnnxoptError):
                err.manifest = manifest.data
            raise
        finally:
            manifest.close(failure)
        return manifest.data

    def _steps(self, manifest: Manifest) -> None:
        cfg = self.config
        source = source_model(cfg)
        ctx, manifest.data["inputs"] = build_context(
            cfg, self.base_dir, self.invocation_dir, source, self.out_dir
        )
        ctx.out_dir, ctx.run_pipeline = self.out_dir, run_pipeline
        manifest.write()
        parent: Path | None = source
        digest = modelio.model_digest(source) if source else cache.source_digest(cfg, self.base_dir)
        chain: Chain = [("source", source, digest)] if source else []
        steps = StepRun(cfg, self.out_dir, manifest, ctx, self.emit, self.force)
        for index, step in enumerate(cfg.steps, start=1):
            parent, digest = steps.run(index, step, parent, digest, chain)
            if parent is not None and (not chain or chain[-1][2] != digest):
                chain.append((f"{index:02d}-{step.name or step.type}", parent, digest))
        manifest.data["status"] = "ok"
        manifest.data["removed_stale"] = manifest.remove_stale()
        manifest.data["final_artifact"] = (
            str(parent.relative_to(self.out_dir))
            if parent and parent.is_relative_to(self.out_dir)
            else str(parent)
        )


def run_pipeline(
    config: PipelineConfig,
    base_dir: str | Path = ".",
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    on_event: Event | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    """Run a pipeline and return its manifest.

    Args:
        config: a validated pipeline config (see :func:`onnxopt.config.load_config`).
        base_dir: folder that relative paths in the config are resolved against.
        out_dir: output folder (default: the config's ``output_dir``).
        force: ignore cached artifacts.
        on_event: progress callback ``(event, **data)``.
        wait: when another run holds the output folder, wait for it (else fail at once).
    """
    return Pipeline(
        config,
        Path(base_dir),
        out_dir=Path(out_dir) if out_dir is not None else None,
        force=force,
        on_event=on_event,
        wait=wait,
    ).run()
