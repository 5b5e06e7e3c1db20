"""The pipeline file's key reference as Markdown, written from the config classes' fields.

The same descriptions make ``onnxopt schema``'s JSON Schema. ``docs/pipeline.md`` holds this
text between two markers (``make docs`` rewrites it, a test checks it is current, and
``onnxopt schema --markdown`` prints it), so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from onnxopt import registry
from onnxopt.config.base import ModelRef, UserCode, UserPath

_NAMED = {id(UserPath): "path", id(UserCode): "module:function", id(ModelRef): "path or folder"}

BEGIN = "<!-- every key: written by `make docs` from the config classes; do not edit -->"
END = "<!-- end of every key -->"

HEADER = """## Every key

Written from the config classes (`onnxopt schema --markdown` prints it; the descriptions are
those of `onnxopt schema`'s JSON Schema). Paths are relative to the pipeline file's folder
(`~` is your home); `${VAR}` and `${VAR:-default}` are expanded in strings.
"""


def markdown() -> str:
    """The whole reference: the top-level keys, then each step type's."""
    from onnxopt.config.pipeline import PipelineConfig

    parts = [HEADER, "### Top level\n", *_sections(PipelineConfig, "", skip={"steps"})]
    parts.append(
        "### Steps\n\n`steps:` is a list; each item's `type` chooses one of the step types "
        "below, and its keys are those of that type.\n"
    )
    for kind, cls in registry.config_classes().items():
        parts.extend(_sections(cls, f"steps[].{kind}", title=f"`type: {kind}`"))
    return "\n".join(parts).rstrip() + "\n"


def _sections(
    model: type[BaseModel], path: str, *, title: str | None = None, skip: set[str] | None = None
) -> list[str]:
    """A table of ``model``'s fields, then a section per nested model."""
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if name in (skip or set()):
            continue
        inner = _models_in(field.annotation)
        key = f"{path}.{name}" if path else name
        rows.append(
            f"| `{name}` | {_cell(_type_text(field.annotation))} | {_cell(_default(field))} "
            f"| {_cell(field.description or '')} |"
        )
        nested.extend((key, m) for m in inner)
    heading = title or (f"`{path}`" if path else None)
    text = [] if heading is None else [f"#### {heading}\n"]
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc and path:
        text.append(f"{doc}\n")
    text.append("| key | type | default | description |\n|---|---|---|---|")
    text.append("\n".join(rows) + "\n")
    out = ["\n".join(text)]
    for key, inner_model in nested:
        out.extend(_sections(inner_model, key))
    return out


def spliced(document: str) -> str:
    """``document`` with the text between the markers replaced by :func:`markdown`."""
    head, found, rest = document.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"the document has no {BEGIN!r} ... {END!r} markers")
    return f"{head}{BEGIN}\n\n{markdown()}\n{END}{tail}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config classes an annotation holds (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_text(annotation: Any) -> str:
    named = _NAMED.get(id(annotation))
    if named:
        return named
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        shown = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(shown) + (" or null" if type(None) in args else "")
    if origin in (list, tuple, set):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping to {_type_text(args[1])}" if args else "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping (below)"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(below)"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return "`" + json.dumps(value, default=str) + "`"


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


if __name__ == "__main__":  # make docs: python -m onnxopt.config.reference docs/pipeline.md
    import sys
    from pathlib import Path

    target = Path(sys.argv[1])
    target.write_text(spliced(target.read_text(encoding="utf-8")), encoding="utf-8")
