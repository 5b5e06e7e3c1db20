"""One step as a transaction: key, reuse, record, run in a scratch folder, check, publish.

Every kind of step (see :data:`onnxopt.registry.Kind`) goes through :meth:`StepRun.run`:
the cache key, a cache hit, the manifest entry, the step's run inside its own scratch
folder (its current and temp folder too), then per kind: a model is checked, verified
against its parent and speed-guarded; files and reports are published as they are. A file
is on disk only once its entry says ``ok``; a failure or an interrupt removes what the
step published.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from onnxopt import _fs, graph, modelio, registry
from onnxopt.config import PipelineConfig, StepBase
from onnxopt.engine import cache
from onnxopt.engine.manifest import Manifest
from onnxopt.errors import InputError, StepError, VerificationError
from onnxopt.records import ArtifactRecord, FileRecord, StepEntry, artifact_of
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.verify import Verification, resolve_tolerance, verify_against_parent

log = logging.getLogger("onnxopt")

SYNTHETIC_WARNING = (
    "verified on synthetic inputs only: that proves the graph, not the task; give --data "
    "(samples of your inputs) to verify on a held-out part of them"
)
#: the manifest field that records what a step of each kind published
_PUBLISHED_AS = {"model": "output", "files": "files", "measure": "report_file"}

Event = Callable[..., None]
#: (label, path, digest) of each model of the chain so far
Chain = list[tuple[str, Path, str]]


@contextlib.contextmanager
def ours_to_blame(scratch: Path) -> Iterator[None]:
    """A bad-input error about a file in a step's scratch folder is onnxopt's failure.

    Such a file was written by onnxopt or a library it called, so the error is exit 1, not a
    usage error, and its message names the file, not the scratch path the user never gave.
    """
    try:
        yield
    except InputError as err:
        where = str(scratch)
        if where not in str(err):
            raise
        pattern = re.escape(where) + r"[^\s:;,)'\"]*"

        def scrub(text: str) -> str:
            return re.sub(pattern, lambda m: Path(m.group()).name or "a scratch file", text)

        raise StepError(
            f"onnxopt or a library it calls wrote an unusable file: {scrub(err.message)}",
            hint="this is not a problem with your input; please report it",
        ) from None


@dataclasses.dataclass
class StepRun:
    """Runs the steps of one pipeline run into its output folder."""

    config: PipelineConfig
    out_dir: Path
    manifest: Manifest
    ctx: StepContext
    emit: Event
    force: bool

    def run(
        self, index: int, step: StepBase, parent: Path | None, digest: str, chain: Chain
    ) -> tuple[Path | None, str]:
        """Run step ``index`` on ``parent``; return what the chain continues with."""
        spec = registry.spec(step.type)
        reads = [(n, d) for n, _, d in chain] if spec.kind == "measure" else digest
        more = registry.key_extra(step, chain, self.ctx.base_dir)
        key = cache.step_key(
            spec,
            index,
            step,
            reads,
            self.config,
            self.manifest.data["inputs"],
            self.ctx.base_dir,
            more,
        )
        name = cache.output_name(spec, index, key)
        final = self.out_dir / name
        self.emit("step_start", index=index, total=len(self.config.steps), step=_label(step))
        hit = self._cached(index, key)
        if hit is not None:
            self.emit("step_end", entry=hit)
            if spec.kind == "model" and not hit.get("kept_parent"):
                return final, artifact_of(hit)["sha256"]
            return parent, digest
        entry = self._entry(index, step, key, spec, parent, digest, chain)
        published: list[Path] = []

        def undo(err: BaseException) -> None:
            if spec.kind == "measure" and not isinstance(err, KeyboardInterrupt):
                return  # a failed gate keeps its report to read
            cast("dict[str, Any]", entry).pop(_PUBLISHED_AS[spec.kind], None)
            for path in published:
                modelio.remove_model(path) if spec.kind == "model" else path.unlink(missing_ok=True)

        partial = self.out_dir / f".{name}.partial"
        try:
            with self.manifest.recording(entry, undo) as started:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                ctx = dataclasses.replace(
                    self.ctx,
                    scratch=partial / "work",
                    chain=[(n, p) for n, p, _ in chain],
                    progress=lambda text: self.emit(
                        "step_progress",
                        index=index,
                        total=len(self.config.steps),
                        step=_label(step),
                        text=text,
                    ),
                )
                with ours_to_blame(partial), _fs.scratch_env(partial / "work"):
                    result: StepResult = registry.runner(step.type)(
                        parent, partial / name, step, ctx
                    )
                entry["report"] = result.report
                entry["warnings"] = result.warnings
                for text in result.warnings:
                    log.warning("step %d (%s): %s", index, step.type, text)
                if result.keep_parent and parent is not None:
                    reason = str(result.report.get("reason") or "the step found nothing better")
                    return self._keep_parent(entry, parent, digest, started, reason)
                if spec.kind == "model":
                    kept = self._check_model(index, step, entry, parent, partial / name, result)
                    if kept is not None and parent is not None:
                        return self._keep_parent(entry, parent, digest, started, kept)
                elif result.verification is not None:
                    self._judge(index, step, entry, result.verification)
                fields = self._publish(spec, partial / name, final, result, published)
                self.manifest.finished(entry, started, **fields)
                if result.failure is not None:
                    raise result.failure
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self.emit("step_end", entry=entry)
        if spec.kind == "model":
            return final, artifact_of(entry)["sha256"]
        return parent, digest

    def _cached(self, index: int, key: str) -> StepEntry | None:
        """Record and return a cache hit of step ``index``, or None on a miss."""
        if self.force:
            return None
        for entry in self.manifest.previous_entries(index, key):
            if entry.get("status") not in ("ok", "cached"):
                return None
            if (entry.get("report") or {}).get("cut_short"):
                return None  # a search's deadline stopped it: a later run may do more
            if cache.intact(entry, self.out_dir):
                return self.manifest.reuse(entry)
            return None
        return None

    def _entry(
        self,
        index: int,
        step: StepBase,
        key: str,
        spec: registry.StepSpec,
        parent: Path | None,
        digest: str,
        chain: Chain,
    ) -> StepEntry:
        """A new manifest entry for step ``index``, status running."""
        entry: StepEntry = {
            "index": index,
            "type": step.type,
            "name": _label(step),
            "status": "running",
            "key": key,
        }
        if spec.kind == "measure":
            entry["models"] = [{"label": n, "path": str(p), "sha256": d} for n, p, d in chain]
            entry["output"] = None
        else:
            entry["parent"] = self._parent_label(parent)
            entry["input"] = {"sha256": digest}
            if spec.kind == "model":
                entry["versions"] = cache.tool_versions(
                    include_torch=spec.reads_pytorch or spec.uses_torch
                )
            else:
                entry["output"] = None
        entry["config"] = step.model_dump(mode="json")
        entry["started"] = _fs.now()
        return entry

    def _parent_label(self, parent: Path | None) -> str:
        if parent is None:
            return f"pytorch:{self.config.model.label}"
        return str(
            parent.relative_to(self.out_dir) if parent.is_relative_to(self.out_dir) else parent
        )

    def _judge(
        self, index: int, step: StepBase, entry: StepEntry, verification: Verification
    ) -> None:
        entry["verification"] = verification.as_dict()
        if not verification.passed:
            task = verification.task
            if task is not None and not task["passed"]:
                raise VerificationError(
                    f"step {index} ({step.type}): {verification.first_failure()}",
                    hint="try another recipe (quantize -m auto, diagnose) or a larger "
                    "evaluate.budget.max_drop (--max-drop) if that loss is acceptable",
                )
            raise VerificationError(
                f"step {index} ({step.type}): output differs from its parent: "
                f"{verification.first_failure()}",
                hint="loosen 'tolerance' only if this precision loss is expected",
            )

    def _check_model(
        self,
        index: int,
        step: StepBase,
        entry: StepEntry,
        parent: Path | None,
        tmp: Path,
        result: StepResult,
    ) -> str | None:
        """Check, verify and time a new model; the reason when its parent is to be kept."""
        if not tmp.is_file():
            raise StepError(f"step {index} ({step.type}) wrote no model")
        modelio.check_model(tmp, produced_by=f"step {index} ({step.type})")
        verification = result.verification
        if verification is None:
            assert parent is not None
            tol = resolve_tolerance(step)
            verification = verify_against_parent(
                parent, tmp, tol, self.ctx.input_set, self.ctx.target
            )
            if self.ctx.evaluator is not None:
                verification = self.ctx.evaluator.apply(verification, parent, tmp, tol)
        self._judge(index, step, entry, verification)
        synthetic = self.ctx.input_set.synthetic and self.ctx.evaluator is None
        if registry.spec(step.type).lossy and synthetic:
            entry["warnings"].append(SYNTHETIC_WARNING)
            log.warning("step %d (%s): %s", index, step.type, SYNTHETIC_WARNING)
        after = modelio.load_model(tmp, load_weights=False)
        entry["report"] = {**result.report, "after": graph.summary(after)}
        if result.speed is not None:  # the step timed its result against its parent itself
            entry["speed"] = result.speed
            return None
        guarded = step.guard is not None and step.guard.not_slower
        if parent is None or not (guarded or step.measure_speed_requested()):
            return None
        from onnxopt.bench.compare import speed_guard

        where = f"step {index} ({step.type})"
        speed, decision = speed_guard(
            parent, tmp, self.ctx.inputs, self.ctx.target, step.guard if guarded else None, where
        )
        entry["speed"] = speed
        if not guarded:
            return None
        entry["guard"] = decision
        if not decision["kept_parent"]:
            return None
        reason = (
            f"the new artifact was slower ({speed['ratio']:.2f}x the parent's median latency, "
            f"beyond the {decision['tolerance'] * 100:.0f}% tolerance and the noise)"
        )
        entry["warnings"].append(f"speed guard: {reason}; kept the parent")
        return reason

    def _keep_parent(
        self, entry: StepEntry, parent: Path, digest: str, started: float, reason: str
    ) -> tuple[Path, str]:
        """Finish ``entry`` with no artifact of its own: the chain goes on with ``parent``."""
        self.manifest.finished(
            entry, started, kept_parent=True, kept_parent_reason=reason, output=None
        )
        self.emit("step_end", entry=entry)
        return parent, digest

    def _publish(
        self,
        spec: registry.StepSpec,
        tmp: Path,
        final: Path,
        result: StepResult,
        published: list[Path],
    ) -> dict[str, Any]:
        """Move the step's files into the output folder; the manifest fields recording them.

        Still inside the recording: an interrupt before the manifest records a file removes
        it, so a file on disk always has an "ok" entry.
        """
        if spec.kind == "model":
            companions: list[FileRecord] = [  # a plot beside the model: published first
                {"path": p.name, "sha256": _fs.sha256_file(p)}
                for p in self._place(result.files, published)
            ]
            published.append(final)
            modelio.publish(tmp, final)
            output: ArtifactRecord = {
                "path": final.name,
                "sha256": modelio.model_digest(final),
                "size_bytes": modelio.model_size(final),
                "external_data": [p.name for p in modelio.external_data_files(final)],
            }
            if companions:
                output["files"] = companions
            return {"output": output}
        if not tmp.is_file():
            raise StepError(f"{spec.name} wrote no {final.name}")
        finals = [self.out_dir / f.name for f in [tmp, *result.files]]
        self._place([*result.files, tmp], published)  # the main file last: it means complete
        if spec.kind == "measure":
            return {"report_file": {"path": final.name, "sha256": _fs.sha256_file(final)}}
        return {
            "files": [
                {"path": f.name, "sha256": _fs.sha256_file(f), "size_bytes": f.stat().st_size}
                for f in finals
            ]
        }

    def _place(self, files: list[Path], published: list[Path]) -> list[Path]:
        """Move plain files into the output folder in order (readable as the user's umask
        says), each recorded in ``published`` before it lands; their new paths."""
        mode = _fs.file_mode()
        placed = []
        for src in files:
            os.chmod(src, mode)
            published.append(self.out_dir / src.name)
            os.replace(src, published[-1])
            placed.append(published[-1])
        return placed


def _label(step: StepBase) -> str:
    return step.name or step.type
