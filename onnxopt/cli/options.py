"""Options declared once, their parsers, and how a step subcommand becomes a pipeline.

Flags default to "not given" (None): only the flags a user gave reach the config, so every
default lives in the pydantic models (:mod:`onnxopt.config`), once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from onnxopt.cli.app import funnel, setup_logging, stderr, stdout
from onnxopt.errors import ConfigError, OnnxoptError

if TYPE_CHECKING:
    from onnxopt.bench.report import Renderers

R = TypeVar("R")

DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the manifest (or report) as JSON on stdout.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or table; warnings and errors only.")
]
DimOpt = Annotated[
    list[str] | None,
    typer.Option("--dim", help="Value of a symbolic dim, e.g. --dim batch=2 (repeatable)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads of the sessions.")
]
InputsFileOpt = Annotated[
    Path | None, typer.Option("--inputs-file", help="An .npz of inputs to verify and time on.")
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of generated inputs.")]
ValueOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--value",
        help="NAME=NUMBER: the value of an input the graph cannot tell, e.g. --value sr=16000 "
        "(repeatable).",
    ),
]
RangeOpt = Annotated[
    list[str] | None,
    typer.Option("--range", help="NAME=LO,HI: the range an input's values are drawn from."),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Your inputs' samples: an .npz, a folder of .npz files or of images, or "
        "module:function yielding dicts. Every step is verified on a held-out part and timed "
        "at its shapes; static quantization calibrates on the rest.",
    ),
]
EvaluateOpt = Annotated[
    str | None,
    typer.Option(
        "--evaluate",
        help="Your task metric, module:function or file.py:function: fn(runner) -> score "
        "(higher is better); the result may lose at most --max-drop of it.",
    ),
]
MaxDropOpt = Annotated[
    float | None,
    typer.Option("--max-drop", help="Largest accepted drop of the --evaluate score (0.01)."),
]
AtolOpt = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance override.")]
RtolOpt = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance override.")]
CosOpt = Annotated[float | None, typer.Option("--min-cosine", help="Lowest cosine accepted.")]
Top1Opt = Annotated[
    float | None, typer.Option("--min-top1", help="Lowest top-1 agreement accepted.")
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Where to write the .onnx result.")]
NoGuardOpt = Annotated[
    bool,
    typer.Option(
        "--no-guard",
        help="Hand the result over even if it is slower than its input (the speed guard, "
        "on by default, keeps the input then and -o gets an unchanged copy).",
    ),
]
CsvOpt = Annotated[Path | None, typer.Option("--csv", help="Write a CSV here.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")]

ProviderOpt = Annotated[
    str | None,
    typer.Option("--provider", help="Execution provider that verification runs on (cpu)."),
]
ExternalOpt = Annotated[
    str | None,
    typer.Option("--external-data", help="auto (only over 2 GB, default), always or never."),
]
MarkdownOpt = Annotated[
    Path | None, typer.Option("--markdown", help="Write a Markdown summary here.")
]


# ---------------------------------------------------------------- option groups
#
# A group is a frozen dataclass whose fields are typer options with their defaults. A
# command declares ``name: SomeGroup`` among its parameters and ``with_groups`` turns the
# group's fields into the command's options, and the options given back into one instance.


@dataclass(frozen=True)
class Output:
    """What a command prints: --json, --quiet, --debug."""

    as_json: JsonOpt = False
    quiet: QuietOpt = False
    debug: DebugOpt = False

    @property
    def table(self) -> bool:
        """Whether to print the human table (not --json, not --quiet)."""
        return not self.as_json and not self.quiet


@dataclass(frozen=True)
class Reports:
    """Where a report goes besides the terminal: --output, --markdown, --csv, --plot."""

    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the JSON report here.")
    ] = None
    markdown_out: MarkdownOpt = None
    csv_out: CsvOpt = None
    plot_out: PlotOpt = None

    def check(self) -> None:
        """Before any work: every path asked for must be writable (exit 2 now, not later)."""
        from onnxopt._fs import check_writable

        for path in (self.output, self.markdown_out, self.csv_out, self.plot_out):
            if path is not None:
                check_writable(path)

    def write(self, data: R, renderers: Renderers[R]) -> None:
        """The report as JSON, Markdown, CSV and PNG where asked."""
        from onnxopt._fs import write_json_atomic, write_text_atomic

        if self.output is not None:
            write_json_atomic(self.output, data)
        if self.markdown_out is not None:
            write_text_atomic(self.markdown_out, renderers.markdown(data))
        if self.csv_out is not None:
            write_text_atomic(self.csv_out, renderers.csv(data))
        if self.plot_out is not None:
            renderers.plot(data, self.plot_out)


@dataclass(frozen=True)
class Common:
    """The options every step subcommand shares (``--provider`` and ``--external-data``
    only where the step has a target: see :func:`step_command`)."""

    dims: DimOpt = None
    threads: ThreadsOpt = None
    inputs_file: InputsFileOpt = None
    seed: SeedOpt = None
    data: DataOpt = None
    value: ValueOpt = None
    range: RangeOpt = None
    evaluate: EvaluateOpt = None
    max_drop: MaxDropOpt = None
    as_json: JsonOpt = False
    quiet: QuietOpt = False
    debug: DebugOpt = False
    provider: ProviderOpt = None
    external_data: ExternalOpt = None

    def keywords(self) -> dict[str, Any]:
        """The pipeline keywords of the flags given (onnxopt.api.pipeline_config's)."""
        if self.max_drop is not None and self.evaluate is None:
            raise ConfigError("--max-drop is the budget of --evaluate; give --evaluate too")
        evaluate: dict[str, Any] | None = None
        if self.evaluate is not None:
            evaluate = {"callable": self.evaluate}
            if self.max_drop is not None:
                evaluate["budget"] = {"max_drop": self.max_drop}
        verify = given(seed=self.seed, inputs_file=self.inputs_file and str(self.inputs_file))
        return given(
            dims=parse_dims(self.dims) or None,
            target=given(provider=self.provider, intra_op_threads=self.threads) or None,
            external_data=self.external_data,
            verify=verify or None,
            data=self.data,
            ranges=parse_values(self.value or [], self.range or []) or None,
            evaluate=evaluate,
        )


def _group_options(group: type, skip: frozenset[str]) -> list[inspect.Parameter]:
    """A group's fields as keyword-only command parameters (typer reads their annotations)."""
    hints = typing.get_type_hints(group, include_extras=True)
    return [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in dataclasses.fields(group)
        if f.name not in skip
    ]


def with_groups(
    func: Callable[..., None], skip: frozenset[str] = frozenset()
) -> Callable[..., None]:
    """The command ``func`` with the options of each of its parameters typed by a group.

    Logging and the error funnel come with it (``--debug`` is in Output and Common, one of
    which every command has). ``skip``: group fields the command does not offer; they keep
    their defaults.
    """
    signature = inspect.signature(func, eval_str=True)
    groups = {
        p.name: p.annotation
        for p in signature.parameters.values()
        if isinstance(p.annotation, type) and dataclasses.is_dataclass(p.annotation)
    }
    own = [p for p in signature.parameters.values() if p.name not in groups]
    shared = {name: _group_options(group, skip) for name, group in groups.items()}
    owner = {q.name: name for name, options in shared.items() for q in options}

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> None:
        values: dict[str, dict[str, Any]] = {name: {} for name in groups}
        for key in [k for k in kwargs if k in owner]:
            values[owner[key]][key] = kwargs.pop(key)
        built = {name: groups[name](**values[name]) for name in groups}
        debug = any(getattr(group, "debug", False) for group in built.values())
        setup_logging(debug)
        with funnel(debug):
            func(**kwargs, **built)

    params = own + [q for options in shared.values() for q in options]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read this signature, not the function's
    return wrapper


def step_command(*, target: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A step subcommand: ``def cmd(<its own options>, *, common: Common)``, with the shared
    options declared once in :class:`Common` (without ``--provider`` and ``--external-data``
    unless ``target``), logging and the error funnel."""
    skip = frozenset() if target else frozenset({"provider", "external_data"})
    return lambda func: with_groups(func, skip)


def given(**values: Any) -> dict[str, Any]:
    """The values that were given (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def tolerance(**values: float | None) -> dict[str, float]:
    """A tolerance override from the bounds that were given."""
    return given(**values)


class Progress:
    """Progress lines on stderr while a pipeline runs."""

    def __init__(self, enabled: bool) -> None:
        self.console = stderr()
        self.enabled = enabled
        self.status: Any = None

    def __call__(self, event: str, **data: Any) -> None:
        if not self.enabled:
            return
        if event == "step_start":
            text = f"[{data['index']}/{data['total']}] {data['step']} ..."
            if self.status is None:
                self.status = self.console.status(text)
                self.status.start()
            else:
                self.status.update(text)
        elif event == "step_progress" and self.status is not None:
            self.status.update(f"[{data['index']}/{data['total']}] {data['step']}: {data['text']}")
        elif event == "step_end":
            entry = data["entry"]
            mark = "cached" if entry["status"] == "cached" else f"{entry.get('duration_s', 0):.1f}s"
            what = (entry.get("output") or entry.get("report_file") or {}).get("path", "")
            self.console.print(
                f"  step {entry['index']} {entry['name']}: {what} ({mark})", highlight=False
            )

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def show(manifest: dict[str, Any], as_json: bool, quiet: bool) -> None:
    """The manifest as JSON, or the summary table."""
    if as_json:
        print(json.dumps(manifest, indent=2, default=str))
    elif not quiet:
        from onnxopt.report.console import print_pipeline

        print_pipeline(stdout(160), manifest)


def run_with_progress(
    work: Callable[[Any], dict[str, Any]], common: Common | Output
) -> dict[str, Any]:
    """Run ``work(progress)``; on a failure with ``--json``, print the failed run's manifest."""
    progress = Progress(enabled=not common.quiet and not common.as_json)
    try:
        return work(progress)
    except OnnxoptError as err:
        if common.as_json and err.manifest:
            print(json.dumps(err.manifest, indent=2, default=str))
        raise
    finally:
        progress.stop()


def single_step(
    step: dict[str, Any],
    model: dict[str, Any],
    output: Path,
    source: Path | None,
    common: Common,
    **pipeline: Any,
) -> None:
    """Run a one-step pipeline (built by onnxopt.api.pipeline_config from the flags given
    and ``pipeline``, e.g. an export's inputs) and put its verified artifact at ``output``."""
    from onnxopt.api import pipeline_config
    from onnxopt.engine import run_to_file

    config = pipeline_config(
        step["type"],
        model,
        {k: v for k, v in step.items() if k != "type"},
        **common.keywords(),
        **pipeline,
        source="command line",
    )
    manifest = run_with_progress(
        lambda progress: run_to_file(config, output, source=source, on_event=progress), common
    )
    show(manifest, common.as_json, common.quiet)


def on_onnx(step: dict[str, Any], model: Path, output: Path, common: Common) -> None:
    """Run a step subcommand whose input is an ONNX file."""
    single_step(step, {"path": str(model.resolve())}, output, model, common)


# ---------------------------------------------------------------- parsers


def parse_values(values: list[str], ranges: list[str]) -> dict[str, list[float]]:
    """``--value sr=16000`` and ``--range ids=0,100`` -> input name -> [low, high]."""
    out: dict[str, list[float]] = {}
    for flag, items in (("--value", values), ("--range", ranges)):
        for item in items:
            name, sep, raw = item.partition("=")
            try:
                numbers = [float(v) for v in raw.split(",")]
            except ValueError:
                numbers = []
            wanted = 1 if flag == "--value" else 2
            if not sep or not name or len(numbers) != wanted:
                example = "sr=16000" if flag == "--value" else "token_type_ids=0,2"
                form = "NUMBER" if wanted == 1 else "LO,HI"
                raise ConfigError(f"{flag} expects NAME={form} such as {example}, found {item!r}")
            out[name.strip()] = numbers * 2 if wanted == 1 else numbers
    return out


def parse_dims(values: list[str] | None) -> dict[str, int]:
    """``["batch=2"]`` -> ``{"batch": 2}``."""
    dims: dict[str, int] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ConfigError(f"--dim expects NAME=INT such as batch=2, found {item!r}")
        dims[name.strip()] = int(value)
    return dims


def parse_input(text: str) -> dict[str, Any]:
    """'name:batch,3,224,224[:dtype[:low,high]]' -> an inputs-spec mapping."""
    parts = text.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(
            f"--input expects NAME:DIM,DIM,...[:DTYPE[:LOW,HIGH]] such as "
            f"x:batch,3,224,224:float32, found {text!r}"
        )
    shape: list[int | str] = [
        int(d) if d.strip().isdigit() else d.strip() for d in parts[1].split(",")
    ]
    spec: dict[str, Any] = {"name": parts[0], "shape": shape}
    if len(parts) > 2 and parts[2]:
        spec["dtype"] = parts[2]
    if len(parts) > 3:
        try:
            low, high = (float(v) for v in parts[3].split(","))
        except ValueError:
            raise ConfigError(f"--input range expects LOW,HIGH, found {parts[3]!r}") from None
        spec["range"] = [low, high]
    return spec


def parse_kv_json(values: list[str] | None, flag: str) -> dict[str, Any]:
    """``["k=1", "s=x"]`` -> ``{"k": 1, "s": "x"}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, found {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def parse_provider_options(values: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["cuda.device_id=0"]`` -> ``{"cuda": {"device_id": 0}}``."""
    options: dict[str, dict[str, Any]] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        provider, dot, name = key.partition(".")
        if not sep or not dot or not provider or not name:
            raise ConfigError(
                f"--provider-option expects PROVIDER.KEY=VALUE such as cuda.device_id=0, "
                f"found {item!r}"
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        options.setdefault(provider, {})[name] = value
    return options


def parse_shapes(values: list[str] | None) -> dict[str, list[int]]:
    """``["x=8,3,224,224"]`` -> ``{"x": [8, 3, 224, 224]}``."""
    shapes: dict[str, list[int]] = {}
    for item in values or []:
        name, sep, dims = item.partition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            shapes[name] = []
        if not sep or not name or not shapes[name]:
            raise ConfigError(f"--shape expects NAME=D,D,... such as x=8,3,224,224, found {item!r}")
    return shapes


def csv_ints(text: str | None, flag: str) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated integers, found {text!r}") from None


def float_arg(value: Any, flag: str) -> float:
    """A number from a flag, or a clear error naming the flag."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} expects a number, found {value!r}") from None
