"""ONNX files on disk: load, check, save, publish, move and copy them with their external
data (models over 2 GB), their digests and sizes. What is inside a graph: :mod:`onnxopt.graph`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxopt._fs import file_mode, sha256_file
from onnxopt.errors import InputError, first_line
from onnxopt.graph import external_info, external_locations, iter_tensors, tensor_bytes

TWO_GB = 2**31

# ---------------------------------------------------------------- one parse per file

#: graph-only parses (weights that live in the file included), by the file's identity;
#: models whose .onnx file is larger are parsed each time, so no copy of their weights stays
_PARSED: OrderedDict[tuple[Any, ...], onnx.ModelProto] = OrderedDict()
_CHECKED: set[tuple[Any, ...]] = set()
_CACHED_FILE_LIMIT = 64 << 20
_CACHED_FILES = 8


def _identity(file: Path) -> tuple[Any, ...]:
    """The file's identity: device and inode (the same file when renamed into place), size and
    modification time (changed by every rewrite)."""
    st = file.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_graph(file: Path) -> onnx.ModelProto:
    """The file's ModelProto without its external data (no checks: for files onnxopt wrote),
    parsed once while the file is unchanged; callers get their own copy to modify."""
    key = _identity(file)
    cached = _PARSED.get(key)
    if cached is None:
        cached = onnx.load(str(file), load_external_data=False)
        if key[2] <= _CACHED_FILE_LIMIT:
            _PARSED[key] = cached
            while len(_PARSED) > _CACHED_FILES:
                _PARSED.popitem(last=False)
        else:
            return cached
    else:
        _PARSED.move_to_end(key)
    model = onnx.ModelProto()
    model.CopyFrom(cached)
    return model


def _check_path(file: Path) -> None:
    """``onnx.checker`` by path (external data looked up beside the file, not read), once
    while the file is unchanged."""
    key = _identity(file)
    if key not in _CHECKED:
        onnx.checker.check_model(str(file))
        if len(_CHECKED) > 1024:  # a long-lived process: forget the oldest run's files
            _CHECKED.clear()
        _CHECKED.add(key)


def external_data_files(model_path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (without loading the weights)."""
    try:
        model = load_graph(model_path)
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


def _check_external_locations(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            target = (base / entry.value).resolve()
            if Path(entry.value).is_absolute() or base not in target.parents:
                raise InputError(
                    f"{path}: external data location {entry.value!r} of tensor "
                    f"{tensor.name!r} points outside the model's folder; refusing to read it",
                    hint="keep .data files beside the .onnx file",
                )
            if not target.is_file():
                raise InputError(
                    f"{path}: external data file {entry.value!r} (tensor {tensor.name!r}) "
                    "is missing",
                    hint="copy the .data file next to the model",
                )


def load_model(
    path: str | Path, *, load_weights: bool = True, produced_by: str | None = None
) -> onnx.ModelProto:
    """Load an ONNX model with clear errors for every way the file can be wrong.

    Args:
        path: the .onnx file.
        load_weights: also read external data into memory.
        produced_by: the file is onnxopt's own intermediate, written by this library (e.g.
            "ONNX Runtime's dynamic quantizer"): a problem with it is a failure of that
            library, not the user's input, and the message names the library, not the path.

    Raises:
        InputError: missing, empty, not ONNX, or external data missing/unsafe.
        StepError: the same, for a file ``produced_by`` a library.
    """
    if produced_by is None:
        return _load_model(Path(path), load_weights)
    try:
        return _load_model(Path(path), load_weights)
    except InputError as err:
        from onnxopt.errors import StepError

        problem = err.message.replace(f"{path}: ", "").replace(str(path), Path(path).name)
        raise StepError(
            f"{produced_by} wrote an invalid model ({problem})",
            hint="this is a failure of that library, not of your model; try another mode or "
            "exclude the failing node with nodes_to_exclude",
        ) from None


def _load_model(file: Path, load_weights: bool) -> onnx.ModelProto:
    if not file.exists():
        raise InputError(f"model file not found: {file}", hint="check the path")
    if not file.is_file():
        raise InputError(f"expected an .onnx file, found a directory: {file}")
    if file.stat().st_size == 0:
        raise InputError(f"{file}: the file is empty (0 bytes)", hint="re-export the model")
    try:
        model = load_graph(file)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(
            f"{file}: not a valid ONNX file (protobuf parse failed: {str(err)[:120]})",
            hint="check that the file is complete and really an ONNX model",
        ) from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InputError(
            f"{file}: parsed as protobuf but holds no ONNX graph",
            hint="check that the file is really an ONNX model",
        )
    _check_external_locations(model, file)
    try:
        _check_path(file)
    except (onnx.checker.ValidationError, UnicodeError, ValueError, RuntimeError) as err:
        raise InputError(
            f"{file}: not a valid ONNX model (onnx.checker: {first_line(err, 200)})",
            hint="check that the file is complete; re-export it if it was edited or damaged",
        ) from None
    if load_weights:
        try:
            onnx.load_external_data_for_model(model, str(file.parent))
        except (OSError, ValueError, RuntimeError) as err:
            raise InputError(f"{file}: cannot read external data ({err})") from None
    return model


def check_model(path: Path, produced_by: str = "onnxopt") -> None:
    """Run ``onnx.checker`` on an artifact we wrote (path-based, so models over 2 GB work).

    Input models are checked by :func:`load_model`. An invalid artifact is a failure of the
    tool that wrote it (exit 1), never the user's: the message names ``produced_by`` and the
    artifact's file name only (never a scratch path).

    Raises:
        StepError: the artifact is invalid.
    """
    from onnxopt.errors import StepError

    try:
        _check_path(path)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        raise StepError(
            f"{produced_by} wrote an invalid model {path.name} "
            f"(onnx.checker: {first_line(err, 200)})",
            hint="this is a failure of onnxopt or a library it calls, not of your model; "
            "please report it",
        ) from None


def save_model(model: onnx.ModelProto, final: Path, *, external_data: str = "auto") -> Path:
    """Save atomically: write into a temp folder beside ``final``, then rename into place.

    With external data the weights go to ``<final name>.data`` beside it. The in-memory
    model may be modified (tensors moved to external data).

    Args:
        model: the model to save.
        final: destination .onnx path.
        external_data: ``auto`` (only over 2 GB), ``always`` or ``never``.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    use_external = external_data == "always" or (
        external_data == "auto" and tensor_bytes(model) + 64 * 2**20 >= TWO_GB
    )
    if external_data == "never" and tensor_bytes(model) >= TWO_GB:
        raise InputError(
            f"{final.name}: weights exceed 2 GB and external_data is 'never'",
            hint="set external_data: auto",
        )
    data_name = final.name + ".data"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        tmp_model = tmp_dir / final.name
        try:
            if use_external:
                onnx.save_model(
                    model,
                    str(tmp_model),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(model, str(tmp_model))
        except OSError as err:
            from onnxopt.errors import StepError

            raise StepError(
                f"cannot write {final.name} in {final.parent}: {err.strerror or err}",
                hint="free disk space or choose another output folder",
            ) from None
        if (tmp_dir / data_name).exists():
            os.replace(tmp_dir / data_name, final.parent / data_name)
        else:
            with contextlib.suppress(FileNotFoundError):
                (final.parent / data_name).unlink()
        os.replace(tmp_model, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final


def remove_model(path: Path) -> None:
    """Delete an ONNX file and its ``.data`` companion if present."""
    for p in (path, path.with_name(path.name + ".data")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def publish(tmp: Path, final: Path) -> None:
    """Move a finished model (and its ``.data`` file) from a scratch folder into place.

    The .data file goes first, the .onnx last, so a reader never finds a final-looking
    .onnx whose weights are missing. File modes follow the umask.
    """
    mode = file_mode()
    data = tmp.with_name(tmp.name + ".data")
    final_data = final.with_name(final.name + ".data")
    if data.exists():
        os.chmod(data, mode)
        os.replace(data, final_data)
    else:
        with contextlib.suppress(FileNotFoundError):
            final_data.unlink()
    os.chmod(tmp, mode)
    os.replace(tmp, final)


def move_model(src: Path, dst: Path) -> None:
    """Move a model saved by :func:`save_model` (and its .data file) to ``dst``.

    The weights file is renamed to ``<dst name>.data`` and the locations recorded in the
    (small) .onnx file are rewritten, so weights are never loaded or copied.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    src_data = src.with_name(src.name + ".data")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        staged = tmp_dir / dst.name
        if src_data.exists():
            model = load_graph(src)
            for tensor in iter_tensors(model):
                for entry in tensor.external_data:
                    if entry.key == "location" and entry.value == src_data.name:
                        entry.value = staged.name + ".data"
            onnx.save_model(model, str(staged))
            os.replace(src_data, tmp_dir / (staged.name + ".data"))
        else:
            shutil.copyfile(src, staged)
        publish(staged, dst)
        src.unlink()
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def copy_model(src: Path, dst: Path) -> None:
    """Copy a model that onnxopt did not write (a user's file) to ``dst``; ``src`` is only read.

    A model without external data is copied byte for byte. External tensors, wherever the
    source keeps them (any file names, several files), are carried one tensor at a time into
    ``<dst name>.data``, so the copy has an artifact's layout and never shares or overwrites a
    file of the source's.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        staged = tmp_dir / dst.name
        model = load_graph(src)
        if external_locations(model):
            with ExternalWriter(tmp_dir, staged.name + ".data") as writer:
                for tensor in iter_tensors(model):
                    if tensor.data_location == onnx.TensorProto.EXTERNAL:
                        writer.copy(tensor, src.parent)
            onnx.save_model(model, str(staged))
        else:
            shutil.copyfile(src, staged)
        publish(staged, dst)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def read_tensor(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """One tensor's values, read from its external-data file in ``folder`` when it has one."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = external_info(tensor)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    array = np.fromfile(
        folder / info["location"], dtype=dtype, count=count, offset=int(info.get("offset", 0))
    )
    return array.reshape(tuple(tensor.dims))


class ExternalWriter:
    """Appends tensors to one external-data file, one tensor in memory at a time.

    Used to rewrite the weights of models over 2 GB file to file: ``place`` stores new bytes,
    ``copy`` carries an unchanged external tensor across from the source folder.
    """

    def __init__(self, folder: Path, location: str) -> None:
        self.location = location
        self._file = open(folder / location, "wb")  # noqa: SIM115 - closed by __exit__

    def __enter__(self) -> ExternalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def place(self, tensor: onnx.TensorProto, raw: bytes) -> None:
        """Write ``raw`` as ``tensor``'s data and point the tensor at it."""
        offset = self._file.tell()
        self._file.write(raw)
        del tensor.external_data[:]
        for key, value in (("location", self.location), ("offset", str(offset)),
                           ("length", str(len(raw)))):  # fmt: skip
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL

    def copy(self, tensor: onnx.TensorProto, folder: Path) -> None:
        """Carry an external tensor's bytes across from the model folder ``folder``.

        Tensors under 1 KiB are stored inline, as ``onnx.save_model`` does by default (ONNX
        Runtime's shape inference cannot read e.g. Reshape shapes or ReduceSum axes from
        external data).
        """
        info = external_info(tensor)
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"])) if "length" in info else f.read()
        if len(raw) >= 1024:
            self.place(tensor, raw)
            return
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        tensor.raw_data = raw
