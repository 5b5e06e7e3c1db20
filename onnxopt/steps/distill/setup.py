"""What a distill run starts from: the teacher's runner, the outputs the loss covers, the
training and validation samples and the augmentation hook (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.config.distill import DistillStep
from onnxopt.errors import ConfigError, InputError, first_line
from onnxopt.steps.base import StepContext
from onnxopt.verify import Inputs, make_inputs

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def output_map(student: list[str], teacher: onnx.ModelProto) -> dict[str, str]:
    """Student output -> the teacher output it learns: by name, else by position."""
    names = [o.name for o in teacher.graph.output]
    if set(student) <= set(names):
        return {n: n for n in student}
    if len(names) == len(student):
        return dict(zip(student, names, strict=True))
    raise InputError(
        f"the teacher's outputs {names} do not match the student's {student} (by name or by count)",
        hint="give a teacher with the same outputs as the student",
    )


def loss_outputs(cfg: DistillStep, model: onnx.ModelProto, outputs: list[str]) -> list[str]:
    """The outputs the loss covers: ``outputs``, else the judged ones, else every float one."""
    chosen = cfg.outputs or cfg.tolerance.outputs
    if chosen:
        unknown = [n for n in chosen if n not in outputs]
        if unknown:
            raise ConfigError(f"outputs {unknown} are not outputs of the student; it has {outputs}")
        return list(chosen)
    floats = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in _FLOAT]
    if not floats:
        raise InputError(f"the student has no float output to learn ({outputs})")
    return floats


def training_samples(
    cfg: DistillStep, ctx: StepContext
) -> tuple[list[Inputs], list[Inputs], dict[str, Any]]:
    """The training samples, the validation samples (for early stopping and choosing the
    best weights) and the facts the report records about them."""
    if ctx.calibration:
        pool, source = list(ctx.calibration), "data"
    elif cfg.allow_synthetic:
        seeds = range(cfg.seed + 100_000, cfg.seed + 100_000 + cfg.synthetic_samples)
        pool, source = [make_inputs(ctx.specs, ctx.dims, s) for s in seeds], "synthetic"
    else:
        raise InputError(
            "distill trains on samples of the model's inputs and this run has none",
            hint="give data (--data FILE.npz, a folder, images or module:function; unlabelled "
            "is enough), or allow_synthetic: true (--allow-synthetic) if random inputs are "
            "representative",
        )
    if len(pool) < 2:
        raise InputError(
            f"distill needs at least 2 training samples (one for validation); the data's "
            f"calibration part has {len(pool)}",
            hint="give more samples, or a smaller data.holdout",
        )
    order = np.random.default_rng(cfg.seed).permutation(len(pool))
    n_val = min(len(pool) - 1, max(1, round(cfg.validation * len(pool))))
    validation = [pool[i] for i in order[:n_val]]
    train = [pool[i] for i in order[n_val:]]
    held = len(ctx.input_set.samples or []) or len(ctx.input_set.sets())
    facts = {"source": source, "train": len(train), "validation": n_val, "held_out": held}
    return train, validation, facts


class Teacher:
    """Runs the teacher in ONNX Runtime: its outputs under the student's output names, and
    the matched intermediate tensors."""

    def __init__(
        self,
        path: Path,
        mapping: dict[str, str],
        outputs: list[str],
        intermediates: list[str],
        ctx: StepContext,
    ) -> None:
        from onnxopt.modelio import load_model, save_model
        from onnxopt.runtime import expose_outputs, make_session

        self.mapping = {n: mapping[n] for n in outputs}
        self.intermediates = list(intermediates)
        model_path = path
        if intermediates:
            model = load_model(path)
            known = {o for node in model.graph.node for o in node.output}
            unknown = [n for n in intermediates if n not in known]
            if unknown:
                raise ConfigError(
                    f"intermediates {unknown} are not tensors of the teacher {path.name}",
                    hint="name tensors both graphs compute (see onnxopt inspect --tensors)",
                )
            expose_outputs(model, intermediates)
            assert ctx.scratch is not None
            model_path = save_model(model, ctx.scratch / "teacher-probe.onnx")
        self.session = make_session(model_path, ctx.target)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.names = [o.name for o in self.session.get_outputs()]
        self.where = f"teacher {path.name}"

    def run(self, sample: Inputs) -> dict[str, np.ndarray]:
        """The teacher's targets for one sample (or batch)."""
        from onnxopt.runtime import run_session

        values = dict(zip(self.names, run_session(self.session, sample, self.where), strict=True))
        out = {student: values[teacher] for student, teacher in self.mapping.items()}
        out.update({n: values[n] for n in self.intermediates})
        return out


def augmentation(
    cfg: DistillStep, ctx: StepContext
) -> Callable[[Inputs, np.random.Generator], Inputs] | None:
    """The user's augmentation callable, wrapped so that its failures name it."""
    if cfg.augment is None:
        return None
    from onnxopt import _fs
    from onnxopt.factory import load_factory

    fn = load_factory(cfg.augment, ctx.base_dir)

    def apply(feeds: Inputs, rng: np.random.Generator) -> Inputs:
        try:
            with _fs.user_cwd(ctx.invocation_dir):
                out = fn(dict(feeds), rng)
        except Exception as err:
            raise InputError(
                f"augment callable {cfg.augment!r} raised {type(err).__name__}: {first_line(err)}"
            ) from None
        if not isinstance(out, dict) or set(out) != set(feeds):
            raise InputError(
                f"augment callable {cfg.augment!r} must return a dict of the inputs "
                f"{sorted(feeds)}, found {type(out).__name__}"
            )
        return {k: np.asarray(v, dtype=feeds[k].dtype) for k, v in out.items()}

    return apply
