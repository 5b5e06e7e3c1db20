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


EVALUATE = '''
import numpy as np
from pathlib import Path

def accuracy(runner, data=None):
    """Top-1 accuracy on labelled samples (the labels: the float model's answers)."""
    d = np.load(data or Path(__file__).with_name("task.npz"))
    logits = runner.predict({"x": d["x"]})[runner.output_names[0]]
    return float(np.mean(np.argmax(logits, axis=1) == d["labels"]))

def scores(runner, data=None):
    return {"loss_like": -1.0, "acc": accuracy(runner, data)}

def broken(runner, data=None):
    raise ValueError("no such column")

def not_a_number(runner, data=None):
    return "high"
'''


def _task(tmp_path: Path, src: Path) -> Path:
    """evaluate.py and task.npz beside it: labels are the float model's own answers.

    The samples are the 256 of 4096 random draws whose float answer wins by the widest
    margin (at least 0.8 of the logits' spread), so a sound int8 result keeps every answer
    on any CPU's kernels (measured: the largest logit error of dynamic int8 with 7-bit or
    VNNI kernels is 0.17 of the spread), and only a broken one loses them.
    """
    import onnxruntime as ort

    x = np.random.default_rng(3).standard_normal((4096, 64)).astype(np.float32)
    logits = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / logits.std(axis=1)
    keep = np.argsort(-margin)[:256]
    assert margin[keep].min() >= 0.8, margin[keep].min()
    np.savez(tmp_path / "task.npz", x=x[keep], labels=np.argmax(logits[keep], axis=1))
    (tmp_path / "evaluate.py").write_text(EVALUATE)
    return tmp_path / "evaluate.py"


def _quantize(tmp_path: Path, out: str, src: Path, evaluate: dict, **step: object) -> dict:
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(tmp_path / out),
        "evaluate": evaluate,
        "steps": [{"type": "quantize", "mode": "dynamic", "guard": None, **step}],
    }
    return run_pipeline(parse_config(cfg), tmp_path)["steps"][0]


def test_the_task_metric_rejects_a_planted_bad_candidate_and_accepts_a_good_one(
    tmp_path: Path,
) -> None:
    from onnxopt.errors import VerificationError

    src = models.outlier_chain(tmp_path / "o.onnx")
    code = _task(tmp_path, src)
    evaluate = {"callable": f"{code}:accuracy", "budget": {"max_drop": 0.05}}
    # the outlier wrecks the int8 scales of the layers around it, and the answers
    with pytest.raises(VerificationError, match="task score 'score'") as err:
        _quantize(tmp_path, "bad", src, evaluate)
    assert "max_drop 0.05" in str(err.value) and "--max-drop" in (err.value.hint or "")
    assert not list((tmp_path / "bad").glob("*.onnx"))
    # without the outlier, int8 keeps the answers
    good = tmp_path / "good"
    good.mkdir()
    src = models.matmul_chain(good / "m.onnx", 3, 64, external=False)
    code = _task(good, src)
    evaluate = {"callable": f"{code}:accuracy", "budget": {"max_drop": 0.05}}
    entry = _quantize(good, "o", src, evaluate)
    task = entry["verification"]["task"]
    assert task["parent_score"] == 1.0 and task["drop"] <= 0.05 and task["passed"]
    assert entry["verification"]["outputs_judged"] is False  # no tolerance of its own
    # a step's own tolerance is judged beside the task
    with pytest.raises(VerificationError, match="cosine"):
        _quantize(good, "both", src, evaluate, tolerance={"min_cosine": 0.9999999})


def test_named_scores_judge_the_primary_and_record_all(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 3, 64, external=False)
    code = _task(tmp_path, src)
    evaluate = {"callable": f"{code}:scores", "primary": "acc", "budget": {"max_drop": 0.05}}
    task = _quantize(tmp_path, "o", src, evaluate)["verification"]["task"]
    assert task["primary"] == "acc" and set(task["scores"]) == {"loss_like", "acc"}
    with pytest.raises(InputError, match="'top5'"):
        _quantize(tmp_path, "p", src, {**evaluate, "primary": "top5"})


def test_a_failing_metric_is_the_users_error_in_one_line(tmp_path: Path) -> None:
    from onnxopt.errors import ExitCode
    from tests.conftest import error_line, file_states, run_cli

    src = models.matmul_chain(tmp_path / "m.onnx", 3, 64, external=False)
    code = _task(tmp_path, src)
    before = file_states(tmp_path)
    for fn, expected in (
        ("broken", "raised ValueError: no such column"),
        ("not_a_number", "'high'"),
    ):
        out = tmp_path / f"{fn}.onnx"
        proc = run_cli("quantize", src, "-o", out, "-m", "dynamic", "--evaluate", f"{code}:{fn}")
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert expected in error_line(proc) and "Traceback" not in proc.stderr
        assert not out.exists()
    args = ["quantize", src, "-o", tmp_path / "q.onnx", "-m", "dynamic", "--no-guard"]
    proc = run_cli(*args, "--max-drop", "0.1")
    assert proc.returncode == ExitCode.USAGE and "--evaluate" in error_line(proc)
    proc = run_cli(*args, "--evaluate", f"{code}:accuracy", "--max-drop", "0.05")
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "task score" in proc.stdout + proc.stderr or "task score" in " ".join(
        proc.stdout.split()
    )
    after = file_states(tmp_path)
    assert {p: after[p] for p in before} == before  # the user's files are untouched
