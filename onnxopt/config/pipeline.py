"""The pipeline file: its model, the YAML loader, and errors that name every problem.

Unknown keys, wrong types and unknown step types fail before any work is done, naming the
file and the field path, each problem on a line of its own with a did-you-mean where one
fits. The step types come from :mod:`onnxopt.registry`.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from onnxopt import registry
from onnxopt.config.base import (
    InputSpec,
    ModelSource,
    StepBase,
    StrictModel,
    Target,
    UserPath,
    VerifyConfig,
)
from onnxopt.config.data import DataConfig, EvaluateConfig
from onnxopt.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    Step = StepBase
else:  # each step keeps its own fields when dumped (cache keys, manifests)
    Step = SerializeAsAny[StepBase]


class PipelineConfig(StrictModel):
    """A whole pipeline: model source, inputs, target, output folder and ordered steps."""

    version: Literal[1] = Field(1, description="Config format version.")
    name: str = Field("pipeline", description="Pipeline name shown in reports.")
    model: ModelSource = Field(description="The model: {path: x.onnx} or {factory: mod:fn}.")
    inputs: list[InputSpec] | None = Field(
        None,
        description="Input specs. Required for a PyTorch factory; for an ONNX model they are "
        "read from the graph, and entries here override them by name (e.g. "
        "{name: sr, range: [16000, 16000]}).",
    )
    dims: dict[str, int] = Field(
        default_factory=dict,
        description="Values of symbolic dims for the verification inputs, e.g. {batch: 2}.",
    )
    target: Target = Field(default_factory=Target, description="Execution provider settings.")
    output_dir: UserPath = Field(
        "out", validate_default=True, description="Folder for artifacts, inputs.npz and manifest."
    )
    external_data: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Store weights in a separate .data file: auto (only over 2 GB), always, never.",
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Verification.")
    data: DataConfig | None = Field(
        None,
        description="The user's data: samples of the inputs, split (seeded) into a calibration "
        "part and a held-out part that every step is verified on and timed at. Without it "
        "(and without a quantize step's calibration data, which then serves as it), every "
        "proof runs on generated inputs.",
    )
    evaluate: EvaluateConfig | None = Field(
        None,
        description="Your task metric: every model-changing step's result is scored beside "
        "its parent and must stay within budget.max_drop (exit 3 otherwise); it then decides "
        "alone unless the step sets its own tolerance.",
    )
    steps: list[Step] = Field(min_length=1, description="Ordered steps.")

    @field_validator("steps", mode="before")
    @classmethod
    def _step_configs(cls, value: Any, info: ValidationInfo) -> Any:
        """Mappings become the config class of their ``type`` (parse_config names problems)."""
        if not isinstance(value, list):
            return value
        classes = registry.config_classes()
        return [
            classes[s["type"]].model_validate(s, context=info.context)
            if isinstance(s, dict) and s.get("type") in classes
            else s
            for s in value
        ]

    def input_files(self) -> list[str]:
        """The user's files this pipeline reads (absolute once loaded): the model, its
        weights, the inputs file, the data and what each step names (its ``input_files``)."""
        named = [self.model.path, self.model.weights, self.verify.inputs_file]
        named.append(self.data.path if self.data is not None else None)
        named += [f for step in self.steps for f in step.input_files()]
        return [n for n in named if n]

    @model_validator(mode="after")
    def _coherent(self) -> PipelineConfig:
        kinds = [s.type for s in self.steps]
        specs = [registry.spec(k) for k in kinds]
        if self.model.is_pytorch:
            if not specs[0].reads_pytorch:
                raise ValueError(
                    "the model is a PyTorch factory or Hugging Face folder, so the first step "
                    "must be 'export'"
                )
            if self.inputs is None and self.model.factory is not None:
                raise ValueError("a PyTorch factory needs an 'inputs' list (names and shapes)")
            shapeless = [i.name for i in self.inputs or [] if "shape" not in i.model_fields_set]
            if shapeless and self.model.factory is not None:
                raise ValueError(f"a PyTorch factory's inputs need a shape; {shapeless} have none")
        exporters = [i for i, s in enumerate(specs) if s.reads_pytorch]
        if exporters and (not self.model.is_pytorch or exporters != [0]):
            raise ValueError(
                "'export' may appear once, as the first step, and only for a PyTorch factory "
                "or Hugging Face folder"
            )
        for s in specs:
            if s.once and kinds.count(s.name) > 1:
                raise ValueError(f"'{s.name}' appears more than once; {s.once}")
        for i, s in enumerate(specs):
            changing = [t.name for t in specs[i + 1 :] if t.kind == "model"]
            if s.kind == "files" and changing:
                raise ValueError(
                    f"'{s.name}' writes the deployable .ort file, so it must come after every "
                    f"step that changes the model; found {changing} after it"
                )
        for i, (step, s) in enumerate(zip(self.steps, specs, strict=True)):
            if step.guard is not None and (s.kind != "model" or s.reads_pytorch):
                raise ValueError(
                    f"steps[{i}]: 'guard' compares an artifact with its ONNX parent; "
                    f"a {step.type} step cannot carry one"
                )
        names = [i.name for i in self.inputs or []]
        if len(set(names)) != len(names):
            raise ValueError(f"input names must be unique, found {names}")
        return self


# ---------------------------------------------------------------- loading


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{where or 'value'}: environment variable ${{{name}}} is not set",
                hint=f"export {name}=... or write ${{{name}:-default}}",
            )

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models that an annotation can hold (through Optional, list, dict, Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (Union, types.UnionType, list, dict, tuple):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    return []


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid at the parent of ``loc`` in ``model`` (for 'did you mean')."""
    models: list[type[BaseModel]] = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in models:
            if part in m.model_fields:
                nxt.extend(_models_in(m.model_fields[part].annotation))
        models = nxt
    return [name for m in models for name in m.model_fields]


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _problem(error: Any, model: type[BaseModel], prefix: tuple[int | str, ...]) -> str:
    """One line for one pydantic error of ``model`` (validated at ``prefix``)."""
    loc = tuple(error["loc"])
    where = _loc_text(prefix + loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = _fields_at(model, loc)
        hint = did_you_mean(key, valid)
        return f"{where}: unknown key{hint or f' (valid keys: {chr(44).join(sorted(valid))})'}"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    if error["type"] == "value_error":  # our validators' messages say what they found
        return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"
    found = error.get("input")
    shown = repr(found) if not isinstance(found, dict | list) else type(found).__name__
    return f"{where}: {error['msg']} (found {shown[:80]})"


def _problems(
    err: ValidationError, model: type[BaseModel], prefix: tuple[int | str, ...] = ()
) -> list[str]:
    lines = [_problem(e, model, prefix) for e in err.errors()]
    # an unknown key usually explains a missing one (stepz: instead of steps:): it goes first
    return sorted(lines, key=lambda line: "unknown key" not in line)


def config_error(problems: list[str], source: str) -> ConfigError:
    """One ConfigError naming every problem: the first on its line, the others below it."""
    first, rest = problems[0], problems[1:]
    if not rest:
        return ConfigError(f"{source}: {first}")
    others = "".join(f"\n  {source}: {p}" for p in rest)
    return ConfigError(f"{source}: {first} (and {len(rest)} more problem(s), below){others}")


def format_validation_error(
    err: ValidationError, source: str, model: type[BaseModel] | None = None
) -> ConfigError:
    """Turn a pydantic error of ``model`` (default: the pipeline) into a ConfigError naming
    every problem."""
    return config_error(_problems(err, model or PipelineConfig), source)


def _steps(steps: Any, context: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """The steps list validated, each step against its own config class, and its problems.

    Returns the steps (config instances where valid) and one line per problem.
    """
    if not isinstance(steps, list):
        return steps, []
    classes = registry.config_classes()
    known = list(classes)
    problems: list[str] = []
    validated: list[Any] = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            found = type(step).__name__
            problems.append(
                f"steps[{i}]: expected a mapping like {{type: simplify}}, found {found}"
            )
            continue
        kind = step.get("type")
        if kind is None:
            problems.append(f"steps[{i}]: missing 'type' (one of: {', '.join(known)})")
        elif kind in registry.PLANNED:
            problems.append(
                f"steps[{i}]: step type '{kind}' is not available yet in this release "
                f"(planned, issue {registry.PLANNED[kind]}); available: {', '.join(known)}"
            )
        elif kind not in classes:
            suggestion = did_you_mean(str(kind), known + list(registry.PLANNED))
            problems.append(
                f"steps[{i}].type: unknown step type {kind!r}{suggestion} "
                f"(available: {', '.join(known)})"
            )
        else:
            try:
                validated[i] = classes[kind].model_validate(step, context=context)
            except ValidationError as err:
                problems += _problems(err, classes[kind], ("steps", i))
    return validated, problems


def parse_config(data: Any, source: str = "config", base_dir: Path | None = None) -> PipelineConfig:
    """Validate a config mapping (already loaded from YAML or built in code).

    Args:
        data: the mapping.
        source: a name for error messages (the file path).
        base_dir: the folder relative paths in it are resolved against (the pipeline file's);
            None leaves them relative until :func:`resolve_paths` (``~`` is expanded).

    Raises:
        ConfigError: on any problem, naming every field path that is wrong.
    """
    if data is None:
        raise ConfigError(f"{source}: the file is empty", hint="see configs/quickstart.yaml")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, found {type(data).__name__}"
        )
    data = _expand_env(data, "")
    context = {"base_dir": base_dir}
    steps, problems = _steps(data.get("steps"), context)
    if problems:  # the rest of the file is checked too, with the steps left out
        rest = {k: v for k, v in data.items() if k != "steps"}
        try:
            PipelineConfig.model_validate({**rest, "steps": [{"type": "_"}]}, context=context)
        except ValidationError as err:
            problems += [p for p in _problems(err, PipelineConfig) if not p.startswith("steps")]
        raise config_error(problems, source)
    try:
        # the steps are validated already: the model takes the instances as they are
        return PipelineConfig.model_validate(
            {**data, "steps": steps} if "steps" in data else data, context=context
        )
    except ValidationError as err:
        raise format_validation_error(err, source) from None


def resolve_paths(config: PipelineConfig, base_dir: Path) -> PipelineConfig:
    """``config`` with every path it names made absolute against ``base_dir`` (``~``
    expanded): the one place a user's path is resolved. Absolute paths stay as they are, so
    a config loaded from its file comes back equal."""
    data = {**config.model_dump(exclude_unset=True), "output_dir": config.output_dir}
    return PipelineConfig.model_validate(data, context={"base_dir": base_dir})


def load_config(path: str | Path) -> tuple[PipelineConfig, Path]:
    """Read and validate a pipeline YAML file.

    Returns:
        The config and the folder that relative paths in it are resolved against.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"pipeline file not found: {file}",
            hint="pass the path of a YAML pipeline, e.g. configs/quickstart.yaml",
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: cannot read the file as UTF-8 text ({err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{file}: YAML syntax error{where}: {problem}") from None
    folder = file.resolve().parent
    return parse_config(data, str(file), folder), folder


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the pipeline file, with every registered step type."""
    classes = tuple(registry.config_classes().values())
    step = Annotated[Union[classes], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    model = create_model(
        "PipelineConfig",
        __base__=PipelineConfig,
        steps=(list[step], Field(min_length=1, description="Ordered steps.")),  # type: ignore[valid-type]
    )
    return model.model_json_schema()
