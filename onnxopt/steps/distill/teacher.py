"""Which model a distill step learns from, and what of it enters the step's cache key.

No torch here: the engine calls :func:`key_extra` for every run, cache hits included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnxopt.errors import ConfigError, InputError

#: (label, path, digest) of each model of the chain so far, oldest first
Chain = list[tuple[str, Path, str]]


def _step_name(label: str) -> str:
    """A chain label ``NN-name`` -> ``name``."""
    head, sep, rest = label.partition("-")
    return rest if sep and head.isdigit() else label


def resolve_teacher(teacher: str, chain: Chain, base_dir: Path) -> tuple[Path, str | None]:
    """The teacher's file and, when it is a model of the chain, its digest.

    ``teacher``: ``source`` (the first model of the chain: the pipeline's ONNX source or its
    export), the name of an earlier step (``prune``, or a step's ``name``), or a path.
    """
    if not chain and teacher == "source":
        raise ConfigError("distill needs a model before it (its parent is the student)")
    if teacher == "source":
        _, path, digest = chain[0]
        return path, digest
    matches = [(p, d) for label, p, d in chain if teacher in (label, _step_name(label))]
    if matches:
        path, digest = matches[-1]
        return path, digest
    if teacher.endswith(".onnx") or "/" in teacher:
        path = Path(teacher)  # absolute: the config resolved it
        if not path.is_file():
            raise InputError(
                f"teacher {teacher!r}: no such file ({path})",
                hint="give 'source', the name of an earlier step, or an .onnx path",
            )
        return path.resolve(), None
    names = ["source"] + [_step_name(label) for label, _, _ in chain[1:]]
    raise ConfigError(
        f"teacher {teacher!r} is neither 'source', an earlier step ({', '.join(names)}) nor an "
        ".onnx path",
        hint="name an earlier step, or give a path ending in .onnx",
    )


def key_extra(step: Any, chain: Chain, base_dir: Path) -> Any:
    """What the step's cache key adds: the teacher's bytes, and the code of a factory
    student and of an augmentation callable."""
    from onnxopt import _fs
    from onnxopt.factory import factory_source_file
    from onnxopt.modelio import model_digest

    path, digest = resolve_teacher(step.teacher, chain, base_dir)
    code = []
    for target in (step.student.factory if step.student else None, step.augment):
        file = factory_source_file(target, base_dir) if target else None
        code.append(_fs.sha256_file(file) if file is not None and file.is_file() else None)
    return {"teacher": digest or model_digest(path), "code": code}
