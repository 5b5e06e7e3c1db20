"""The model being trained: the parent ONNX graph run by torch, or a PyTorch factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnxopt.config.distill import DistillStep
from onnxopt.errors import InputError, StepError
from onnxopt.steps.base import StepContext
from onnxopt.steps.distill.fidelity import uneven_parts
from onnxopt.steps.distill.train import LossSpec, Targets, as_torch, make_adapter, stack
from onnxopt.verify import Inputs

#: how far the converted graph may be from ONNX Runtime on the parent's own outputs
_CONVERSION_RTOL = 1e-3


class Student:
    """A student: its module, its forward (feeds -> named tensors) and how it is saved."""

    module: torch.nn.Module
    concat: bool
    facts: dict[str, Any]

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named outputs (and matched intermediates) for ``feeds``."""
        raise NotImplementedError

    def write(self, dst: Path) -> None:
        """Save the trained student as an ONNX model at ``dst``."""
        raise NotImplementedError

    def loss_spec(
        self,
        cfg: DistillStep,
        names: list[str],
        targets: Targets,
        train: list[Inputs],
        validation: list[Inputs],
        matched: dict[str, float],
    ) -> LossSpec:
        """The loss: its normalizers from the teacher's values on the validation samples,
        its adapters (for intermediates of another width) fitted on the first sample.
        ``matched``: the intermediate tensors and their loss weights."""
        spec = LossSpec(
            outputs=names,
            weights={**matched, **cfg.output_weights},
            intermediates=list(matched),
            kind=cfg.loss,
            temperature=cfg.temperature,
        )
        wanted = [targets.of(1, i, s) for i, s in enumerate(validation)]
        for name in [*names, *matched]:
            spec.scale[name] = max(float(np.mean([np.mean(w[name] ** 2) for w in wanted])), 1e-12)
        for name in names:
            found = uneven_parts([w[name] for w in wanted])
            if found is not None:
                spec.parts[name] = (found[0], torch.from_numpy(found[1]).float())
        if matched:
            with torch.no_grad():
                got = self.forward(as_torch(train[0]))
            want = targets.of(0, 0, train[0])
            for name in matched:
                try:
                    adapter = make_adapter(got[name], torch.from_numpy(want[name]), name)
                except ValueError as err:
                    raise InputError(str(err), hint="match tensors of equal rank") from None
                if adapter is not None:
                    spec.adapters[name] = adapter
        return spec


class GraphStudent(Student):
    """The parent ONNX graph with its weights as torch parameters."""

    def __init__(
        self, src: Path, ctx: StepContext, names: list[str], intermediates: list[str]
    ) -> None:
        from onnxopt.modelio import load_model
        from onnxopt.steps.distill.torch_graph import ConversionError, GraphModule, prepare

        self.model = prepare(load_model(src))
        try:
            self.module = GraphModule(self.model)
        except ConversionError as err:
            raise InputError(
                f"{src.name} uses operators the distill step cannot train: {err}",
                hint=err.hint or "give a PyTorch student (student: {factory: ...}) instead",
            ) from None
        known = {o for node in self.model.graph.node for o in node.output}
        unknown = [n for n in intermediates if n not in known]
        if unknown:
            raise InputError(
                f"intermediates {unknown} are not tensors of the student {src.name}",
                hint="name tensors both graphs compute",
            )
        self.wanted = [*names, *intermediates]
        self.src = src
        self.external_data = ctx.config.external_data
        self.concat = True
        weights = self.module.named_weights()
        self.facts = {
            "kind": "parent graph",
            "trained_tensors": len(weights),
            "trained_parameters": int(sum(p.numel() for p in weights.values())),
        }

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The named outputs (and matched intermediates) for ``feeds``."""
        return self.module(feeds, self.wanted)  # type: ignore[no-any-return]

    def write(self, dst: Path) -> None:
        """The parent's graph with the trained weights."""
        from onnxopt.modelio import save_model
        from onnxopt.steps.distill.torch_graph import write_weights

        write_weights(self.model, self.module)  # type: ignore[arg-type]
        save_model(self.model, dst, external_data=self.external_data)

    def check(self, samples: list[Inputs], ctx: StepContext) -> None:
        """The converted graph gives ONNX Runtime's outputs on a training sample (else a
        failure of onnxopt, exit 1); then whether samples can be concatenated on their
        first axis (else one sample per forward pass, gradients accumulated)."""
        from onnxopt.runtime import make_session, run_session

        session = make_session(self.src, ctx.target, level="disable")
        order = [o.name for o in session.get_outputs()]
        sample = samples[0]
        expected = dict(zip(order, run_session(session, sample, self.src.name), strict=True))
        with torch.no_grad():
            got = self.module(as_torch(sample), order)
        worst = 0.0
        for name in order:
            want = expected[name].astype(np.float64)
            err = float(np.max(np.abs(got[name].double().numpy() - want), initial=0.0))
            scale = float(np.max(np.abs(want), initial=0.0)) or 1.0
            worst = max(worst, err / scale)
            if err > _CONVERSION_RTOL * scale + 1e-5:
                raise StepError(
                    f"the torch form of {self.src.name} differs from ONNX Runtime on output "
                    f"{name!r} (max error {err:.3g}, largest value {scale:.3g}) before training",
                    hint="this is onnxopt's failure, not your input's; please report it, or "
                    "give a PyTorch student (student: {factory: ...})",
                )
        self.facts["conversion_max_rel_err"] = worst
        self.concat = _batches_agree(session, samples, order, self.src.name)
        self.facts["batching"] = "concatenated" if self.concat else "one sample per pass"


def _batches_agree(session: Any, samples: list[Inputs], order: list[str], where: str) -> bool:
    """Whether two samples concatenated on their first axis give their outputs concatenated
    (a graph with a fixed batch, or one that mixes samples, cannot be batched)."""
    from onnxopt.runtime import run_session
    from onnxopt.steps.distill.train import signature

    first = samples[0]
    other = next((s for s in samples[1:] if signature(s) == signature(first)), None)
    if other is None:
        return True
    try:
        joined = run_session(session, stack([first, other]), where)
    except Exception:
        return False
    parts = [run_session(session, s, where) for s in (first, other)]
    for k, value in enumerate(joined):
        both = np.concatenate([parts[0][k], parts[1][k]]) if parts[0][k].ndim else None
        if both is None or both.shape != value.shape:
            return False
        scale = float(np.max(np.abs(both), initial=0.0)) or 1.0
        if float(np.max(np.abs(both - value), initial=0.0)) > 1e-3 * scale + 1e-5:
            return False
    return True


class FactoryStudent(Student):
    """A PyTorch module of the user's own; exported by the export step's code after training."""

    def __init__(
        self, cfg: DistillStep, ctx: StepContext, outputs: list[str], names: list[str]
    ) -> None:
        from onnxopt.config import ModelSource
        from onnxopt.steps.export import build_module

        assert cfg.student is not None
        self.source = ModelSource(
            factory=cfg.student.factory,
            factory_args=cfg.student.factory_args,
            weights=cfg.student.weights,
        )
        self.module = build_module(self.source, ctx.base_dir)
        self.inputs = [s.name for s in ctx.specs]
        self.outputs = outputs
        self.names = names
        self.cfg = cfg
        self.ctx = ctx
        self.concat = all(s.shape and isinstance(s.shape[0], str) for s in ctx.specs)
        self.facts = {
            "kind": "factory",
            "factory": cfg.student.factory,
            "trained_parameters": int(sum(p.numel() for p in self.module.parameters())),
            "batching": "concatenated" if self.concat else "one sample per pass",
        }

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The module's outputs, named after the parent's by position."""
        from onnxopt.steps.export import flatten_tensors

        result = flatten_tensors(self.module(*[feeds[n] for n in self.inputs]))
        if len(result) != len(self.outputs):
            raise InputError(
                f"student factory {self.cfg.student.factory!r} returns {len(result)} "  # type: ignore[union-attr]
                f"tensors; the parent has {len(self.outputs)} outputs {self.outputs}"
            )
        return dict(zip(self.outputs, result, strict=True))

    def write(self, dst: Path) -> None:
        """Export the trained module (verified against itself by the export step's code)."""
        from onnxopt.config import ExportStep
        from onnxopt.steps.export import run as export

        assert self.ctx.scratch is not None and self.cfg.student is not None
        weights = self.ctx.scratch / "student.pt"
        torch.save(self.module.state_dict(), str(weights))
        source = self.source.model_copy(update={"weights": str(weights)})
        config = self.ctx.config.model_copy(update={"model": source})
        ctx = dataclasses.replace(self.ctx, config=config, evaluator=None)
        step = ExportStep(type="export", opset=self.cfg.student.opset, output_names=self.outputs)
        export(None, dst, step, ctx)


def make_student(
    src: Path,
    cfg: DistillStep,
    ctx: StepContext,
    names: list[str],
    train: list[Inputs],
    intermediates: list[str],
) -> Student:
    """The student of this run (computing ``names`` and ``intermediates``), checked on the
    training samples."""
    from onnxopt.modelio import load_model

    outputs = [o.name for o in load_model(src, load_weights=False).graph.output]
    if cfg.student is not None:
        student: Student = FactoryStudent(cfg, ctx, outputs, names)
        with torch.no_grad():
            student.forward(as_torch(train[0]))  # the factory's outputs fit the parent's
        return student
    graph = GraphStudent(src, ctx, names, intermediates)
    graph.check(train, ctx)
    return graph
