"""Load, check, save and summarise ONNX models, external data (> 2 GB) included."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxopt._fs import file_mode, sha256_file
from onnxopt.errors import InputError, first_line

TWO_GB = 2**31
Dim = int | str


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from iter_graphs(sub)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every initializer and Constant-node tensor, subgraphs included."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t


def external_data_files(model_path: Path) -> list[Path]:
    """The external data files an ONNX file refers to (without loading the weights)."""
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
        model = onnx.load(str(file), load_external_data=False)
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
    try:  # by path: external data is looked up beside the file, not read
        onnx.checker.check_model(str(file))
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
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        raise StepError(
            f"{produced_by} wrote an invalid model {path.name} "
            f"(onnx.checker: {first_line(err, 200)})",
            hint="this is a failure of onnxopt or a library it calls, not of your model; "
            "please report it",
        ) from None


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by weights (initializers and Constant tensors)."""
    total = 0
    for tensor in iter_tensors(model):
        total += _tensor_nbytes(tensor)
    return total


def _tensor_nbytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return count * itemsize


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
            model = onnx.load(str(src), load_external_data=False)
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
        model = onnx.load(str(src), load_external_data=False)
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


def value_info_shape(value: onnx.ValueInfoProto) -> list[Dim]:
    """Shape as ints and names; '?' for an unknown dim."""
    t = value.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return []
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in t.tensor_type.shape.dim
    ]


def value_info_dtype(value: onnx.ValueInfoProto) -> str:
    """numpy-style dtype of a tensor value; e.g. 'sequence<map<int64,float32>>' otherwise."""
    return _type_text(value.type)


def _elem_text(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _type_text(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return _elem_text(t.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"sequence<{_type_text(t.sequence_type.elem_type)}>"
    if kind == "map_type":
        key = _elem_text(t.map_type.key_type)
        return f"map<{key},{_type_text(t.map_type.value_type)}>"
    if kind == "optional_type":
        return f"optional<{_type_text(t.optional_type.elem_type)}>"
    return kind or "unknown"


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def io_table(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs with shapes and dtypes."""
    return {
        "inputs": [
            {"name": v.name, "shape": value_info_shape(v), "dtype": value_info_dtype(v)}
            for v in graph_inputs(model)
        ],
        "outputs": [
            {"name": v.name, "shape": value_info_shape(v), "dtype": value_info_dtype(v)}
            for v in model.graph.output
        ],
    }


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            counts[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Node count, op histogram, parameter count and bytes."""
    hist = op_histogram(model)
    params = 0
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        params += count
    return {
        "nodes": sum(hist.values()),
        "ops": hist,
        "parameters": params,
        "weight_bytes": tensor_bytes(model),
    }


def outer_scope_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself: values of enclosing graphs."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for node in graph.node for o in node.output}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(node.input)
        for sub in _subgraphs(node):
            reads |= outer_scope_reads(sub)
    reads |= {o.name for o in graph.output}
    return {name for name in reads if name and name not in defined}


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder a graph's nodes so every node comes after the producers of its inputs.

    A node with subgraphs (If, Loop, Scan) also depends on the enclosing values its bodies
    read, and the bodies are sorted too. Names that no node produces (graph inputs,
    initializers, outer-scope values) count as available from the start; among ready nodes
    the original order is kept. Raises InputError on a cycle.
    """
    import heapq

    for node in graph.node:
        for sub in _subgraphs(node):
            topological_sort(sub)
    produced_by: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name:
                produced_by[name] = i
    waiting = [0] * len(graph.node)
    users: dict[int, list[int]] = {}
    for i, node in enumerate(graph.node):
        reads = set(node.input)
        for sub in _subgraphs(node):
            reads |= outer_scope_reads(sub)
        deps = {produced_by[n] for n in reads if n in produced_by and produced_by[n] != i}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise InputError(f"graph {graph.name!r} has a cycle; cannot order its nodes")
    nodes = [graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn top-level ``Constant`` nodes holding tensors into initializers; return how many.

    Exporters such as Paddle's and spox keep weights in Constant nodes, which ONNX Runtime's
    quantizers do not accept ("Expected ... to be an initializer").
    """
    graph = model.graph
    keep, moved = [], 0
    for node in graph.node:
        attr = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in attr:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr["value"].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """A tensor's external-data entries (location, offset, length) as a dict."""
    return {e.key: e.value for e in tensor.external_data}


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


def external_locations(model: onnx.ModelProto) -> set[str]:
    """The external-data file names (relative locations) a model's tensors refer to."""
    return {
        entry.value
        for tensor in iter_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
