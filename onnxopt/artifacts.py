"""Artifact names, tool versions and reading the manifest."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1


def artifact_name(index: int, step: str, key: str) -> str:
    """``NN-<step>-<hash8>.onnx``."""
    return f"{index:02d}-{step}-{key[:8]}.onnx"


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


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


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
