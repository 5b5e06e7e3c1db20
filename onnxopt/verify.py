"""The shared input set and output comparison with precision-aware tolerances."""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.config import InputSpec, Tolerance
from onnxopt.errors import InputError
from onnxopt.modelio import graph_inputs, value_info_dtype, value_info_shape

#: Default (atol, rtol, min_cosine) per step type: fp32 graph rewrites are held tight;
#: reduced precision is judged by cosine (and top-1 agreement when asked), not elementwise.
DEFAULT_TOLERANCE: dict[str, tuple[float, float, float]] = {
    "export": (1e-4, 1e-3, 0.9999),
    "simplify": (1e-4, 1e-3, 0.9999),
    # compared with the parent run at the conversion's own settings: the same kernels
    "package": (1e-4, 1e-3, 0.9999),
    "quantize:fp16": (math.inf, math.inf, 0.999),
    "quantize:dynamic": (math.inf, math.inf, 0.99),
    "quantize:static": (math.inf, math.inf, 0.99),
    "quantize:int4": (math.inf, math.inf, 0.98),
    # Pruning changes the function on purpose: no bound unless the config sets a budget.
    "prune": (math.inf, math.inf, -1.0),
}

#: Value used for a symbolic dim that neither the config nor the CLI gives a value for.
DEFAULT_DIM = 1

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Tol:
    """Resolved tolerance of one comparison."""

    atol: float
    rtol: float
    min_cosine: float
    min_top1: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        """Plain dict for reports (unchecked bounds as None)."""
        return {
            "atol": None if math.isinf(self.atol) else self.atol,
            "rtol": None if math.isinf(self.rtol) else self.rtol,
            "min_cosine": self.min_cosine,
            "min_top1_agreement": self.min_top1,
        }


def resolve_tolerance(step_type: str, override: Tolerance, mode: str | None = None) -> Tol:
    """The step's default tolerance with the config's overrides applied."""
    atol, rtol, cos = DEFAULT_TOLERANCE[f"{step_type}:{mode}" if mode else step_type]
    return Tol(
        atol=override.atol if override.atol is not None else atol,
        rtol=override.rtol if override.rtol is not None else rtol,
        min_cosine=override.min_cosine if override.min_cosine is not None else cos,
        min_top1=override.min_top1_agreement,
    )


# ---------------------------------------------------------------- input specs


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
    from onnxopt.artifacts import atomic_path

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


# ---------------------------------------------------------------- comparison


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64 = a.astype(np.float64).ravel()
    b64 = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a64, b64) / (na * nb))


def compare_outputs(
    reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str], tol: Tol
) -> dict[str, Any]:
    """Compare candidate outputs to the reference, output by output.

    Returns:
        ``{"passed": bool, "outputs": [{name, max_abs_err, max_rel_err, cosine, passed, ...}]}``
    """
    if len(reference) != len(candidate):
        return {
            "passed": False,
            "outputs": [],
            "problem": f"output count differs: {len(reference)} vs {len(candidate)}",
        }
    rows = []
    for name, ref, got in zip(names, reference, candidate, strict=True):
        row: dict[str, Any] = {"name": name, "shape": list(got.shape)}
        if ref.shape != got.shape:
            row.update(passed=False, problem=f"shape {list(got.shape)} != {list(ref.shape)}")
            rows.append(row)
            continue
        if ref.dtype.kind in "fc" or got.dtype.kind in "fc":
            ref64 = ref.astype(np.float64)
            got64 = got.astype(np.float64)
            ref_nan, got_nan = np.isnan(ref64), np.isnan(got64)
            if np.any(got_nan & ~ref_nan):
                row.update(passed=False, problem="NaN where the reference has numbers")
                rows.append(row)
                continue
            if np.any(np.isinf(got64) & np.isfinite(ref64)):
                row.update(passed=False, problem="inf where the reference is finite (overflow?)")
                rows.append(row)
                continue
            ok = ~(ref_nan | got_nan)
            diff = np.abs(got64[ok] - ref64[ok])
            max_abs = float(diff.max()) if diff.size else 0.0
            rel = diff / np.maximum(np.abs(ref64[ok]), 1e-12)
            max_rel = float(rel.max()) if rel.size else 0.0
            cosine = _cosine(np.where(ok, ref64, 0), np.where(ok, got64, 0))
            if math.isinf(tol.atol) or math.isinf(tol.rtol):
                within = True  # elementwise bounds not checked (inf * 0 would be NaN)
            else:
                within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref64[ok])))
            row.update(max_abs_err=max_abs, max_rel_err=max_rel, cosine=cosine)
            top1_ok = True
            if ref.ndim == 2 and ref.shape[1] > 1:
                top1 = float(np.mean(np.argmax(ref64, axis=1) == np.argmax(got64, axis=1)))
                row["top1_agreement"] = top1
                top1_ok = tol.min_top1 is None or top1 >= tol.min_top1
                if ref.shape[1] > 5:
                    top5 = np.argsort(-got64, axis=1)[:, :5]
                    hits = (top5 == np.argmax(ref64, axis=1)[:, None]).any(axis=1)
                    row["top5_agreement"] = float(np.mean(hits))
            row["passed"] = within and cosine >= tol.min_cosine and top1_ok
            if not within:
                row["problem"] = (
                    f"max abs error {max_abs:.3g} beyond atol {tol.atol} + rtol {tol.rtol}"
                )
            elif cosine < tol.min_cosine:
                row["problem"] = f"cosine {cosine:.6f} below {tol.min_cosine}"
            elif not top1_ok:
                row["problem"] = f"top-1 agreement {row['top1_agreement']:.4f} below {tol.min_top1}"
        else:
            mismatched = int(np.count_nonzero(ref != got))
            row.update(mismatched=mismatched, passed=mismatched == 0)
            if mismatched:
                row["problem"] = f"{mismatched} of {ref.size} values differ"
        rows.append(row)
    return {"passed": all(r["passed"] for r in rows), "outputs": rows}


def failure_text(result: dict[str, Any]) -> str:
    """One-line summary of the first failing output."""
    if result.get("problem"):
        return str(result["problem"])
    for row in result["outputs"]:
        if not row["passed"]:
            return f"output {row['name']!r}: {row.get('problem', 'mismatch')}"
    return "mismatch"
