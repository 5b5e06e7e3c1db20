"""Content hashes, artifact names, atomic writes and the manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxopt.errors import InputError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
_CHUNK = 1 << 20


def sha256_file(path: Path, digest: Any = None) -> str:
    """sha256 of a file's bytes, read in chunks (also feeds ``digest`` when given)."""
    own = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            own.update(chunk)
            if digest is not None:
                digest.update(chunk)
    return own.hexdigest()


def external_data_files(model_path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (without loading the weights)."""
    import onnx
    from google.protobuf.message import DecodeError

    from onnxopt.errors import InputError
    from onnxopt.modelio import iter_tensors

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(f"{model_path}: not a valid ONNX file ({str(err)[:120]})") from None
    locations: set[str] = set()
    for tensor in iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return [model_path.parent / loc for loc in sorted(locations)]


def model_digest(model_path: Path) -> str:
    """sha256 over an ONNX file's bytes followed by those of its external data files."""
    digest = hashlib.sha256()
    sha256_file(model_path, digest)
    for data in external_data_files(model_path):
        digest.update(data.name.encode())
        sha256_file(data, digest)
    return digest.hexdigest()


def model_size(model_path: Path) -> int:
    """Bytes on disk of an ONNX file and its external data."""
    return model_path.stat().st_size + sum(
        p.stat().st_size for p in external_data_files(model_path) if p.exists()
    )


def stable_json(value: Any) -> str:
    """Canonical JSON text used for hashing configs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest_of(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    return hashlib.sha256(stable_json(list(parts)).encode()).hexdigest()


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


def _temp_beside(final: Path, suffix: str) -> Path:
    """Create an empty temporary file beside ``final`` (making its folder); clear error if not."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as err:
        raise InputError(
            f"cannot write {final} ({err.strerror})", hint="choose a writable folder"
        ) from None
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only on success."""
    tmp = _temp_beside(final, ".tmp")
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_writable(final: Path) -> None:
    """Fail now, with a clear error, if ``final`` could not be written later.

    Used before long measurements so that an unwritable report path is found in a second,
    not after minutes of benchmarking. Creates the parent folder if needed.
    """
    if final.is_dir():
        raise InputError(f"{final} is a folder; give a file path")
    _temp_beside(final, ".probe").unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def file_mode() -> int:
    """Mode for new files, honouring the umask (temp files start as 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


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
