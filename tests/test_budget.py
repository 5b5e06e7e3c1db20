"""Budgets that judge what the user cares about: chosen outputs, a task metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import InputError
from onnxopt.verify import Tol, compare_outputs
from onnxopt.verify.compare import merge_samples
from tests import models


def test_a_budget_on_chosen_outputs_records_the_others_without_judging_them() -> None:
    rng = np.random.default_rng(0)
    speech = rng.standard_normal((4, 32)).astype(np.float32)
    state = rng.standard_normal((2, 1, 16)).astype(np.float32)
    drifted = state + rng.standard_normal(state.shape).astype(np.float32)  # cosine ~0.7
    names = ["speech", "state_out"]
    everything = compare_outputs(
        [speech, state], [speech * 1.001, drifted], names, Tol(float("inf"), float("inf"), 0.99)
    )
    assert not everything["passed"]
    tol = Tol(float("inf"), float("inf"), 0.99, outputs=("speech",))
    judged = compare_outputs([speech, state], [speech * 1.001, drifted], names, tol)
    assert judged["passed"]
    rows = {r["name"]: r for r in judged["outputs"]}
    assert rows["state_out"]["judged"] is False and rows["state_out"]["cosine"] < 0.99
    assert "judged" not in rows["speech"]
    assert merge_samples([judged, judged])["passed"]
    # the judged output failing fails the comparison
    bad = compare_outputs([speech, state], [-speech, state], names, tol)
    assert not bad["passed"]
    with pytest.raises(InputError, match="not outputs of the model"):
        compare_outputs([speech], [speech], ["speech"], Tol(1, 1, 0.9, outputs=("logits",)))


def test_an_empty_output_list_is_refused(tmp_path: Path) -> None:
    from onnxopt.errors import ConfigError

    src = models.add_relu(tmp_path / "m.onnx")
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "o"),
        "steps": [{"type": "simplify", "tolerance": {"outputs": []}}],
    }
    with pytest.raises(ConfigError, match="outputs"):
        parse_config(cfg)
    cfg["steps"] = [{"type": "simplify", "tolerance": {"outputs": ["logits"]}}]
    with pytest.raises(InputError, match="'logits'"):
        run_pipeline(parse_config(cfg), tmp_path)
    cfg["steps"] = [{"type": "simplify", "tolerance": {"outputs": ["y"]}}]
    entry = run_pipeline(parse_config(cfg), tmp_path)["steps"][0]
    assert entry["verification"]["tolerance"]["outputs"] == ["y"]


def test_an_onnxsim_failure_falls_back_to_ort_basic_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxsim's known failure on valid models (real VAD exports with If bodies reading
    # outer-scope values) cannot be rebuilt from a small model here, so onnxsim itself is
    # made to fail as it does there; the fallback under test runs for real
    import onnxsim

    from onnxopt.errors import StepError

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Nodes in a graph must be topologically sorted, however input 'a'")

    monkeypatch.setattr(onnxsim, "simplify", fails)
    src = models.add_relu(tmp_path / "m.onnx")
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / "o"),
        "steps": [{"type": "simplify", "guard": None}],
    }
    entry = run_pipeline(parse_config(cfg), tmp_path)["steps"][0]
    (onnxsim_pass,) = entry["report"]["backends"]
    assert onnxsim_pass["fallback"] == "ort_basic" and onnxsim_pass["level"] == "basic"
    assert "topologically sorted" in onnxsim_pass["onnxsim_error"]
    assert any("basic level instead" in w for w in entry["warnings"])
    assert entry["verification"]["passed"] and entry["status"] == "ok"
    assert onnxsim_pass["nodes_after"] < onnxsim_pass["nodes_before"]  # the constant Add folded

    cfg["output_dir"] = str(tmp_path / "strict")
    cfg["steps"] = [{"type": "simplify", "onnxsim": {"fallback": "none"}}]
    with pytest.raises(StepError, match="topologically sorted"):
        run_pipeline(parse_config(cfg), tmp_path)
