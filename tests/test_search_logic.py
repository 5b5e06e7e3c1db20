"""The search's decisions with a fake runner: the Pareto front, the choice, the ladder's
stopping rule and which parents a stage expands (no model is built or timed here)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from onnxopt.config import OptimizeStep
from onnxopt.steps.optimize import stages
from onnxopt.steps.optimize.search import Row, Search, pareto
from tests import models


class FakeSearch(Search):
    """A Search whose candidates are decided by ``verdict(label) -> (status, speed-up)``
    instead of being built, judged and timed."""

    def __init__(self, src: Path, cfg: OptimizeStep, verdict: Any, samples: int = 0) -> None:
        self.src, self.cfg = src, cfg
        self.ctx = types.SimpleNamespace(calibration=[{}] * samples)  # type: ignore[assignment]
        self.rows, self.notes, self.verifications = [], [], {}
        self.paths = {"source": src}
        self.stopped = self.refused_structure = None
        self.expanded = set()
        self.verdict = verdict
        self.started = 0.0
        self.timed: list[list[str]] = []
        self.source = {"id": "source", "stage": "source", "label": "source", "chain": []}
        self.source.update(status="verified", speedup=1.0, score=1.0)
        self.rows.append(self.source)

    def out_of_time(self) -> bool:
        return False

    def candidate(self, stage: str, label: str, parent: Row, step: dict[str, Any]) -> Row:
        row: Row = {"id": f"c{len(self.rows):02d}", "stage": stage, "label": label}
        row.update(parent=parent["id"], chain=[*parent["chain"], step])
        status, speedup, score = self.verdict(label)
        row.update(status=status)
        if status in ("verified", "outside budget"):
            self.paths[row["id"]] = self.src
            row.update(speedup=speedup, score=score, verdict="faster" if speedup > 1 else "same")
        self.rows.append(row)
        return row

    def time(self, rows: list[Row], trials: int | None = None) -> None:
        self.timed.append([r["label"] for r in rows])


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return models.matmul_chain(tmp_path / "m.onnx", 2, 16, external=False)


def _cfg(**options: Any) -> OptimizeStep:
    return OptimizeStep(type="optimize", **options)


def test_the_pareto_front_keeps_what_nothing_beats_on_speed_and_score() -> None:
    rows = [
        {"id": "a", "speedup": 2.0, "score": 0.99},
        {"id": "b", "speedup": 1.5, "score": 0.999},
        {"id": "c", "speedup": 1.4, "score": 0.98},  # beaten by a and b
        {"id": "d", "speedup": 3.0, "score": 0.97},
        {"id": "e", "speedup": None, "score": 1.0},  # not timed: not on the front
    ]
    assert [r["id"] for r in pareto(rows)] == ["d", "a", "b"]


@pytest.mark.parametrize(
    ("fails_from", "tried"),
    [(0.25, ["prune 0.25"]), (0.5, ["prune 0.25", "prune 0.5"]), (None, None)],
)
def test_the_ladder_stops_at_the_first_ratio_outside_the_budget(
    src: Path, fails_from: float | None, tried: list[str] | None
) -> None:
    def verdict(label: str) -> tuple[str, float, float]:
        ratio = float(label.split()[1])
        if fails_from is not None and ratio >= fails_from:
            return "outside budget", 1.0 + ratio, 0.9
        return "verified", 1.0 + ratio, 0.995

    cfg = _cfg(recover="compensate", prune_ratios=[0.25, 0.5, 0.75])
    search = FakeSearch(src, cfg, verdict)
    stages.structure(search)
    labels = [r["label"] for r in search.rows[1:]]
    assert labels == (tried or ["prune 0.25", "prune 0.5", "prune 0.75"])
    assert (search.refused_structure is None) == (fails_from is None)
    verified = [r["label"] for r in search.rows[1:] if r["status"] == "verified"]
    assert search.timed == [verified]


def test_the_default_ladder_climbs_shares_of_the_macs(src: Path) -> None:
    def verdict(label: str) -> tuple[str, float, float]:
        share = float(label.split()[1].rstrip("%")) / 100
        return ("verified" if share < 0.3 else "outside budget"), 1 + share, 0.99

    search = FakeSearch(src, _cfg(recover="compensate"), verdict)
    stages.structure(search)
    rows = search.rows[1:]
    assert [r["label"] for r in rows] == ["prune 10% MACs", "prune 20% MACs", "prune 35% MACs"]
    assert [r["chain"][-1]["macs_target"] for r in rows] == [0.1, 0.2, 0.35]
    assert all("ratio" not in r["chain"][-1] for r in rows)  # allocated, not uniform
    assert search.refused_structure is not None and "35% MACs" in search.refused_structure


def test_distillation_recovers_a_pruned_model_before_the_ladder_gives_up(src: Path) -> None:
    def verdict(label: str) -> tuple[str, float, float]:
        if label.endswith("+ distill"):
            ok = not label.startswith("prune 0.75")
            return ("verified" if ok else "outside budget"), 1.5, 0.995 if ok else 0.9
        return "outside budget", 1.5, 0.9

    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("distillation needs torch")
    cfg = _cfg(recover="auto", min_distill_samples=8, prune_ratios=[0.25, 0.5, 0.75])
    search = FakeSearch(src, cfg, verdict, samples=32)
    stages.structure(search)
    labels = [r["label"] for r in search.rows[1:]]
    assert labels == [
        "prune 0.25",
        "prune 0.25 + distill",
        "prune 0.5",
        "prune 0.5 + distill",
        "prune 0.75",
        "prune 0.75 + distill",
    ]
    assert search.refused_structure is not None and "0.75 + distill" in search.refused_structure


def test_a_stage_expands_the_front_and_the_source_once_and_never_a_later_step(
    src: Path,
) -> None:
    search = FakeSearch(src, _cfg(beam=1), lambda label: ("verified", 2.0, 0.999))
    stages.singles(search)  # before the structure stage: graph and precision on the source
    assert [r["label"] for r in search.rows[1:]] == ["simplify", "simplify > quantize", "quantize"]
    stages.graph(search)  # nothing new: no parent is simplified twice or after quantize
    stages.precision(search)
    assert len(search.rows) == 4
    pruned = {"id": "p", "stage": "structure", "label": "prune 0.5", "status": "verified"}
    pruned.update(chain=[{"type": "prune"}], speedup=3.0, score=0.9995)
    search.rows.append(pruned)
    stages.graph(search)
    stages.precision(search)  # the front's fastest that may still be quantized (beam 1)
    assert [r["label"] for r in search.rows[5:]] == [
        "prune 0.5 > simplify",
        "prune 0.5 > quantize",
    ]


def test_a_parent_is_not_pushed_off_the_front_by_a_model_that_cannot_be_a_parent(
    src: Path,
) -> None:
    """The quantized source is faster and more faithful than the pruned model: the pruned
    model is still the front of the models that may be quantized, so it is quantized."""
    speeds = {"simplify": (1.0, 1.0), "simplify > quantize": (2.2, 1.0), "quantize": (2.2, 1.0)}

    def verdict(label: str) -> tuple[str, float, float]:
        speed, score = speeds.get(label, (3.0, 0.99))
        return "verified", speed, score

    search = FakeSearch(src, _cfg(beam=1), verdict)
    stages.singles(search)
    pruned = {"id": "p", "stage": "structure", "label": "prune 0.5", "status": "verified"}
    pruned.update(chain=[{"type": "prune"}], speedup=2.0, score=0.995)
    search.rows.append(pruned)
    assert pruned not in pareto(search.verified())  # beaten by quantize on both counts
    stages.graph(search)
    stages.precision(search)
    labels = [r["label"] for r in search.rows[search.rows.index(pruned) + 1 :]]
    assert labels == ["prune 0.5 > simplify", "prune 0.5 > simplify > quantize"]


def test_the_choice_is_the_fastest_verified_candidate_beyond_the_noise(src: Path) -> None:
    search = FakeSearch(src, _cfg(), lambda label: ("verified", 1.0, 1.0))
    rows = [
        {"id": "a", "status": "verified", "speedup": 1.8, "verdict": "faster", "score": 0.99},
        {"id": "b", "status": "verified", "speedup": 2.5, "verdict": "same", "score": 0.99},
        {"id": "c", "status": "outside budget", "speedup": 3.0, "verdict": "faster"},
        {"id": "d", "status": "verified", "speedup": 1.6, "verdict": "faster", "score": 0.999},
    ]
    for row in rows:
        row.update(label=row["id"], chain=[])
    search.rows += rows
    chosen = stages.choose(search)
    assert chosen is not None and chosen["id"] == "a"
    assert search.timed == [["a", "d"]]  # the two fastest timed again before the choice
    assert stages.choose(FakeSearch(src, _cfg(), lambda label: ("verified", 1.0, 1.0))) is None


def test_the_stage_table_is_the_configs_stage_list() -> None:
    from onnxopt.config.optimize import STAGE_ORDER
    from onnxopt.steps.optimize.space import STEP_RULES

    assert tuple(stages.STAGES) == STAGE_ORDER
    assert {rule.stage for rule in STEP_RULES.values()} == set(STAGE_ORDER)
    # only quantize keeps the task metric inside its step and pins what it chose
    assert [t for t, r in STEP_RULES.items() if r.keeps_evaluate or r.pins_choice] == ["quantize"]
