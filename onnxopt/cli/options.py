"""Options declared once, their parsers, and how a step subcommand becomes a pipeline.

Flags default to "not given" (None): only the flags a user gave reach the config, so every
default lives in the pydantic models (:mod:`onnxopt.config`), once.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxopt.cli.app import funnel, setup_logging, stderr, stdout
from onnxopt.errors import ConfigError, OnnxoptError

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
    int | None, typer.Option("--threads", help="Intra-op threads of verification sessions.")
]
InputsFileOpt = Annotated[
    Path | None, typer.Option("--inputs-file", help="An .npz of inputs to verify on.")
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

_PROVIDER = inspect.Parameter(
    "provider",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Option("--provider", help="Execution provider that verification runs on (cpu)."),
    ],
)
_EXTERNAL = inspect.Parameter(
    "external_data",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Option("--external-data", help="auto (only over 2 GB, default), always or never."),
    ],
)


def _keyword(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


_COMMON = [
    _keyword("dims", DimOpt, None),
    _keyword("threads", ThreadsOpt, None),
    _keyword("inputs_file", InputsFileOpt, None),
    _keyword("seed", SeedOpt, None),
    _keyword("data", DataOpt, None),
    _keyword("value", ValueOpt, None),
    _keyword("range", RangeOpt, None),
    _keyword("evaluate", EvaluateOpt, None),
    _keyword("max_drop", MaxDropOpt, None),
    _keyword("as_json", JsonOpt, False),
    _keyword("quiet", QuietOpt, False),
    _keyword("debug", DebugOpt, False),
]


@dataclass(frozen=True)
class Common:
    """The options every step subcommand shares."""

    dims: list[str] | None
    threads: int | None
    inputs_file: Path | None
    seed: int | None
    data: str | None
    value: list[str] | None
    range: list[str] | None
    as_json: bool
    quiet: bool
    debug: bool
    provider: str | None = None
    external_data: str | None = None
    evaluate: str | None = None
    max_drop: float | None = None

    def pipeline(self, step: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
        """The one-step pipeline mapping: the given options only."""
        data: dict[str, Any] = {"name": step["type"], "model": model, "steps": [step]}
        if self.dims:
            data["dims"] = parse_dims(self.dims)
        target = given(provider=self.provider, intra_op_threads=self.threads)
        if target:
            data["target"] = target
        if self.external_data is not None:
            data["external_data"] = self.external_data
        verify = given(seed=self.seed, inputs_file=self.inputs_file and str(self.inputs_file))
        if verify:
            data["verify"] = verify
        if self.data is not None:
            data["data"] = data_source(self.data)
        ranges = parse_values(self.value or [], self.range or [])
        if ranges:
            data["inputs"] = [{"name": n, "range": r} for n, r in ranges.items()]
        if self.evaluate is not None:
            data["evaluate"] = {"callable": self.evaluate}
            if self.max_drop is not None:
                data["evaluate"]["budget"] = {"max_drop": self.max_drop}
        elif self.max_drop is not None:
            raise ConfigError("--max-drop is the budget of --evaluate; give --evaluate too")
        return data


def step_command(*, target: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a step subcommand the shared options, logging and the error funnel.

    The command is written as ``def cmd(<its own options>, common: Common)``; the shared
    options (``--dim``, ``--threads``, ``--inputs-file``, ``--seed``, ``--json``,
    ``--quiet``, ``--debug``, and with ``target`` ``--provider`` and ``--external-data``)
    are declared here, once, for all of them.
    """

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(func, eval_str=True).parameters.values()]
        own = [p for p in own if p.name != "common"]
        shared = [*_COMMON, _PROVIDER, _EXTERNAL] if target else list(_COMMON)
        names = {p.name for p in shared}

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:
            common = Common(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
            setup_logging(common.debug, common.quiet)
            with funnel(common.debug):
                func(**kwargs, common=common)

        params = own + shared
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read this signature, not the function's
        return wrapper

    return decorate


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


def run_with_progress(work: Callable[[Any], dict[str, Any]], common: Common) -> dict[str, Any]:
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
    """Run a one-step pipeline (``pipeline``: more of its keys) and put its verified
    artifact at ``output``."""
    from onnxopt.config import parse_config
    from onnxopt.engine import run_to_file

    data = common.pipeline(step, model)
    if "inputs" in pipeline:  # an export's own inputs list: --value/--range apply to it
        given = {o["name"]: o["range"] for o in data.pop("inputs", [])}
        pipeline["inputs"] = [
            {**spec, "range": given[spec["name"]]} if spec["name"] in given else spec
            for spec in pipeline["inputs"]
        ]
    config = parse_config({**data, **pipeline}, "command line")
    manifest = run_with_progress(
        lambda progress: run_to_file(config, output, source=source, on_event=progress), common
    )
    show(manifest, common.as_json, common.quiet)


def on_onnx(step: dict[str, Any], model: Path, output: Path, common: Common) -> None:
    """Run a step subcommand whose input is an ONNX file."""
    single_step(step, {"path": str(model.resolve())}, output, model, common)


# ---------------------------------------------------------------- parsers


def data_source(text: str) -> dict[str, Any]:
    """``--data``: a path (an .npz, a folder of .npz files or of images) or module:function."""
    path = Path(text)
    if path.exists():
        if path.is_dir() and not any(path.glob("*.npz")):
            return {"source": "images", "path": str(path.resolve())}
        return {"source": "npz", "path": str(path.resolve())}
    target, sep, func = text.rpartition(":")
    if sep and target and func and not text.endswith(".npz"):
        return {"source": "callable", "callable": text}
    raise ConfigError(
        f"--data expects an .npz file, a folder of .npz files or images, or module:function; "
        f"{text!r} is none of these (no such file)"
    )


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
