"""The user's task metric: a function that scores a model through a runner.

The function gets a :class:`Runner` (``predict(feeds) -> {output name: array}`` on an ONNX
Runtime session of the model, on the pipeline's target) and returns a score, higher is
better, or a dict of named scores. The parent and the candidate are scored on the same
data; the drop (parent - candidate) must stay within the budget.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.config import EvaluateConfig, Target
from onnxopt.errors import InputError, first_line
from onnxopt.verify.compare import Tol, Verification


class Runner:
    """What the user's function drives: one session of the model being scored."""

    def __init__(self, session: Any, name: str) -> None:
        self._session = session
        self._name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def predict(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name -> array); output name -> array."""
        from onnxopt.runtime import run_session

        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        outputs = run_session(self._session, arrays, self._name)
        return dict(zip(self.output_names, outputs, strict=True))


class Evaluator:
    """Scores models with the user's function (each model file once) and judges the drop."""

    def __init__(
        self, cfg: EvaluateConfig, base_dir: Path, invocation_dir: Path, target: Target
    ) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self.invocation_dir = invocation_dir
        self.target = target
        self._fn: Callable[..., Any] | None = None
        self._scores: dict[str, dict[str, float]] = {}

    def _function(self) -> Callable[..., Any]:
        if self._fn is None:
            from onnxopt.factory import load_factory

            self._fn = load_factory(self.cfg.callable, self.base_dir)
        return self._fn

    def scores(self, model: Path) -> dict[str, float]:
        """The function's scores of ``model`` (name -> value; a single score is "score")."""
        from onnxopt import _fs
        from onnxopt.modelio import model_digest
        from onnxopt.runtime import make_session

        key = model_digest(model)
        if key in self._scores:
            return self._scores[key]
        fn = self._function()
        runner = Runner(make_session(model, self.target), model.name)
        args: list[Any] = [runner]
        if self.cfg.data is not None:
            args.append(self.cfg.data)  # absolute: the config resolved it
        where = f"evaluate callable {self.cfg.callable!r}"
        try:
            inspect.signature(fn).bind(*args)
        except TypeError:
            wanted = "(runner, data)" if len(args) > 1 else "(runner)"
            raise InputError(
                f"{where} must take {len(args)} argument(s) {wanted}",
                hint="def evaluate(runner, data=None) -> float",
            ) from None
        try:
            with _fs.user_cwd(self.invocation_dir):
                value = fn(*args)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{where} raised {type(err).__name__}: {first_line(err)}") from None
        self._scores[key] = _as_scores(value, where)
        return self._scores[key]

    def judge(self, parent: Path, child: Path) -> dict[str, Any]:
        """Parent and candidate scores, the drop and the verdict."""
        before, after = self.scores(parent), self.scores(child)
        primary = self.cfg.primary or next(iter(before))
        if primary not in before or primary not in after:
            raise InputError(
                f"evaluate.primary {primary!r} is not a score the function returns; it returns "
                f"{sorted(before)}"
            )
        drop = before[primary] - after[primary]
        budget = self.cfg.budget.max_drop
        result: dict[str, Any] = {
            "primary": primary,
            "parent_score": before[primary],
            "score": after[primary],
            "drop": drop,
            "max_drop": budget,
            "passed": drop <= budget,
        }
        if len(before) > 1:
            result["scores"] = {n: {"parent": before[n], "candidate": after.get(n)} for n in before}
        return result

    def apply(
        self, verification: Verification, parent: Path, child: Path, tol: Tol
    ) -> Verification:
        """``verification`` with the task's verdict; the outputs' budget then counts only
        when the step set its own tolerance."""
        if verification.problem is not None:
            return verification
        return dataclasses.replace(
            verification, task=self.judge(parent, child), outputs_judged=tol.explicit
        )


def _as_scores(value: Any, where: str) -> dict[str, float]:
    items = value.items() if isinstance(value, Mapping) else [("score", value)]
    scores: dict[str, float] = {}
    for name, v in items:
        try:
            number = float(v)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise InputError(
                f"{where} returned {v!r} for {name!r}; expected a finite number (higher is "
                "better) or a dict of them"
            )
        scores[str(name)] = number
    if not scores:
        raise InputError(f"{where} returned no score", hint="return a number, higher is better")
    return scores
