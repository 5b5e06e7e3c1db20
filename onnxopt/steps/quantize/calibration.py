"""Calibration data for static quantization, kept apart from the verification inputs.

Sources: an ``.npz`` of ``[samples, ...]`` arrays or a folder of ``.npz`` samples, a folder
of images with preprocessing, a ``module:function`` callable (the user's code, run in the
folder the command started from), or synthetic data by explicit opt-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxopt._fs import user_cwd
from onnxopt.config import QuantizeStep
from onnxopt.errors import ConfigError, InputError, first_line
from onnxopt.steps.base import StepContext
from onnxopt.verify import Inputs, load_inputs, make_inputs


def calibration_samples(cfg: QuantizeStep, ctx: StepContext) -> list[Inputs]:
    """Calibration feeds, kept apart from the verification inputs."""
    cal = cfg.static.calibration
    if cal.source == "synthetic":
        if not cfg.static.allow_synthetic_calibration:
            raise ConfigError(
                "static quantization would calibrate on synthetic (random) data, which can "
                "pass a cosine check on noise and still break the task on real input",
                hint="give static.calibration {source: npz, path: ...}, or set "
                "static.allow_synthetic_calibration: true if random data is representative",
            )
        return [make_inputs(ctx.specs, ctx.dims, cal.seed + i) for i in range(cal.samples)]
    if cal.source == "callable":
        return _checked(_callable_samples(cal.callable, cal.samples, ctx), "callable")
    if not cal.path:
        raise ConfigError(f"static.calibration.source {cal.source} needs static.calibration.path")
    path = Path(cal.path)
    path = path if path.is_absolute() else ctx.base_dir / path
    if cal.source == "images":
        return _checked(_image_samples(path, cal, ctx), str(path))
    names = [s.name for s in ctx.specs]
    ranks = {s.name: len(s.shape) for s in ctx.specs}
    samples: list[Inputs] = []
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputError(f"calibration folder {path} holds no .npz files")
        samples = [load_inputs(f) for f in files[: cal.samples]]
    else:
        arrays = load_inputs(path)
        missing = [n for n in names if n not in arrays]
        if missing:
            raise InputError(
                f"calibration file {path.name} has no arrays {missing}; it has {sorted(arrays)}"
            )
        first = arrays[names[0]]
        if first.ndim == ranks[names[0]] + 1:
            count = min(cal.samples, first.shape[0])
            samples = [{n: arrays[n][i] for n in names} for i in range(count)]
        else:
            samples = [{n: arrays[n] for n in names}]
    return _checked(samples, str(path))


def _checked(samples: list[Inputs], where: str) -> list[Inputs]:
    if not samples:
        raise InputError(f"calibration data from {where} is empty")
    for i, sample in enumerate(samples):
        for name, arr in sample.items():
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise InputError(f"calibration sample {i}: input {name!r} has NaN or Inf")
    return samples


def _callable_samples(spec: str | None, limit: int, ctx: StepContext) -> list[Inputs]:
    if not spec:
        raise ConfigError("static.calibration.source callable needs static.calibration.callable")
    with user_cwd(ctx.invocation_dir):  # the callable is the user's code
        return _collect_samples(spec, limit, ctx)


def _collect_samples(spec: str, limit: int, ctx: StepContext) -> list[Inputs]:
    from onnxopt.factory import load_factory

    fn = load_factory(spec, ctx.base_dir)
    names = {s.name for s in ctx.specs}
    samples: list[Inputs] = []
    try:
        for item in fn():
            if not isinstance(item, dict) or set(item) != names:
                got = sorted(item) if isinstance(item, dict) else type(item).__name__
                raise InputError(
                    f"calibration callable {spec!r} yielded {got}; expected dicts with the "
                    f"inputs {sorted(names)}"
                )
            samples.append({k: np.asarray(v) for k, v in item.items()})
            if len(samples) >= limit:
                break
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"calibration callable {spec!r} raised {type(err).__name__}: {first_line(err)}"
        ) from None
    return samples


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _image_samples(folder: Path, cal: Any, ctx: StepContext) -> list[Inputs]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        from onnxopt.errors import MissingDependencyError

        raise MissingDependencyError(
            "image calibration needs Pillow, which is not installed",
            hint="pip install 'onnxopt[plot]' -c constraints.txt (brings Pillow)",
        ) from None
    pre = cal.preprocessing
    if not folder.is_dir():
        raise InputError(f"calibration image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    spec = next((s for s in ctx.specs if s.name == (pre.input or ctx.specs[0].name)), None)
    if spec is None:
        raise ConfigError(f"preprocessing.input {pre.input!r} is not a model input")
    others = [s for s in ctx.specs if s.name != spec.name]
    samples = []
    for i, file in enumerate(files[: cal.samples]):
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
            sample.update(make_inputs(others, ctx.dims, cal.seed + i))
        samples.append(sample)
    return samples


class Reader:
    """CalibrationDataReader over a list of feeds."""

    def __init__(self, samples: list[Inputs]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - used by some calibrators
        pass
