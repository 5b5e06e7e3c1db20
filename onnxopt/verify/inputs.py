"""The inputs every artifact is checked on: specs, dims, generated and stored input sets."""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxopt.config import InputSpec
from onnxopt.errors import InputError
from onnxopt.graph import graph_inputs, value_info_dtype, value_info_shape

#: Value used for a symbolic dim that neither the config nor the CLI gives a value for.
DEFAULT_DIM = 1

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSet:
    """The shared inputs of a run: the main set at ``dims`` and the second-shape set.

    Every artifact is compared with its parent on ``main`` and, when there is one, on
    ``second`` (every symbolic dim changed), which proves the dynamic axes still work.
    """

    main: Inputs
    dims: dict[str, int]
    second: Inputs | None = None
    second_dims: dict[str, int] | None = None
    #: held-out samples of the user's data: when given, verification runs on every one of
    #: them (at their own shapes) instead of ``main`` and ``second``; ``main`` is the first
    samples: list[Inputs] | None = None
    #: generated inputs (no data, no inputs file): a proof of the graph, not of the task
    synthetic: bool = True
    #: state input -> the output that feeds it next (onnxopt.verify.stream): the held-out
    #: samples are then run in order, in closed loop
    state_pairs: dict[str, str] | None = None

    def sets(self) -> list[Inputs]:
        """The input sets to run: the held-out samples, or main (and second)."""
        if self.samples:
            return list(self.samples)
        return [self.main] if self.second is None else [self.main, self.second]


def specs_from_model(model: onnx.ModelProto) -> list[InputSpec]:
    """Input specs read from an ONNX graph; unnamed dynamic dims get a generated name."""
    specs = []
    for value in graph_inputs(model):
        shape: list[int | str] = []
        for axis, dim in enumerate(value_info_shape(value)):
            fixed = isinstance(dim, int) and dim > 0
            named = isinstance(dim, str) and dim not in ("?", "") and _is_ident(dim)
            if fixed or named:
                shape.append(dim)
            else:
                shape.append(f"{_ident(value.name)}_dim{axis}")
        dtype = value_info_dtype(value)
        if dtype not in (
            "float32",
            "float16",
            "float64",
            "int64",
            "int32",
            "int8",
            "uint8",
            "bool",
        ):
            raise InputError(
                f"input {value.name!r} has element type {dtype}, which onnxopt cannot generate",
                hint="supply inputs with verify.inputs_file (.npz)",
            )
        specs.append(InputSpec.model_validate({"name": value.name, "shape": shape, "dtype": dtype}))
    return specs


def _is_ident(text: str) -> bool:
    return text.replace("_", "a").replace(".", "a").isalnum() and not text[0].isdigit()


def _ident(text: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in text)
    return out if out and not out[0].isdigit() else f"x{out}"


def symbolic_dims(specs: list[InputSpec]) -> list[str]:
    """Names of symbolic dims, in order of first appearance."""
    seen: list[str] = []
    for spec in specs:
        for dim in spec.shape:
            if isinstance(dim, str) and dim not in seen:
                seen.append(dim)
    return seen


def resolve_dims(specs: list[InputSpec], given: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """Values for every symbolic dim, and the names that fell back to the default."""
    values: dict[str, int] = {}
    defaulted: list[str] = []
    for name in symbolic_dims(specs):
        if name in given:
            if given[name] < 1:
                raise InputError(f"dim {name!r} must be >= 1, found {given[name]}")
            values[name] = given[name]
        else:
            values[name] = DEFAULT_DIM
            defaulted.append(name)
    return values, defaulted


def second_dims(dims: dict[str, int], overrides: dict[str, int]) -> dict[str, int]:
    """Dim values for the second-shape check: each value + 1 unless overridden."""
    return {name: overrides.get(name, value + 1) for name, value in dims.items()}


def concrete_shape(spec: InputSpec, dims: dict[str, int]) -> tuple[int, ...]:
    """Spec shape with symbolic dims replaced by values."""
    return tuple(d if isinstance(d, int) else dims[d] for d in spec.shape)


def make_inputs(specs: list[InputSpec], dims: dict[str, int], seed: int) -> Inputs:
    """Deterministic random inputs for the given specs and dim values."""
    rng = np.random.default_rng(seed)
    arrays: Inputs = {}
    for spec in specs:
        shape = concrete_shape(spec, dims)
        if spec.dtype == "bool":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif spec.dtype.startswith(("int", "uint")):
            low, high = spec.range or (0, 8)
            arrays[spec.name] = rng.integers(int(low), max(int(high), int(low) + 1), size=shape)
            arrays[spec.name] = arrays[spec.name].astype(spec.dtype)
        elif spec.range is not None:
            low, high = spec.range
            arrays[spec.name] = rng.uniform(low, high, size=shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(size=shape).astype(spec.dtype)
    return arrays


def inputs_digest(arrays: Inputs) -> str:
    """Content hash of an input set (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def save_inputs(path: Path, arrays: Inputs) -> None:
    """Write an .npz with fixed timestamps, so equal inputs give equal bytes."""
    from onnxopt._fs import atomic_path

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def load_inputs(path: Path) -> Inputs:
    """Read an .npz of inputs (no pickles)."""
    if not path.is_file():
        raise InputError(f"inputs file not found: {path}", hint="give an existing .npz")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz file ({err})") from None
    for name, arr in arrays.items():
        if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            if bad:
                raise InputError(
                    f"{path}: array {name!r} has NaN or Inf ({bad} of {arr.size} values); "
                    "outputs compared, calibrated or timed on them mean nothing",
                    hint="replace them (numpy.nan_to_num) or drop those samples",
                )
    return arrays


def check_inputs_fit(model: onnx.ModelProto, arrays: Inputs, where: str) -> None:
    """Inputs must match the model's input names, ranks and dtypes."""
    for value in graph_inputs(model):
        if value.name not in arrays:
            raise InputError(
                f"{where}: model input {value.name!r} has no data; the input set has "
                f"{sorted(arrays)}",
                hint="use the model's input names in 'inputs' or the .npz",
            )
        arr = arrays[value.name]
        shape = value_info_shape(value)
        if shape and len(shape) != arr.ndim:
            raise InputError(
                f"{where}: input {value.name!r} expects rank {len(shape)} {shape}, "
                f"the input set gives shape {list(arr.shape)}"
            )
        for axis, (want, got) in enumerate(zip(shape, arr.shape, strict=False)):
            if isinstance(want, int) and want > 0 and want != got:
                raise InputError(
                    f"{where}: input {value.name!r} dim {axis} is fixed to {want}, "
                    f"the input set gives {got}"
                )
        dtype = value_info_dtype(value)
        if dtype != "unknown" and dtype != str(arr.dtype):
            raise InputError(
                f"{where}: input {value.name!r} expects {dtype}, the input set gives {arr.dtype}",
                hint="fix 'dtype' in the inputs spec",
            )
