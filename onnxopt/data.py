"""The user's data: samples of the model's inputs, read from .npz files, images or a callable,
and the seeded split into a calibration part and a disjoint held-out part.

The ``.npz`` layout, for every input: an array of the input's own rank holds samples stacked
on its first axis (``[N, 3, 224, 224]`` for an input ``[batch, 3, 224, 224]`` is N samples of
batch 1; with a fixed first dim of k, N / k samples); an array of rank + 1 holds one whole
sample per leading index (a recurrent state ``[2, 1, 128]`` stored as ``[N, 2, 1, 128]``, a
scalar sample rate as ``[N]``). An input whose array holds a single sample gives it to every
sample.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt._fs import user_cwd
from onnxopt.config import InputSpec
from onnxopt.errors import ConfigError, InputError, first_line
from onnxopt.verify import Inputs, load_inputs, make_inputs

log = logging.getLogger("onnxopt")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_samples(
    source: Any,
    specs: list[InputSpec],
    dims: dict[str, int],
    base_dir: Path,
    invocation_dir: Path,
    what: str = "data",
) -> list[Inputs]:
    """Samples from a data source (a DataConfig or a quantize step's CalibrationConfig).

    ``source`` has ``source`` (npz, images, callable), ``path``, ``callable``,
    ``preprocessing``, ``samples`` (at most this many) and, for images, ``seed`` (of the
    other inputs' generated values). ``what`` names the source in messages.
    """
    limit = Limit(source.samples, source.max_bytes, what)
    if source.source == "callable":
        if not source.callable:
            raise ConfigError(f"{what}: source callable needs 'callable' (module:function)")
        with user_cwd(invocation_dir):  # the callable is the user's code
            samples = _from_callable(source.callable, limit, specs, base_dir, what)
        return checked(samples, f"{what} callable {source.callable!r}", specs)
    if not source.path:
        raise ConfigError(f"{what}: source {source.source} needs a path")
    path = Path(source.path)  # absolute: the config resolved it
    if source.source == "images":
        samples = _from_images(path, source, specs, dims, limit)
    elif path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"{what} folder {path} holds no .npz files")
        samples = []
        for file in files:
            if limit.full(samples):
                break
            samples += split_arrays(load_inputs(file), specs)
    else:
        samples = split_arrays(load_inputs(path), specs, where=path.name)
    return checked(limit.cut(samples), str(path), specs)


def sample_bytes(sample: Inputs) -> int:
    """The bytes a sample's arrays hold."""
    return int(sum(np.asarray(v).nbytes for v in sample.values()))


class Limit:
    """How many samples are read: all of them (``count`` None) or at most ``count``, and
    never more than ``max_bytes`` (a warning says where the bytes ran out)."""

    def __init__(self, count: int | None, max_bytes: int, what: str) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self.what = what
        self.said = False

    def full(self, samples: list[Inputs]) -> bool:
        """Whether no further sample should be read."""
        if self.count is not None and len(samples) >= self.count:
            return True
        return sum(sample_bytes(s) for s in samples) >= self.max_bytes

    def cut(self, samples: list[Inputs]) -> list[Inputs]:
        """The samples within the count and the bytes (whole samples, at least one)."""
        kept = samples if self.count is None else samples[: self.count]
        total, n = 0, 0
        for sample in kept:
            total += sample_bytes(sample)
            if total > self.max_bytes and n:
                break
            n += 1
        if n < len(kept) and not self.said:
            self.said = True
            log.warning(
                "%s: read %d samples (%.0f MiB), the most that fit max_bytes (%.0f MiB); "
                "the rest were not read (raise max_bytes to use them)",
                self.what,
                n,
                sum(sample_bytes(s) for s in kept[:n]) / 2**20,
                self.max_bytes / 2**20,
            )
        return kept[:n]


def split_arrays(arrays: Inputs, specs: list[InputSpec], where: str = "the file") -> list[Inputs]:
    """One dict per sample from arrays laid out as the module docstring says."""
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(
            f"{where} has no arrays {missing}; it has {sorted(arrays)}",
            hint="name the arrays after the model inputs",
        )
    per_input: dict[str, list[np.ndarray]] = {}
    for spec in specs:
        arr, rank = arrays[spec.name], len(spec.shape)
        if arr.ndim == rank + 1:
            per_input[spec.name] = list(arr)
        elif arr.ndim == rank and rank > 0:
            per_input[spec.name] = _stacked(arr, spec, where)
        elif arr.ndim == rank:  # a scalar input holding one value
            per_input[spec.name] = [arr]
        else:
            raise InputError(
                f"{where}: array {spec.name!r} has shape {list(arr.shape)}; input "
                f"{spec.name!r} has rank {rank} {spec.shape}, so it takes an array of rank "
                f"{rank} (samples on its first axis) or {rank + 1} (one sample per index)",
            )
    counts = {name: len(items) for name, items in per_input.items()}
    many = {c for c in counts.values() if c != 1}
    if len(many) > 1:
        raise InputError(
            f"{where}: the arrays hold different numbers of samples {counts}",
            hint="give every input the same number of samples (or one, shared by all)",
        )
    total = many.pop() if many else 1
    return [
        {
            name: np.array(items[i if len(items) > 1 else 0], order="C")
            for name, items in per_input.items()
        }
        for i in range(total)
    ]


def _stacked(arr: np.ndarray, spec: InputSpec, where: str) -> list[np.ndarray]:
    """Samples stacked on the first axis: of its fixed size, or of 1 when it is symbolic."""
    first = spec.shape[0]
    size = first if isinstance(first, int) else 1
    if arr.shape[0] % size:
        raise InputError(
            f"{where}: array {spec.name!r} has {arr.shape[0]} rows on its first axis, input "
            f"{spec.name!r} takes {size} per sample {spec.shape}",
            hint="stack whole samples, or give one sample per leading index (rank + 1)",
        )
    return [arr[i : i + size] for i in range(0, arr.shape[0], size)]


def checked(samples: list[Inputs], where: str, specs: list[InputSpec]) -> list[Inputs]:
    """The samples, after checking they are not empty, finite, and of the inputs' ranks."""
    if not samples:
        raise InputError(f"data from {where} is empty")
    ranks = {s.name: len(s.shape) for s in specs}
    for i, sample in enumerate(samples):
        for name, arr in sample.items():
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise InputError(f"{where}: sample {i}, input {name!r} has NaN or Inf")
            if name in ranks and arr.ndim != ranks[name]:
                raise InputError(
                    f"{where}: sample {i}, input {name!r} has shape {list(arr.shape)}, "
                    f"the model expects rank {ranks[name]}"
                )
    return samples


def split(
    samples: list[Inputs], holdout: float, seed: int, contiguous: bool = False
) -> tuple[list[Inputs], list[Inputs], list[int]]:
    """A seeded split into (calibration, held-out, held-out indices), disjoint.

    ``holdout`` is a fraction (below 1) or a count; at least one sample is held out and at
    least one kept for calibration. A single sample serves both (said in a warning).
    ``contiguous``: the held-out samples are one run of consecutive ones (a stream for a
    recurrent model), at a seeded offset.
    """
    n = len(samples)
    if n == 1:
        log.warning("the data holds one sample: it is used to calibrate and to verify")
        return samples, samples, [0]
    count = round(holdout * n) if holdout < 1 else int(holdout)
    count = min(max(count, 1), n - 1)
    rng = np.random.default_rng(seed)
    if contiguous:
        start = int(rng.integers(0, n - count + 1))
        held = list(range(start, start + count))
    else:
        held = sorted(int(i) for i in rng.permutation(n)[:count])
    rest = [i for i in range(n) if i not in set(held)]
    return [samples[i] for i in rest], [samples[i] for i in held], held


def _from_callable(
    spec: str, limit: Limit, specs: list[InputSpec], base_dir: Path, what: str
) -> list[Inputs]:
    from onnxopt.factory import load_factory

    fn = load_factory(spec, base_dir)
    names = {s.name for s in specs}
    samples: list[Inputs] = []
    try:
        for item in fn():
            if not isinstance(item, dict) or set(item) != names:
                got = sorted(item) if isinstance(item, dict) else type(item).__name__
                raise InputError(
                    f"{what} callable {spec!r} yielded {got}; expected dicts with the "
                    f"inputs {sorted(names)}"
                )
            samples.append({k: np.asarray(v) for k, v in item.items()})
            if limit.full(samples):
                break
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"{what} callable {spec!r} raised {type(err).__name__}: {first_line(err)}"
        ) from None
    return limit.cut(samples)


def _from_images(
    folder: Path, source: Any, specs: list[InputSpec], dims: dict[str, int], limit: Limit
) -> list[Inputs]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        from onnxopt.errors import MissingDependencyError

        raise MissingDependencyError(
            "image data needs Pillow, which is not installed",
            hint="pip install 'onnxopt[plot]' -c constraints.txt (brings Pillow)",
        ) from None
    pre = source.preprocessing
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    spec = next((s for s in specs if s.name == (pre.input or specs[0].name)), None)
    if spec is None:
        raise ConfigError(f"preprocessing.input {pre.input!r} is not a model input")
    others = [s for s in specs if s.name != spec.name]
    samples: list[Inputs] = []
    for i, file in enumerate(files):
        if limit.full(samples):
            break
        try:
            with Image.open(file) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"cannot decode image {file.name}: {first_line(err)}") from None
        if pre.resize:
            w, h = rgb.size
            ratio = pre.resize / min(w, h)
            rgb = rgb.resize((max(1, round(w * ratio)), max(1, round(h * ratio))))
        ch, cw = pre.crop
        w, h = rgb.size
        if w < cw or h < ch:
            raise InputError(f"image {file.name} is {w}x{h} after resizing, smaller than the crop")
        left, top = (w - cw) // 2, (h - ch) // 2
        arr = np.asarray(rgb.crop((left, top, left + cw, top + ch)), dtype=np.float32)
        arr = (arr * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if pre.channels == "bgr":
            arr = arr[..., ::-1]
        if pre.layout == "nchw":
            arr = arr.transpose(2, 0, 1)
        arr = arr[None].astype(spec.dtype)
        want = [d if isinstance(d, int) else None for d in spec.shape]
        if len(want) != arr.ndim or any(
            w is not None and w != g for w, g in zip(want, arr.shape, strict=False)
        ):
            raise InputError(
                f"image preprocessing gives shape {list(arr.shape)} but input {spec.name!r} "
                f"expects {spec.shape}",
                hint="set preprocessing crop (and layout) to the model's input size",
            )
        sample = {spec.name: np.ascontiguousarray(arr)}
        if others:
            sample.update(make_inputs(others, dims, getattr(source, "seed", 0) + i))
        samples.append(sample)
    return samples
