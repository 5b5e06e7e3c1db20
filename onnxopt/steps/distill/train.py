"""The training loop of the distill step: batches, teacher targets, losses, schedule,
early stopping on the validation part, and the best weights restored at the end."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnxopt.config.distill import DistillStep
from onnxopt.verify import Inputs

log = logging.getLogger("onnxopt")

#: feeds -> {output or intermediate name: tensor}
Student = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class Targets:
    """The teacher's outputs (and matched intermediates) per sample, computed once each."""

    def __init__(self, run: Callable[[Inputs], dict[str, np.ndarray]]) -> None:
        self._run = run
        self._memo: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def of(self, pool: int, index: int, sample: Inputs) -> dict[str, np.ndarray]:
        """The targets of sample ``index`` of pool ``pool`` (0: training, 1: validation)."""
        key = (pool, index)
        if key not in self._memo:
            self._memo[key] = self._run(sample)
        return self._memo[key]


@dataclass
class Batches:
    """Micro-batches of training samples: samples of one shape concatenated on their first
    axis (``concat``), or one sample each with the gradient accumulated over a step."""

    samples: list[Inputs]
    batch_size: int
    concat: bool
    rng: np.random.Generator
    _queue: list[list[int]] = field(default_factory=list)

    def _epoch(self) -> list[list[int]]:
        if not self.concat:
            order = self.rng.permutation(len(self.samples)).tolist()
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, s in enumerate(self.samples):
            groups.setdefault(signature(s), []).append(i)
        chunks: list[list[int]] = []
        for members in groups.values():
            order = [members[k] for k in self.rng.permutation(len(members))]
            chunks += [
                order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)
            ]
        return [chunks[k] for k in self.rng.permutation(len(chunks))]

    def next(self) -> list[list[int]]:
        """The micro-batches (lists of sample indices) of the next optimizer step."""
        if not self._queue:
            self._queue = self._epoch()
        chunk = self._queue.pop()
        return [chunk] if self.concat else [[i] for i in chunk]


def signature(sample: Inputs) -> tuple[Any, ...]:
    """The inputs' shapes past the first axis and their dtypes: samples that share it can
    be concatenated on that axis."""
    return tuple((k, v.shape[1:], str(v.dtype)) for k, v in sorted(sample.items()))


def stack(samples: list[Inputs]) -> Inputs:
    """Samples of one shape concatenated on their first axis."""
    if len(samples) == 1:
        return samples[0]
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def as_torch(feeds: Inputs) -> dict[str, torch.Tensor]:
    """numpy feeds -> torch tensors (sharing memory)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


class Adapter(torch.nn.Module):
    """A learned linear map along the one axis on which a student's intermediate tensor
    differs from the teacher's (fewer channels after pruning)."""

    def __init__(self, axis: int, weight: torch.Tensor) -> None:
        super().__init__()
        self.axis = axis
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        moved = x.movedim(self.axis, -1)
        return (moved @ self.weight).movedim(-1, self.axis)


def make_adapter(student: torch.Tensor, teacher: torch.Tensor, name: str) -> Adapter | None:
    """None for equal shapes; else an adapter initialised by least squares on this pair."""
    if student.shape == teacher.shape:
        return None
    differ = [
        ax for ax, (s, t) in enumerate(zip(student.shape, teacher.shape, strict=False)) if s != t
    ]
    if student.dim() != teacher.dim() or len(differ) != 1:
        raise ValueError(
            f"intermediate {name!r} has shape {list(student.shape)} in the student and "
            f"{list(teacher.shape)} in the teacher: they must differ in one axis at most"
        )
    axis = differ[0]
    xs = student.detach().movedim(axis, -1).reshape(-1, student.shape[axis]).double()
    xt = teacher.detach().movedim(axis, -1).reshape(-1, teacher.shape[axis]).double()
    weight = torch.linalg.lstsq(xs, xt).solution.float()
    return Adapter(axis, weight)


@dataclass
class LossSpec:
    """What the loss compares and how: output names, their weights and normalizers."""

    outputs: list[str]
    weights: dict[str, float]
    intermediates: list[str]
    kind: str
    temperature: float
    #: mean square of the teacher's values per name (relative MSE)
    scale: dict[str, float] = field(default_factory=dict)
    #: outputs normalized part by part: the axis and each index's mean square
    parts: dict[str, tuple[int, torch.Tensor]] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)

    def _mse(self, name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The squared error relative to the teacher's mean square: of the whole tensor, or
        of each part along the output's ``parts`` axis, averaged over the parts."""
        if name not in self.parts:
            return F.mse_loss(s, t) / self.scale.get(name, 1.0)
        axis, scale = self.parts[name]
        err = (s - t).square().movedim(axis, -1)
        return (err.reshape(-1, err.shape[-1]).mean(0) / scale).mean()

    def __call__(
        self,
        got: dict[str, torch.Tensor],
        want: dict[str, torch.Tensor],
        outputs_only: bool = False,
    ) -> torch.Tensor:
        """The loss of ``got`` against ``want`` (the outputs' part only: ``outputs_only``)."""
        total = torch.zeros(())
        for name in self.outputs:
            w = self.weights.get(name, 1.0)
            if w == 0:
                continue
            s, t = got[name].float(), want[name].float()
            if self.kind == "kl" and s.dim() >= 1 and s.shape[-1] > 1:
                tau = self.temperature
                flat_s = s.reshape(-1, s.shape[-1]) / tau
                flat_t = t.reshape(-1, t.shape[-1]) / tau
                kl = F.kl_div(
                    F.log_softmax(flat_s, -1), F.log_softmax(flat_t, -1), log_target=True,
                    reduction="batchmean",
                )  # fmt: skip
                total = total + w * kl * tau * tau
            else:
                total = total + w * self._mse(name, s, t)
        for name in [] if outputs_only else self.intermediates:
            s, t = got[name].float(), want[name].float()
            adapter = self.adapters.get(name)
            if adapter is not None:
                s = adapter(s)
            total = total + self.weights[name] * F.mse_loss(s, t) / self.scale.get(name, 1.0)
        return total


@dataclass
class History:
    """What the loop did: the curve, the best evaluation, why it stopped."""

    curve: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    best_step: int = 0
    best_val: float = math.inf
    initial_val: float = math.inf
    stopped: str = "finished"
    #: each return to the best weights with a lower learning rate: {step, to_step}
    backtracks: list[dict[str, int]] = field(default_factory=list)

    def as_dict(self, points: int = 100) -> dict[str, Any]:
        """The report's form (the curve thinned to about ``points`` entries)."""
        every = max(1, math.ceil(len(self.curve) / points))
        curve = self.curve[::every]
        if self.curve and curve[-1] is not self.curve[-1]:
            curve.append(self.curve[-1])
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "stopped": self.stopped,
            "best_step": self.best_step,
            "backtracks": self.backtracks,
            "validation_loss_before": self.initial_val,
            "validation_loss_best": self.best_val,
            "loss_curve": curve,
            "validation": self.evals,
        }


def _lr_factor(cfg: DistillStep, total: int) -> Callable[[int], float]:
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def total_steps(cfg: DistillStep, n_train: int) -> int:
    """Optimizer steps of the run: ``steps``, or ``epochs`` passes of batches."""
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * math.ceil(n_train / cfg.batch_size)))
    return cfg.steps or 300


def _evaluate(
    student: torch.nn.Module,
    forward: Student,
    loss: LossSpec,
    targets: Targets,
    validation: list[Inputs],
) -> tuple[float, float]:
    """The validation loss of the outputs (the matched features train them, the outputs
    choose the weights) and the lowest cosine of an output to the teacher's."""
    student.eval()
    with torch.no_grad():
        values, cosines = [], []
        for i, sample in enumerate(validation):
            want = {k: torch.from_numpy(v) for k, v in targets.of(1, i, sample).items()}
            got = forward(as_torch(sample))
            values.append(float(loss(got, want, outputs_only=True)))
            cosines += [
                float(F.cosine_similarity(got[n].double().flatten(), want[n].double().flatten(), 0))
                for n in loss.outputs
            ]
    return float(np.mean(values)), float(min(cosines, default=1.0))


def _step_loss(
    forward: Student,
    loss: LossSpec,
    batches: Batches,
    targets: Targets,
    augment: Callable[[Inputs, np.random.Generator], Inputs] | None,
) -> float:
    """One optimisation step's gradients (over its micro-batches); its loss."""
    micro = batches.next()
    step_loss = 0.0
    for chunk in micro:
        feeds = stack([batches.samples[i] for i in chunk])
        want_np = [targets.of(0, i, batches.samples[i]) for i in chunk]
        want = {k: torch.from_numpy(np.concatenate([w[k] for w in want_np])) for k in want_np[0]}
        if augment is not None:
            feeds = augment(feeds, batches.rng)
        value = loss(forward(as_torch(feeds)), want) / len(micro)
        value.backward()  # type: ignore[no-untyped-call]
        step_loss += float(value.detach())
    return step_loss


#: a validation loss this many times the best one so far means the steps since went astray
BACKTRACK_AT = 1.5
#: ... the best weights are restored and the learning rate divided by this
BACKTRACK_LR = 3.0
#: at most this many times a run
MAX_BACKTRACKS = 3


def _backtrack(
    val: float,
    history: History,
    student: torch.nn.Module,
    best: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
) -> bool:
    """After a validation loss far above the best (a learning rate too high for these
    weights: fine-tuning a trained network at 1e-3 can undo it in 25 steps), go back to the
    best weights with a lower rate and fresh optimizer moments; whether it did."""
    if len(history.backtracks) >= MAX_BACKTRACKS:
        return False
    if math.isfinite(val) and val <= BACKTRACK_AT * history.best_val:
        return False
    student.load_state_dict(best)
    opt.state.clear()
    sched.base_lrs = [lr / BACKTRACK_LR for lr in sched.base_lrs]
    history.backtracks.append({"step": history.steps, "to_step": history.best_step})
    return True


def train(
    student: torch.nn.Module,
    forward: Student,
    loss: LossSpec,
    batches: Batches,
    targets: Targets,
    validation: list[Inputs],
    cfg: DistillStep,
    augment: Callable[[Inputs, np.random.Generator], Inputs] | None,
    progress: Callable[[str], None],
) -> History:
    """Train ``student`` (its parameters and the loss's adapters) and restore the weights
    that scored best on ``validation`` (the initial ones when none did better)."""
    params = [p for p in student.parameters() if p.requires_grad]
    extra = [p for a in loss.adapters.values() for p in a.parameters()]
    opt = torch.optim.AdamW(params + extra, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = total_steps(cfg, len(batches.samples))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(cfg, total))
    history = History()
    best = {k: v.detach().clone() for k, v in student.state_dict().items()}
    history.initial_val, first_cos = _evaluate(student, forward, loss, targets, validation)
    history.best_val = history.initial_val
    history.evals.append({"step": 0, "loss": history.initial_val, "min_cosine": first_cos})
    started = time.perf_counter()
    bad = 0
    for step in range(1, total + 1):
        student.train()
        opt.zero_grad(set_to_none=True)
        step_loss = _step_loss(forward, loss, batches, targets, augment)
        if not math.isfinite(step_loss):
            if _backtrack(step_loss, history, student, best, opt, sched):
                continue
            history.stopped = f"diverged at step {step} (loss {step_loss})"
            break
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params + extra, cfg.max_grad_norm)
        opt.step()
        sched.step()
        history.steps = step
        history.curve.append({"step": step, "loss": step_loss})
        out_of_time = time.perf_counter() - started > cfg.max_seconds
        if step % cfg.eval_every == 0 or step == total or out_of_time:
            val, val_cos = _evaluate(student, forward, loss, targets, validation)
            history.evals.append({"step": step, "loss": val, "min_cosine": val_cos})
            if math.isfinite(val) and val < history.best_val:
                history.best_val, history.best_step, bad = val, step, 0
                best = {k: v.detach().clone() for k, v in student.state_dict().items()}
            else:
                bad += 1
                if _backtrack(val, history, student, best, opt, sched):
                    progress(f"validation loss {val:.4g} at step {step}: back to step "
                             f"{history.best_step}, learning rate / {BACKTRACK_LR:g}")  # fmt: skip
            progress(
                f"step {step}/{total}, loss {step_loss:.4g}, validation loss {val:.4g}, "
                f"lowest cosine {val_cos:.4f} (best at step {history.best_step})"
            )
            if cfg.patience is not None and bad >= cfg.patience:
                history.stopped = f"no improvement in {bad} evaluations"
                break
        if out_of_time:
            history.stopped = f"time budget of {cfg.max_seconds:g} s reached"
            break
    history.seconds = time.perf_counter() - started
    student.load_state_dict(best)
    student.eval()
    return history
