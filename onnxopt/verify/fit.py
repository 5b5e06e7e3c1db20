"""Generated inputs that fit the model when there is no data.

- Integer inputs that reach a lookup table as its indices (``Gather`` on a constant table,
  ``EmbedLayerNormalization``), through ops that keep their values (Cast, Unsqueeze,
  Reshape, ...), are drawn within the table's rows; masks are all ones.
- A symbolic dim without a value gets one at which the model runs and that exercises it:
  the usual meaning of its name first (a batch 1, a sequence 128, an image side 224, other
  dims 64), then growing sizes, tried on the model itself (bounded).
- An input whose valid values cannot be inferred (a scalar sample rate, a shape-like
  tensor) that makes the model fail is named, before any work, with the flag that fixes it.

Every choice is recorded with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import InputSpec, Target
from onnxopt.errors import InputError, OnnxoptError, first_line
from onnxopt.graph import iter_graphs
from onnxopt.verify.inputs import make_inputs, resolve_dims

log = logging.getLogger("onnxopt")

#: ops that pass an integer tensor's values on unchanged (or rearranged)
VALUE_OPS = {
    "Cast",
    "Identity",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Transpose",
    "Expand",
    "Tile",
    "Slice",
    "Concat",
}
BATCH = re.compile(r"batch|^(n|b|bs|bsz)$|_dim0$", re.I)
SPATIAL = re.compile(r"height|width|^(h|w|ih|iw|in_h|in_w|size|image_size)$", re.I)
SEQUENCE = re.compile(r"seq|len|token|time|frame|step|word|sent|^(t|l|s)$", re.I)
#: the sizes tried, after the first guess, when the model does not run at it
GROWING = (32, 128, 256, 512, 1024, 16000)


@dataclass
class Fit:
    """The inputs' specs with inferred ranges, the dims' values, and why."""

    specs: list[InputSpec]
    dims: dict[str, int]
    #: dim name -> why it got its value (only the dims no one gave a value)
    defaulted: dict[str, str] = field(default_factory=dict)
    #: input name -> why its values were drawn from their range
    ranges: dict[str, str] = field(default_factory=dict)


def index_ranges(model: onnx.ModelProto, specs: list[InputSpec]) -> dict[str, tuple[int, str]]:
    """Integer inputs used as lookup indices: input name -> (rows of the table, why)."""
    graph = model.graph
    consts = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    consts[node.output[0]] = list(attr.t.dims)
    users: dict[str, list[onnx.NodeProto]] = {}
    for sub in iter_graphs(graph):
        for node in sub.node:
            for name in node.input:
                users.setdefault(name, []).append(node)
    found: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if not spec.dtype.startswith(("int", "uint")) or spec.range is not None:
            continue
        rows = _rows_reached(spec.name, users, consts)
        if rows:
            table, count = min(rows, key=lambda r: r[1])
            found[spec.name] = (count, f"indices into {table} ({count} rows)")
    return found


def _rows_reached(
    name: str, users: dict[str, list[onnx.NodeProto]], consts: dict[str, list[int]]
) -> list[tuple[str, int]]:
    """(table, rows) of every lookup that the value ``name`` reaches as its indices."""
    seen, todo, rows = {name}, [name], []
    while todo:
        value = todo.pop()
        for node in users.get(value, []):
            where = f"{node.op_type} {node.name or node.output[0]!r}"
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == value:
                shape = consts.get(node.input[0])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if shape and -len(shape) <= axis < len(shape):
                    rows.append((where, int(shape[axis])))
            elif node.op_type == "EmbedLayerNormalization":
                tables = {0: 2, 1: 4}  # input_ids -> word embedding, segment_ids -> segment
                for index, table in tables.items():
                    if len(node.input) > table and node.input[index] == value:
                        shape = consts.get(node.input[table])
                        if shape:
                            rows.append((where, int(shape[0])))
            elif node.op_type in VALUE_OPS and node.input and node.input[0] == value:
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        todo.append(out)
    return rows


def first_guess(name: str) -> tuple[int, str]:
    """A dim's value from the usual meaning of its name, and the reason."""
    if BATCH.search(name):
        return 1, "a batch dim: 1"
    if SPATIAL.search(name):
        return 224, "an image side: 224"
    if SEQUENCE.search(name):
        return 128, "a sequence or time dim: 128"
    return 64, "a dim of unknown meaning: 64"


def fit_ranges(
    model_path: Path | None, specs: list[InputSpec]
) -> tuple[list[InputSpec], dict[str, str]]:
    """The specs with the ranges of lookup indices and masks; input name -> why."""
    fitted = list(specs)
    ranges: dict[str, str] = {}
    if model_path is not None:
        from onnxopt.modelio import load_model

        found = index_ranges(load_model(model_path, load_weights=False), specs)
        for i, spec in enumerate(fitted):
            if spec.name in found:
                count, why = found[spec.name]
                fitted[i] = spec.model_copy(update={"range": (0, count)})
                ranges[spec.name] = why
    for i, spec in enumerate(fitted):
        is_int = spec.dtype.startswith(("int", "uint")) or spec.dtype == "bool"
        if is_int and spec.range is None and "mask" in spec.name.lower():
            fitted[i] = spec.model_copy(update={"range": (1, 2)})
            ranges[spec.name] = "a mask: all ones"
    return fitted, ranges


def fit_inputs(
    model_path: Path | None,
    specs: list[InputSpec],
    given: dict[str, int],
    seed: int = 0,
    target: Target | None = None,
) -> Fit:
    """Ranges and dims for generated inputs that the model accepts (see the module doc).

    ``model_path`` None (a PyTorch source): only the names are used, nothing is tried.

    Raises:
        InputError: the model runs at no tried size, or fails on a value-like input; the
            message names the inputs and the flags (--dim, --value, --range) that fix it.
    """
    fitted, ranges = fit_ranges(model_path, specs)
    dims, unset = resolve_dims(fitted, given)
    defaulted: dict[str, str] = {}
    for name in unset:
        dims[name], defaulted[name] = first_guess(name)
    # a trial on the model itself, when a guess could be wrong: a dim that is not a batch,
    # or an input whose values no lookup bounds (a scalar, a shape-like vector)
    unsure = [n for n in defaulted if dims[n] != 1] or _value_like(fitted, ranges)
    if model_path is not None and unsure:
        with trials():
            _try_sizes(model_path, fitted, dims, defaulted, ranges, seed, target)
    return Fit(specs=fitted, dims=dims, defaulted=defaulted, ranges=ranges)


def fit_second_dims(
    model_path: Path | None,
    specs: list[InputSpec],
    dims: dict[str, int],
    overrides: dict[str, int],
    seed: int = 0,
    target: Target | None = None,
) -> tuple[dict[str, int] | None, str]:
    """Dims for the second-shape check at which the source model itself runs, and why.

    Each dim + 1 first, then each dim doubled (a model that frames its input needs a
    multiple); dims given in ``overrides`` are kept as given. None when the source runs at
    neither: then the check is skipped, with the reason, rather than failing the step for
    a shape the model never accepted.
    """
    if model_path is None or set(dims) <= set(overrides):
        return {n: overrides.get(n, v + 1) for n, v in dims.items()}, "as given"
    problem = ""
    with trials():
        for how, step in (("each dim + 1", lambda v: v + 1), ("each dim doubled", lambda v: 2 * v)):
            trial = {n: overrides.get(n, step(v)) for n, v in dims.items()}
            problem = _run(model_path, specs, trial, seed + 1, target) or ""
            if not problem:
                return trial, how
    return None, f"the source model runs neither at each dim + 1 nor doubled ({problem})"


def _value_like(specs: list[InputSpec], ranges: dict[str, str]) -> list[str]:
    """Inputs whose valid values the graph does not tell: scalars and vectors no lookup or
    given range bounds."""
    return [s.name for s in specs if s.range is None and s.name not in ranges and len(s.shape) <= 1]


def _try_sizes(
    path: Path,
    specs: list[InputSpec],
    dims: dict[str, int],
    defaulted: dict[str, str],
    ranges: dict[str, str],
    seed: int,
    target: Target | None,
) -> None:
    """Keep the first guesses if the model runs at them; else try growing sizes; else say
    which inputs need a value or a size."""
    problem = _run(path, specs, dims, seed, target)
    if problem is None:
        return
    growable = [n for n in defaulted if dims[n] != 1 or not BATCH.search(n)]
    for size in GROWING if growable else ():
        trial = {**dims, **{n: size for n in growable}}
        if _run(path, specs, trial, seed, target) is None:
            for n in growable:
                dims[n] = size
                defaulted[n] = f"the model did not run at its first guess; runs at {size}"
            return
    raise _unfit_error(specs, dims, problem, ranges, tried=bool(growable))


def _run(
    path: Path, specs: list[InputSpec], dims: dict[str, int], seed: int, target: Target | None
) -> str | None:
    """None when the model runs on generated inputs at ``dims``, else what went wrong."""
    from onnxopt.runtime import make_session, run_session

    try:
        session = _session(path, target, make_session)
        run_session(session, make_inputs(specs, dims, seed), path.name)
    except OnnxoptError as err:
        return err.message
    except Exception as err:  # onnxruntime raises its own exception types
        return first_line(err)
    return None


_SESSIONS: dict[tuple[str, Any], Any] = {}
_OPEN = [0]  # how many trials() blocks are open


def _session(path: Path, target: Target | None, make: Any) -> Any:
    """One session per model file for all the trials (its creation dominates their cost)."""
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _SESSIONS:
        _SESSIONS.clear()
        _SESSIONS[key] = make(path, target, level="basic")
    return _SESSIONS[key]


@contextlib.contextmanager
def trials() -> Iterator[None]:
    """Trial runs share one session until the outermost block ends, which drops it (a large
    model's weights): a caller that fits the dims and then the second-shape dims wraps both
    and the model's session is made once."""
    _OPEN[0] += 1
    try:
        yield
    finally:
        _OPEN[0] -= 1
        if not _OPEN[0]:
            _SESSIONS.clear()


def _unfit_error(
    specs: list[InputSpec], dims: dict[str, int], problem: str, ranges: dict[str, str], tried: bool
) -> InputError:
    valued = _value_like(specs, ranges)
    shown = ", ".join(f"{k}={v}" for k, v in dims.items()) or "none"
    if valued:
        flags = " ".join(f"--value {n}=NUMBER" for n in valued)
        return InputError(
            f"the model fails on generated inputs ({problem}); the values of {valued} cannot "
            f"be inferred from the graph (dims: {shown})",
            hint=f"give them: {flags} (or --range NAME=LO,HI, or --data with real samples)",
        )
    sizes = f" and at {', '.join(map(str, GROWING))}" if tried else ""
    return InputError(
        f"the model fails on generated inputs at dims {shown}{sizes}: {problem}",
        hint="give the dims (--dim NAME=INT) or real samples (--data)",
    )
