"""What every quantization backend shares: counting what was quantized, the preflight,
preparing the graph, and loading (and repairing) what the backend wrote."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from onnxopt.config import QuantizeStep
from onnxopt.errors import ConfigError, InputError, StepError, first_line
from onnxopt.graph import (
    external_locations,
    iter_graphs,
    opset_of,
    topological_sort,
)
from onnxopt.modelio import load_graph, load_model, model_size, remove_model, save_model
from onnxopt.probe import first_run_in_child
from onnxopt.steps.base import StepContext
from onnxopt.steps.quantize.backend import Backend, backend
from onnxopt.steps.quantize.weights import prepare_weights

log = logging.getLogger("onnxopt")

#: Ops whose presence shows that INT8 / INT4 quantization happened.
QUANT_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "QAttention",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "MatMulNBits",
)
#: Ops that do the heavy work; the report says how many stayed float.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedMatMul", "FusedGemm", "FusedConv")


def name_nodes(model: onnx.ModelProto) -> int:
    """Give unnamed top-level nodes a stable name (``<op>_<index>``) so they can be excluded."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def op_counts(model: onnx.ModelProto) -> dict[str, Any]:
    """Quantized op counts and the compute ops that stayed float.

    In QDQ models a compute op keeps its float type but reads DequantizeLinear outputs;
    ONNX Runtime runs it as an int8 kernel, so it counts as quantized, not float.
    """
    counts: Counter[str] = Counter()
    float_compute: Counter[str] = Counter()
    for graph in iter_graphs(model.graph):
        dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        for node in graph.node:
            counts[node.op_type] += 1
            if node.op_type in COMPUTE_OPS and not any(i in dq_outputs for i in node.input[:2]):
                float_compute[node.op_type] += 1
    quantized = {op: counts[op] for op in QUANT_OPS if counts[op]}
    return {
        "quantized_ops": quantized,
        "quantized_total": sum(quantized.values()),
        "float_compute_ops": dict(float_compute),
    }


def on_cpu(provider: str) -> bool:
    """Whether the target is ONNX Runtime's CPU provider (this machine's CPU)."""
    return provider.lower() in ("cpu", "cpuexecutionprovider")


def saturates(provider: str) -> bool:
    """Whether int8 U8S8 kernels on the target clamp their 16-bit intermediates (measured)."""
    from onnxopt.cpu import int8_facts

    return on_cpu(provider) and int8_facts().u8s8_saturates


def resolve_reduce_range(value: bool | None, weight_type: str, provider: str) -> tuple[bool, str]:
    """7-bit weights or not, and why: a given value stands; the default (None) is on only
    where the target's U8S8 kernel saturates (uint8 weights use a kernel that does not)."""
    if value is not None:
        return value, "set in the config"
    if weight_type == "uint8":
        return False, "default: uint8 weights (U8U8) do not saturate"
    if saturates(provider):
        return True, (
            "default on this CPU: ONNX Runtime's U8S8 kernel saturates here (measured), "
            "7-bit weights keep u8*s8 pair sums within 16 bits"
        )
    return False, "default: the target's U8S8 kernel does not saturate"


def cpu_int8_note(provider: str) -> str | None:
    """A warning when int8 is known not to pay on this target, else None."""
    from onnxopt.cpu import int8_facts

    if not on_cpu(provider):
        if provider.lower() in ("cuda", "cudaexecutionprovider"):
            return (
                "the CUDA provider has few quantized kernels: int8 nodes may fall back to the "
                "CPU with memory copies; check with 'onnxopt bench --placement'"
            )
        return None
    facts = int8_facts()
    if facts.dot_product:
        return None
    note = (
        f"this CPU ({facts.cpu}) has no int8 dot-product instructions (AVX-512 VNNI, "
        "AVX-VNNI, AMX or ARM dot product): int8 kernels may not be faster than float32 "
        "here; the measured speed-up is in the report"
    )
    if facts.u8s8_saturates:
        note += (
            "; ONNX Runtime's U8S8 kernel saturates here (measured), so int8 weights default "
            "to 7 bits (reduce_range) and auto adds 7-bit and U8U8 candidates"
        )
    return note


def preflight(cfg: QuantizeStep, spec: Backend, provider: str, model: onnx.ModelProto) -> list[str]:
    """Refuse models the backend cannot quantize; warn where it is known not to pay."""
    opset = opset_of(model)
    if model.ir_version < 4 or opset < spec.min_opset:
        raise InputError(
            f"{cfg.mode} quantization needs ONNX IR version >= 4 and opset >= "
            f"{spec.min_opset}; the model has IR version {model.ir_version} and opset {opset}",
            hint="upgrade it (onnx.version_converter.convert_version(model, 17)) or re-export "
            "with a newer opset",
        )
    warnings = []
    note = cpu_int8_note(provider) if spec.int8 else spec.target_note(provider)
    if note:
        warnings.append(note)
    in_subgraphs = sum(
        1
        for graph in list(iter_graphs(model.graph))[1:]
        for node in graph.node
        if node.op_type in COMPUTE_OPS
    )
    in_main = sum(1 for node in model.graph.node if node.op_type in COMPUTE_OPS)
    if in_subgraphs and not in_main and cfg.mode == "static" and cfg.static.format == "qdq":
        raise StepError(
            f"static QDQ quantization would quantize nothing: all {in_subgraphs} compute nodes "
            "sit inside If/Loop/Scan bodies, which ONNX Runtime's QDQ quantizer leaves in float",
            hint="try mode fp16, or dynamic / static format qoperator (they quantize a body's "
            "own weights)",
        )
    if in_subgraphs and cfg.mode != "dynamic":
        warnings.append(
            f"{in_subgraphs} compute nodes sit inside control-flow subgraphs (If/Loop/Scan); "
            f"{cfg.mode} quantization leaves them float (dynamic quantization reaches them)"
        )
    return warnings


#: per-channel QuantizeLinear/DequantizeLinear take an ``axis`` from this opset on
PER_CHANNEL_OPSET = 13


def upgrade_for_per_channel(
    model: onnx.ModelProto, cfg: QuantizeStep, notes: list[str]
) -> onnx.ModelProto:
    """Per-channel int8 below opset 13: convert the model to opset 13 first.

    ONNX Runtime's quantizers write per-channel DequantizeLinear nodes with an ``axis``
    attribute, which exists only from opset 13, whatever the model's opset; older models
    (Paddle, older exporters: opset 11-12) came out invalid. The verification against the
    parent (still at its own opset) proves the conversion changed nothing.
    """
    per_channel = backend(cfg.mode).per_channel(cfg)
    opset = opset_of(model)
    if not per_channel or opset >= PER_CHANNEL_OPSET:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, PER_CHANNEL_OPSET)
    except Exception as err:
        notes.append(
            f"opset {opset}: per-channel quantization needs opset {PER_CHANNEL_OPSET}, and "
            f"onnx.version_converter could not convert the model ({first_line(err, 120)}); "
            "quantizing at its own opset"
        )
        return model
    notes.append(
        f"converted from opset {opset} to {PER_CHANNEL_OPSET} with onnx.version_converter "
        "first (per-channel DequantizeLinear needs its axis attribute, new in opset 13)"
    )
    return converted


def _load_produced(raw: Path, producer: str, notes: list[str]) -> onnx.ModelProto:
    """Load the quantizer's output; repair it when only its node order or imports are wrong.

    ONNX Runtime's quantizers append the nodes they create in their own order and do not
    see what If/Loop bodies read from the enclosing graph, so a body can come to read a
    value produced after it ("Nodes in a graph must be topologically sorted"); a topological
    sort that counts those reads repairs it. Quantizing a body adds ``com.microsoft`` ops
    (DynamicQuantizeLSTM) without importing the domain in the model; the import repairs it.
    Anything else is that library's failure (exit 1), named as such.
    """
    repairs: list[str] = []
    for _ in range(3):
        try:
            model = load_model(raw, produced_by=producer)
            notes.extend(repairs)
            return model
        except StepError as err:
            if "topologically sorted" in err.message:
                fix, note = (
                    _sort_topologically,
                    (
                        f"{producer} wrote its nodes out of order (a control-flow body reads a "
                        "value made after it); onnxopt re-sorted the graph topologically"
                    ),
                )
            elif "No opset import for domain" in err.message:
                fix, note = (
                    _import_used_domains,
                    (
                        f"{producer} used ops of a domain it did not import (in a control-flow "
                        "body); onnxopt added the import"
                    ),
                )
            else:
                raise
        if note in repairs:
            raise StepError(f"{producer} wrote an invalid model that onnxopt could not repair")
        graph_only = load_graph(raw)
        fix(graph_only, producer)
        onnx.save_model(graph_only, str(raw))
        del graph_only
        repairs.append(note)
    raise StepError(f"{producer} wrote an invalid model that onnxopt could not repair")


def _sort_topologically(model: onnx.ModelProto, producer: str) -> None:
    try:
        topological_sort(model.graph)
    except InputError:
        raise StepError(f"{producer} wrote a graph with a cycle") from None


def _import_used_domains(model: onnx.ModelProto, producer: str) -> None:
    """Import every op domain a node in any graph uses (ONNX Runtime's sub-quantizers add
    ``com.microsoft`` ops to bodies without importing the domain in the model)."""
    imported = {o.domain for o in model.opset_import}
    used = {n.domain for g in iter_graphs(model.graph) for n in g.node}
    for domain in sorted(used - imported - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def _save_prepared(model: onnx.ModelProto, src: Path, prepared: Path) -> None:
    """Save the renamed graph beside links to ``src``'s external data files.

    The weights of a model over 2 GB are never read into this process: the graph is saved
    with its external references unchanged and the .data files are copied (disk to disk)
    next to it, so the quantizer reads them itself.
    """
    for location in sorted(external_locations(model)):
        target = prepared.parent / location
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / location, target)  # onnx refuses hard and soft links
    onnx.save_model(model, str(prepared))


def big(path: Path) -> bool:
    """Whether a model is too large for one protobuf (its quantized copy needs external data)."""
    return model_size(path) >= 2**31 - 2**26


def quantize_once(
    src: Path, dst: Path, cfg: QuantizeStep, ctx: StepContext, label: str | None = None
) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` with one concrete mode; return the report.

    The written model is loaded and run once in a child process first (``label`` names it
    in the error): a runtime that crashes on it fails this call, not the process.
    """
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="quantize-", dir=ctx.scratch))
    try:
        prepared = work / "prepared.onnx"
        model = load_model(src, load_weights=False)  # external weights stay on disk
        before = op_counts(model)
        spec = backend(cfg.mode)
        warnings = preflight(cfg, spec, ctx.target.provider, model)
        notes.extend(prepare_weights(model))
        name_nodes(model)
        model = upgrade_for_per_channel(model, cfg, notes)
        raw = work / "quantized.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ONNX Runtime's quantizers log advice on the root logger
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                facts = (
                    spec.stream(model, src.parent, raw, cfg, ctx, notes) if spec.stream else None
                )
                streamed = facts is not None
                if facts is None:
                    _save_prepared(model, src, prepared)
                    del model
                    facts = spec.write(prepared, raw, cfg, ctx, notes)
        except (ConfigError, InputError):
            raise
        except Exception as err:
            raise StepError(
                f"{cfg.mode} quantization failed: {first_line(err)}",
                hint="exclude the failing nodes with nodes_to_exclude, or try another mode",
            ) from None
        finally:
            root.setLevel(level)
        result = _load_produced(raw, spec.stream_producer if streamed else spec.producer, notes)
        counts = op_counts(result)
        counts["new_quantized_ops"] = new_ops(before, counts)
        if spec.did_nothing(facts, counts):
            raise StepError(
                f"{cfg.mode} {spec.nothing_text}: {spec.why_nothing}",
                hint="check op_types_to_quantize and nodes_to_exclude against 'onnxopt inspect'",
            )
        save_model(result, dst, external_data=ctx.config.external_data)
        del result
        try:
            first_run_in_child(
                dst, ctx.inputs, ctx.target, label or f"the {cfg.mode}-quantized model", work
            )
        except StepError:
            remove_model(dst)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        # ONNX Runtime's quantizers leave sessions (and their arenas) in reference cycles: a
        # search that quantizes many times would hold each one's memory until much later
        gc.collect()
    return {"mode": cfg.mode, **facts, **counts, "notes": notes, "warnings": warnings}


def new_ops(before: dict[str, Any], counts: dict[str, Any]) -> dict[str, int]:
    """Quantized op counts that grew from ``before`` to ``counts``."""
    return {
        op: n - before["quantized_ops"].get(op, 0)
        for op, n in counts["quantized_ops"].items()
        if n > before["quantized_ops"].get(op, 0)
    }
