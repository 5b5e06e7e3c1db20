"""The manifest of a run: its entries, what it owns on disk, and reading it back.

``manifest.json`` records per step its parent, key, config, report, verification, timings
and the files it wrote. Only files a manifest records as the run's own are ever removed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from onnxopt import _fs
from onnxopt.errors import OnnxoptError
from onnxopt.modelio import remove_model
from onnxopt.records import StepEntry

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
INPUTS_NAME = "inputs.npz"


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest in ``out_dir``, or None when absent or unreadable."""
    path = out_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != MANIFEST_SCHEMA:
        return None
    return data


def written_by_onnxopt(manifest: Path) -> bool:
    """True when ``manifest`` is a manifest this tool wrote (any schema version)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "onnxopt"


def recorded(manifest: dict[str, Any] | None) -> list[StepEntry]:
    """A manifest's step entries, with those an unfinished run carried over."""
    if manifest is None:
        return []
    return [*manifest.get("steps", []), *manifest.get("carried_over", [])]


def owned(manifest: dict[str, Any] | None) -> set[str]:
    """Artifact file names this tool wrote into the folder, per a manifest."""
    if manifest is None:
        return set()
    names = set(manifest.get("artifacts_on_disk", []))
    for e in manifest.get("steps", []):
        names.add((e.get("output") or {}).get("path"))
        names.update(f.get("path") for f in (e.get("output") or {}).get("files") or [])
        names.add((e.get("report_file") or {}).get("path"))
        names.update(f.get("path") for f in e.get("files") or [])
    return {n for n in names if isinstance(n, str) and n and Path(n).name == n}


class Manifest:
    """The manifest of one run in ``out_dir``, written after every change.

    ``previous`` is the manifest an earlier run left there: what it owns on disk is
    inherited (removed at the end of a successful run when no longer used), its finished
    entries are candidates for cache hits, and those this run does not reach are carried
    over when it stops early.
    """

    def __init__(self, out_dir: Path, header: dict[str, Any], previous: dict[str, Any] | None):
        self.out_dir = out_dir
        self.previous = previous
        self.inherited = owned(previous)
        self.data: dict[str, Any] = {
            **header,
            "status": "running",
            "started": _fs.now(),
            "ended": None,
            "steps": [],
            "final_artifact": None,
            "artifacts_on_disk": sorted(self.inherited),
        }

    def write(self) -> None:
        """Write the manifest atomically."""
        _fs.write_json_atomic(self.out_dir / MANIFEST_NAME, self.data)

    def previous_entries(self, index: int, key: str) -> list[StepEntry]:
        """The earlier run's entries of step ``index`` with this cache key."""
        return [
            e for e in recorded(self.previous) if e.get("index") == index and e.get("key") == key
        ]

    def reuse(self, entry: StepEntry) -> StepEntry:
        """Record a cache hit of an earlier run's entry."""
        cached: StepEntry = {**entry, "status": "cached"}
        self.data["steps"].append(cached)
        self.write()
        return cached

    @contextlib.contextmanager
    def recording(self, entry: StepEntry, undo: Callable[[BaseException], None]) -> Iterator[float]:
        """Append ``entry``; if the body raises, mark it and call ``undo``.

        Yields the start time. The entry is marked "interrupted" (Ctrl-C, SIGTERM) or
        "failed" with the error, and ``undo`` removes whatever the step had published.
        """
        self.data["steps"].append(entry)
        started = time.perf_counter()
        try:  # from here on, an interrupt marks this entry (the window starts at the append)
            self.write()
            yield started
        except BaseException as err:
            entry["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            entry["error"] = err.message if isinstance(err, OnnxoptError) else repr(err)
            entry["ended"] = _fs.now()
            entry["duration_s"] = round(time.perf_counter() - started, 3)
            undo(err)
            raise

    def finished(self, entry: StepEntry, started: float, **fields: Any) -> None:
        """Mark ``entry`` ok (with ``fields``) and write the manifest."""
        entry["status"] = "ok"
        entry["ended"] = _fs.now()
        entry["duration_s"] = round(time.perf_counter() - started, 3)
        entry.update(cast("StepEntry", fields))
        self.write()

    def close(self, error: BaseException | None) -> None:
        """The run ended: record how, and what is on disk when it did not finish."""
        if error is not None:
            self.data["status"] = (
                "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            )
            self.data["error"] = str(error) if isinstance(error, OnnxoptError) else repr(error)
        self.data["ended"] = _fs.now()
        if self.data["status"] != "ok":
            self._carry_over()
            self._track_artifacts()
        with contextlib.suppress(OSError):
            if self.out_dir.is_dir():
                self.write()

    def _carry_over(self) -> None:
        """Keep finished entries of earlier runs that this unfinished run did not reach.

        Without this, a run interrupted before it got to (and re-used) step 3 would forget
        that step 3 had been done, and the next run would rebuild it.
        """
        reached = {(e.get("index"), e.get("key")) for e in self.data["steps"]}
        self.data["carried_over"] = [
            e
            for e in recorded(self.previous)
            if e.get("status") in ("ok", "cached") and (e.get("index"), e.get("key")) not in reached
        ]

    def _track_artifacts(self) -> None:
        names = self.inherited | owned(self.data)
        self.data["artifacts_on_disk"] = sorted(n for n in names if (self.out_dir / n).exists())

    def remove_stale(self) -> list[str]:
        """Delete artifacts of earlier runs that this run no longer uses.

        Only files this tool recorded as its own artifacts are touched, never other files.
        """
        keep = owned({"steps": self.data["steps"]})
        removed = []
        for name in sorted(self.inherited - keep):
            path = self.out_dir / name
            if not path.exists():
                continue
            if path.suffix == ".json":  # a bench report and its Markdown twin
                path.unlink()
                path.with_suffix(".md").unlink(missing_ok=True)
            else:  # a model (and its .data), a model's plot, a package's files
                remove_model(path)
            removed.append(name)
        self.data["artifacts_on_disk"] = sorted(keep)
        return removed
