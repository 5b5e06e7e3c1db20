"""The pipeline engine: chains steps, verifies every artifact, caches, writes the manifest."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from onnxopt import _fs, artifacts, modelio
from onnxopt._fs import scratch_env
from onnxopt.config import PipelineConfig, Step
from onnxopt.errors import InputError, OnnxoptError, StepError, VerificationError
from onnxopt.modelio import (
    check_model,
    load_model,
    publish,
    remove_model,
    summary,
)
from onnxopt.registry import runner
from onnxopt.steps.base import StepContext, StepResult
from onnxopt.verify import (
    InputSet,
    check_inputs_fit,
    inputs_digest,
    load_inputs,
    make_inputs,
    resolve_dims,
    resolve_tolerance,
    save_inputs,
    second_dims,
    specs_from_model,
    symbolic_dims,
    verify_against_parent,
)

log = logging.getLogger("onnxopt")

Event = Callable[..., None]
INPUTS_NAME = "inputs.npz"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base_dir / p)


# ---------------------------------------------------------------- engine


@contextlib.contextmanager
def _ours_to_blame(scratch: Path) -> Iterator[None]:
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


LOCK_NAME = ".onnxopt.lock"


@contextlib.contextmanager
def _folder_lock(out_dir: Path, *, wait: bool, emit: Event) -> Any:
    """One run per output folder: an exclusive advisory lock on OUT/.onnxopt.lock."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = out_dir / LOCK_NAME
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            if not wait:
                raise InputError(
                    f"output folder {out_dir} is in use by another onnxopt run ({holder})",
                    hint="wait for it, drop --no-wait, or use another output folder",
                ) from None
            log.warning("output folder %s is in use (%s); waiting for it", out_dir, holder)
            emit("waiting", holder=holder)
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


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
        self.wait = wait
        self.config = config
        # absolute: steps run with their scratch folder as the current folder
        self.base_dir = base_dir.resolve()
        self.invocation_dir = Path.cwd()
        self.out_dir = (out_dir or _resolve(base_dir, config.output_dir)).resolve()
        self.force = force
        self.emit: Event = on_event or (lambda *a, **k: None)
        self.manifest: dict[str, Any] = {}

    # -- set-up -----------------------------------------------------------

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

    def _source_model(self) -> Path | None:
        if self.config.model.path is None:
            return None
        path = _resolve(self.base_dir, self.config.model.path)
        load_model(path, load_weights=False)  # also runs onnx.checker on the file
        return path.resolve()

    def _build_context(self, source: Path | None) -> StepContext:
        cfg = self.config
        if cfg.inputs is not None:
            specs = list(cfg.inputs)
        elif cfg.model.huggingface:
            from onnxopt.config import InputSpec
            from onnxopt.hf import input_specs

            folder = _resolve(self.base_dir, cfg.model.huggingface)
            specs = [InputSpec(**s) for s in input_specs(folder, cfg.model.task)]
        else:
            assert source is not None
            specs = specs_from_model(load_model(source, load_weights=False))
        if cfg.verify.inputs_file:
            inputs = load_inputs(_resolve(self.base_dir, cfg.verify.inputs_file))
            dims = self._dims_from_arrays(specs, inputs)
            defaulted: list[str] = []
        else:
            dims, defaulted = resolve_dims(specs, cfg.dims)
            inputs = make_inputs(specs, dims, cfg.verify.seed)
        unknown = sorted(set(cfg.dims) - set(symbolic_dims(specs)))
        if unknown:
            raise InputError(
                f"dims {unknown} are not symbolic dims of the inputs; "
                f"the inputs have {symbolic_dims(specs) or 'no symbolic dims'}"
            )
        if source is not None:
            check_inputs_fit(load_model(source, load_weights=False), inputs, source.name)
        for name in defaulted:
            log.info("dim %r has no value in 'dims'; using 1 for verification inputs", name)
        alt_dims = alt_inputs = None
        if cfg.verify.second_shape and dims:
            alt_dims = second_dims(dims, cfg.verify.second_dims)
            alt_inputs = make_inputs(specs, alt_dims, cfg.verify.seed + 1)
        save_inputs(self.out_dir / INPUTS_NAME, inputs)
        self.manifest["inputs"] = {
            "path": INPUTS_NAME,
            "digest": inputs_digest(inputs),
            "source": cfg.verify.inputs_file or f"generated (seed {cfg.verify.seed})",
            "specs": [s.model_dump() for s in specs],
            "dims": dims,
            "defaulted_dims": defaulted,
            "second_dims": alt_dims,
        }
        return StepContext(
            config=cfg,
            base_dir=self.base_dir,
            specs=specs,
            input_set=InputSet(main=inputs, dims=dims, second=alt_inputs, second_dims=alt_dims),
            invocation_dir=self.invocation_dir,
        )

    @staticmethod
    def _dims_from_arrays(specs: Any, arrays: dict[str, Any]) -> dict[str, int]:
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

    # -- keys and cache ---------------------------------------------------

    def _source_digest(self) -> str:
        """Digest of a PyTorch factory's source file, weights and arguments."""
        from onnxopt.factory import factory_source_file

        model = self.config.model
        if model.huggingface:
            from onnxopt.hf import folder_digest_parts

            folder = _resolve(self.base_dir, model.huggingface)
            return _fs.digest_of(
                "huggingface", model.task, model.pooling, folder_digest_parts(folder)
            )
        parts: list[Any] = [model.factory, model.factory_args]
        src = factory_source_file(model.factory or "", self.base_dir)
        parts.append(_fs.sha256_file(src) if src and src.is_file() else None)
        if model.weights:
            weights = _resolve(self.base_dir, model.weights)
            parts.append(_fs.sha256_file(weights) if weights.is_file() else str(weights))
        return _fs.digest_of(*parts)

    def _key(self, index: int, step: Any, parent: Any, *extra: Any) -> str:
        """Cache key of step ``index``: its config, what it reads (``parent``), the input
        set, ``extra`` settings that change its result, and the tool versions."""
        return _fs.digest_of(
            index,
            step.model_dump(mode="json"),
            parent,
            self.manifest["inputs"]["digest"],
            *extra,
            artifacts.tool_versions(include_torch=step.type == "export"),
        )

    def _step_key(self, index: int, step: Step, parent_digest: str) -> str:
        return self._key(
            index,
            step,
            parent_digest,
            self.manifest["inputs"]["second_dims"],
            self.config.verify.model_dump(mode="json"),
            self.config.target.model_dump(mode="json"),
            self.config.external_data,
        )

    def _cached(
        self, previous: dict[str, Any] | None, index: int, key: str
    ) -> dict[str, Any] | None:
        if previous is None or self.force:
            return None
        for entry in self._recorded(previous):
            if entry.get("index") != index or entry.get("key") != key:
                continue
            if entry.get("status") not in ("ok", "cached"):
                return None
            if entry.get("kept_parent"):
                return entry
            if entry.get("files"):
                intact = all(
                    (self.out_dir / f["path"]).is_file()
                    and _fs.sha256_file(self.out_dir / f["path"]) == f["sha256"]
                    for f in entry["files"]
                )
                return entry if intact else None
            if entry.get("report_file"):
                report = self.out_dir / entry["report_file"]["path"]
                if report.is_file() and _fs.sha256_file(report) == entry["report_file"]["sha256"]:
                    return entry
                return None
            out = self.out_dir / entry["output"]["path"]
            try:
                if out.is_file() and modelio.model_digest(out) == entry["output"]["sha256"]:
                    return entry
            except (OnnxoptError, OSError) as err:
                log.info("cached artifact %s is unusable (%s); rebuilding", out.name, err)
        return None

    @staticmethod
    def _recorded(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
        """A manifest's step entries, with those an unfinished run carried over."""
        if manifest is None:
            return []
        return [*manifest.get("steps", []), *manifest.get("carried_over", [])]

    def _carry_over(self, previous: dict[str, Any] | None) -> None:
        """Keep finished entries of earlier runs that this unfinished run did not reach.

        Without this, a run interrupted before it got to (and re-used) step 3 would forget
        that step 3 had been done, and the next run would rebuild it.
        """
        reached = {(e.get("index"), e.get("key")) for e in self.manifest["steps"]}
        self.manifest["carried_over"] = [
            e
            for e in self._recorded(previous)
            if e.get("status") in ("ok", "cached") and (e.get("index"), e.get("key")) not in reached
        ]

    # -- running ----------------------------------------------------------

    def _write_manifest(self) -> None:
        _fs.write_json_atomic(self.out_dir / artifacts.MANIFEST_NAME, self.manifest)

    def run(self) -> dict[str, Any]:
        """Run every step; return the manifest.

        Raises:
            OnnxoptError: the first failure (the manifest records it).
        """
        cfg = self.config
        self._prepare_out_dir()
        with _folder_lock(self.out_dir, wait=self.wait, emit=self.emit):
            return self._run_locked(cfg)

    def _run_locked(self, cfg: PipelineConfig) -> dict[str, Any]:
        for stale in self.out_dir.glob(".*.partial"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        previous = artifacts.read_manifest(self.out_dir)
        inherited = self._owned(previous)
        self._refuse_clobbering(previous, inherited)
        self.manifest = {
            "schema_version": artifacts.MANIFEST_SCHEMA,
            "tool": "onnxopt",
            "pipeline": {"name": cfg.name, "config": cfg.model_dump(mode="json")},
            "output_dir": str(self.out_dir),
            "status": "running",
            "started": _now(),
            "ended": None,
            "versions": artifacts.tool_versions(include_torch=cfg.model.is_pytorch),
            "target": cfg.target.model_dump(mode="json"),
            "steps": [],
            "final_artifact": None,
            "artifacts_on_disk": sorted(inherited),
        }
        try:
            self._write_manifest()  # first: a folder with our inputs.npz always has our manifest
            source = self._source_model()
            ctx = self._build_context(source)
            self._write_manifest()
            parent: Path | None = source
            parent_digest = modelio.model_digest(source) if source else self._source_digest()
            chain: list[tuple[str, Path, str]] = (
                [("source", source, parent_digest)] if source else []
            )
            for index, step in enumerate(cfg.steps, start=1):
                if step.type == "bench":
                    self._run_bench(index, step, chain, ctx, previous)
                    continue
                if step.type == "package":
                    assert parent is not None
                    self._run_package(index, step, parent, parent_digest, ctx, previous)
                    continue
                parent, parent_digest = self._run_step(
                    index, step, parent, parent_digest, ctx, previous
                )
                if not chain or chain[-1][2] != parent_digest:  # a guard may keep the parent
                    chain.append((f"{index:02d}-{step.name or step.type}", parent, parent_digest))
            self.manifest["status"] = "ok"
            self.manifest["removed_stale"] = self._remove_stale(inherited)
            self.manifest["final_artifact"] = (
                str(parent.relative_to(self.out_dir))
                if parent and parent.is_relative_to(self.out_dir)
                else str(parent)
            )
        except BaseException as err:
            self.manifest["status"] = (
                "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            )
            self.manifest["error"] = str(err) if isinstance(err, OnnxoptError) else repr(err)
            if isinstance(err, OnnxoptError):
                err.manifest = self.manifest
            raise
        finally:
            self.manifest["ended"] = _now()
            if self.manifest["status"] != "ok":
                self._carry_over(previous)
                self._track_artifacts(inherited)
            with contextlib.suppress(OSError):
                if self.out_dir.is_dir():
                    self._write_manifest()
        return self.manifest

    def _input_files(self) -> list[Path]:
        """The user's files this run reads: model, weights, inputs, calibration, baseline."""
        cfg = self.config
        named = [cfg.model.path, cfg.model.weights, cfg.verify.inputs_file]
        for step in cfg.steps:
            static = getattr(step, "static", None)
            named.append(static.calibration.path if static is not None else None)
            named.append(getattr(step, "baseline", None))
        files = [_resolve(self.base_dir, n).resolve() for n in named if n]
        if cfg.model.path and files and files[0].is_file():
            with contextlib.suppress(OnnxoptError, OSError):
                files += [p.resolve() for p in modelio.external_data_files(files[0])]
        return files

    def _refuse_clobbering(self, previous: dict[str, Any] | None, owned: set[str]) -> None:
        """Fail before any work if this run would overwrite or delete a file it did not write.

        The run writes inputs.npz and manifest.json into its folder and may delete artifacts
        that an earlier run's manifest records; none of them may be one of the user's files.
        """
        ours = {INPUTS_NAME, artifacts.MANIFEST_NAME, LOCK_NAME} | owned
        for path in self._input_files():
            if path.parent == self.out_dir and path.name in ours:
                raise InputError(
                    f"{path} is an input of this run, and the run writes or removes "
                    f"{path.name} in its output folder {self.out_dir}",
                    hint="choose another output_dir (or rename the file)",
                )
        manifest = self.out_dir / artifacts.MANIFEST_NAME
        if previous is None and (manifest.exists() or (self.out_dir / INPUTS_NAME).exists()):
            found = manifest if manifest.exists() else self.out_dir / INPUTS_NAME
            if not artifacts.written_by_onnxopt(manifest):
                raise InputError(
                    f"output folder {self.out_dir} holds {found.name}, which onnxopt did not "
                    "write; a run would overwrite it",
                    hint="choose another output_dir, or move that file away",
                )

    @staticmethod
    def _owned(manifest: dict[str, Any] | None) -> set[str]:
        """Artifact file names this tool wrote into the folder, per a manifest."""
        if manifest is None:
            return set()
        names = set(manifest.get("artifacts_on_disk", []))
        for e in manifest.get("steps", []):
            names.add((e.get("output") or {}).get("path"))
            names.add((e.get("report_file") or {}).get("path"))
            names.update(f.get("path") for f in e.get("files") or [])
        return {n for n in names if isinstance(n, str) and n and Path(n).name == n}

    def _track_artifacts(self, inherited: set[str]) -> None:
        names = inherited | self._owned(self.manifest)
        self.manifest["artifacts_on_disk"] = sorted(n for n in names if (self.out_dir / n).exists())

    def _remove_stale(self, inherited: set[str]) -> list[str]:
        """Delete artifacts of earlier runs that this run no longer uses.

        Only files this tool recorded as its own artifacts are touched, never other files.
        """
        keep = self._owned({"steps": self.manifest["steps"]})
        removed = []
        for name in sorted(inherited - keep):
            path = self.out_dir / name
            if not path.exists():
                continue
            if path.suffix == ".json":  # a bench report and its Markdown twin
                path.unlink()
                path.with_suffix(".md").unlink(missing_ok=True)
            else:
                remove_model(path)
            removed.append(name)
        self.manifest["artifacts_on_disk"] = sorted(keep)
        return removed

    def _reuse(
        self, previous: dict[str, Any] | None, index: int, key: str
    ) -> dict[str, Any] | None:
        """Record a cache hit for step ``index`` and return its entry, or None on a miss."""
        hit = self._cached(previous, index, key)
        if hit is None:
            return None
        cached = dict(hit, status="cached")
        self.manifest["steps"].append(cached)
        self._write_manifest()
        self.emit("step_end", entry=cached)
        return cached

    def _start(self, index: int, step: Any) -> None:
        label = step.name or step.type
        self.emit("step_start", index=index, total=len(self.config.steps), step=label)

    def _entry(
        self,
        index: int,
        step: Any,
        key: str,
        parent: tuple[Path | None, str] | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A new manifest entry for step ``index``, status running; ``parent``: (path, digest)."""
        if parent is not None:
            path, digest = parent
            fields = {"parent": self._parent_label(path), "input": {"sha256": digest}, **fields}
        return {
            "index": index,
            "type": step.type,
            "name": step.name or step.type,
            "status": "running",
            "key": key,
            **fields,
            "config": step.model_dump(mode="json"),
            "started": _now(),
        }

    @contextlib.contextmanager
    def _recording(
        self, entry: dict[str, Any], undo: Callable[[BaseException], None]
    ) -> Iterator[float]:
        """Append ``entry`` to the manifest; if the body raises, mark it and call ``undo``.

        Yields the start time. The entry is marked "interrupted" (Ctrl-C, SIGTERM) or
        "failed" with the error, and ``undo`` removes whatever the step had published.
        """
        self.manifest["steps"].append(entry)
        started = time.perf_counter()
        try:  # from here on, an interrupt marks this entry (the window starts at the append)
            self._write_manifest()
            yield started
        except BaseException as err:
            entry["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            entry["error"] = err.message if isinstance(err, OnnxoptError) else repr(err)
            entry["ended"] = _now()
            entry["duration_s"] = round(time.perf_counter() - started, 3)
            undo(err)
            raise

    def _finished(self, entry: dict[str, Any], started: float, **fields: Any) -> None:
        """Mark ``entry`` ok (with ``fields``) and write the manifest."""
        entry.update(
            status="ok", ended=_now(), duration_s=round(time.perf_counter() - started, 3), **fields
        )
        self._write_manifest()

    def _parent_label(self, parent: Path | None) -> str:
        if parent is None:
            return f"pytorch:{self.config.model.label}"
        return str(
            parent.relative_to(self.out_dir) if parent.is_relative_to(self.out_dir) else parent
        )

    def _run_bench(
        self,
        index: int,
        step: Any,
        chain: list[tuple[str, Path, str]],
        ctx: StepContext,
        previous: dict[str, Any] | None,
    ) -> None:
        """A measuring step: writes NN-bench.json (+ .md), passes the model on unchanged."""
        from onnxopt.bench import report as bench_report
        from onnxopt.bench.runner import raise_for_gates
        from onnxopt.steps import bench as bench_step

        self._start(index, step)
        key = self._key(
            index,
            step,
            [(name, digest) for name, _, digest in chain],
            self.config.target.model_dump(mode="json"),
        )
        name = f"{index:02d}-bench.json"
        path = self.out_dir / name
        if self._reuse(previous, index, key) is not None:
            return
        entry = self._entry(
            index,
            step,
            key,
            models=[{"label": n, "path": str(p), "sha256": d} for n, p, d in chain],
            output=None,
        )

        def undo(err: BaseException) -> None:
            if isinstance(err, KeyboardInterrupt):  # a failed gate keeps its report to read
                entry.pop("report_file", None)
                path.unlink(missing_ok=True)
                path.with_suffix(".md").unlink(missing_ok=True)

        partial = self.out_dir / f".{name}.partial"
        with self._recording(entry, undo) as started:
            try:
                with _ours_to_blame(partial), scratch_env(partial):
                    report = bench_step.run([(n, p) for n, p, _ in chain], step, ctx)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            _fs.write_json_atomic(path, report)
            _fs.write_text_atomic(path.with_suffix(".md"), bench_report.markdown(report))
            entry["report_file"] = {"path": name, "sha256": _fs.sha256_file(path)}
            entry["report"] = bench_step.summary(report)
            raise_for_gates(report)
            self._finished(entry, started)
        self.emit("step_end", entry=entry)

    def _run_package(
        self,
        index: int,
        step: Any,
        parent: Path,
        parent_digest: str,
        ctx: StepContext,
        previous: dict[str, Any] | None,
    ) -> None:
        """Write NN-package.ort and its operator config; the chain goes on with the parent."""
        from onnxopt.steps import package

        self._start(index, step)
        key = self._key(index, step, parent_digest)
        if self._reuse(previous, index, key) is not None:
            return
        names = package.file_names(index, step)
        finals = [self.out_dir / n for n in names]
        entry = self._entry(
            index,
            step,
            key,
            parent=(parent, parent_digest),
            output=None,
        )

        def undo(err: BaseException) -> None:
            entry.pop("files", None)
            for final in finals:
                final.unlink(missing_ok=True)

        partial = self.out_dir / f".{names[0]}.partial"
        try:
            with self._recording(entry, undo) as started:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                tmp_ort, tmp_config = (partial / n for n in names)
                with _ours_to_blame(partial), scratch_env(partial / "work"):
                    entry["report"] = package.run(parent, tmp_ort, tmp_config, step, ctx)
                tol = resolve_tolerance(step)
                reference = package.reference(parent, step, ctx)
                verification = ctx.verify(tmp_ort, reference, tol)
                entry["verification"] = verification.as_dict()
                if not verification.passed:
                    raise VerificationError(
                        f"step {index} (package): the .ort file differs from its ONNX parent: "
                        f"{verification.first_failure()}"
                    )
                mode = _fs.file_mode()
                for tmp in (tmp_config, tmp_ort):  # the .ort last: its presence means complete
                    os.chmod(tmp, mode)
                    os.replace(tmp, self.out_dir / tmp.name)
                files = [
                    {
                        "path": f.name,
                        "sha256": _fs.sha256_file(f),
                        "size_bytes": f.stat().st_size,
                    }
                    for f in finals
                ]
                self._finished(entry, started, files=files)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self.emit("step_end", entry=entry)

    def _run_step(
        self,
        index: int,
        step: Step,
        parent: Path | None,
        parent_digest: str,
        ctx: StepContext,
        previous: dict[str, Any] | None,
    ) -> tuple[Path, str]:
        key = self._step_key(index, step, parent_digest)
        name = artifacts.artifact_name(index, step.type, key)
        final = self.out_dir / name
        self._start(index, step)
        cached = self._reuse(previous, index, key)
        if cached is not None:
            if cached.get("kept_parent"):
                assert parent is not None
                return parent, parent_digest
            return final, cached["output"]["sha256"]

        entry = self._entry(
            index,
            step,
            key,
            parent=(parent, parent_digest),
            versions=artifacts.tool_versions(include_torch=step.type == "export"),
        )

        def undo(err: BaseException) -> None:
            entry.pop("output", None)
            remove_model(final)

        partial = self.out_dir / f".{name}.partial"
        try:
            with self._recording(entry, undo) as started:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir()
                tmp = partial / name
                with _ours_to_blame(partial), scratch_env(partial / "work"):
                    result: StepResult = runner(step.type)(parent, tmp, step, ctx)
                if result.keep_parent and parent is not None:
                    entry["report"] = result.report
                    entry["warnings"] = result.warnings
                    for text in result.warnings:
                        log.warning("step %d (%s): %s", index, step.type, text)
                    reason = str(result.report.get("reason") or "the step found nothing better")
                    return self._keep_parent(entry, parent, parent_digest, started, reason)
                self._check_and_verify(index, step, entry, parent, tmp, result, ctx)
                auto = getattr(step, "mode", None) == "auto"  # auto timed its candidates
                guarded = step.guard is not None and step.guard.not_slower and not auto
                if guarded and parent is not None:
                    entry["speed"], entry["guard"] = self._guard(index, step, parent, tmp, ctx)
                    if entry["guard"]["kept_parent"]:
                        guard, speed = entry["guard"], entry["speed"]
                        reason = (
                            f"the new artifact was slower ({speed['ratio']:.2f}x the parent's "
                            f"median latency, beyond the {guard['tolerance'] * 100:.0f}% "
                            "tolerance and the noise)"
                        )
                        entry["warnings"].append(f"speed guard: {reason}; kept the parent")
                        return self._keep_parent(entry, parent, parent_digest, started, reason)
                elif getattr(step, "measure_speed", False) and not auto and parent is not None:
                    entry["speed"], _ = self._guard(index, step, parent, tmp, ctx)
                publish(tmp, final)
                # still inside the recording: an interrupt before the manifest records the
                # artifact removes it, so a file on disk always has an "ok" entry
                digest = modelio.model_digest(final)
                output = {
                    "path": name,
                    "sha256": digest,
                    "size_bytes": modelio.model_size(final),
                    "external_data": [p.name for p in modelio.external_data_files(final)],
                }
                self._finished(entry, started, output=output)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self.emit("step_end", entry=entry)
        return final, digest

    def _check_and_verify(
        self,
        index: int,
        step: Step,
        entry: dict[str, Any],
        parent: Path | None,
        tmp: Path,
        result: StepResult,
        ctx: StepContext,
    ) -> None:
        """Check the new artifact, verify it against its parent, record report and warnings."""
        if not tmp.is_file():
            raise StepError(f"step {index} ({step.type}) wrote no model")
        check_model(tmp, produced_by=f"step {index} ({step.type})")
        verification = result.verification
        if verification is None:
            assert parent is not None
            tol = resolve_tolerance(step)
            verification = verify_against_parent(parent, tmp, tol, ctx.input_set, ctx.target)
        entry["verification"] = verification.as_dict()
        if not verification.passed:
            raise VerificationError(
                f"step {index} ({step.type}): output differs from its parent: "
                f"{verification.first_failure()}",
                hint="loosen 'tolerance' only if this precision loss is expected",
            )
        after = load_model(tmp, load_weights=False)
        entry["report"] = {**result.report, "after": summary(after)}
        entry["warnings"] = result.warnings
        for text in result.warnings:
            log.warning("step %d (%s): %s", index, step.type, text)

    def _guard(
        self, index: int, step: Step, parent: Path, child: Path, ctx: StepContext
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Time child against parent, interleaved, on the target; decide which to keep.

        Returns the measurement (the manifest's ``speed``) and the guard's decision.
        """
        from onnxopt.bench import stats
        from onnxopt.bench.core import Candidate, measure, summarize_measured
        from onnxopt.config import BenchStep, Guard
        from onnxopt.errors import GateError

        guard = step.guard or Guard(not_slower=False)
        cfg = BenchStep(type="bench", warmup=guard.warmup, runs=guard.runs, trials=guard.trials)
        measured = measure(
            [Candidate("parent", parent), Candidate("candidate", child)],
            ctx.inputs,
            cfg,
            ctx.target,
        )
        base_row, row = summarize_measured(measured, batch=1)
        ratio = row["compare"]["ratio"]
        low, high = row["compare"]["ratio_ci"]
        slower = guard.not_slower and stats.slower_beyond(ratio, low, guard.tolerance)
        speed = {
            "parent_median_ms": base_row["latency_ms"]["p50"],
            "median_ms": row["latency_ms"]["p50"],
            "ratio": ratio,
            "ratio_ci": [low, high],
            "speedup": 1.0 / ratio if ratio > 0 else None,
        }
        decision = {
            "tolerance": guard.tolerance,
            "on_slower": guard.on_slower,
            "slower": slower,
            "kept_parent": slower and guard.on_slower == "keep_parent",
        }
        if slower:
            text = (
                f"step {index} ({step.type}): the new artifact is {(ratio - 1) * 100:.1f}% slower "
                f"than its parent (95% CI of the ratio [{low:.3f}, {high:.3f}], tolerance "
                f"{guard.tolerance * 100:.1f}%)"
            )
            if guard.on_slower == "fail":
                raise GateError(text, hint="drop the step, or set guard.on_slower: keep_parent")
            log.warning("%s; keeping the parent", text)
        return speed, decision

    def _keep_parent(
        self, entry: dict[str, Any], parent: Path, parent_digest: str, started: float, reason: str
    ) -> tuple[Path, str]:
        """Finish ``entry`` with no artifact of its own: the chain goes on with ``parent``."""
        entry.update(
            status="ok",
            kept_parent=True,
            kept_parent_reason=reason,
            ended=_now(),
            duration_s=round(time.perf_counter() - started, 3),
            output=None,
        )
        self._write_manifest()
        self.emit("step_end", entry=entry)
        return parent, parent_digest


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
    from onnxopt.errors import ConfigError
    from onnxopt.modelio import copy_model, move_model

    output = Path(output)
    if source is not None and output.resolve() == source.resolve():
        raise InputError(
            f"output {output} is the input model; onnxopt never overwrites its input",
            hint="choose another -o path",
        )
    packaging = config.steps[-1].type == "package"
    suffix = ".ort" if packaging else ".onnx"
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
            # the operator config first, the .ort last (its presence means complete)
            for f in reversed(files):
                dst = output.resolve()
                if not f["path"].endswith(".ort"):
                    dst = dst.with_suffix("." + f["path"].split(".", 1)[1])
                os.replace(scratch / f["path"], dst)
                f["path"] = dst.name
        else:
            produced = scratch / manifest["final_artifact"]
            if produced.resolve().is_relative_to(scratch.resolve()):
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
