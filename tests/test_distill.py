"""The distill step: a pruned student learns its teacher on the user's samples, proved on
held-out samples against the teacher; keep-parent, caching, errors and interrupts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.errors import ExitCode
from tests.conftest import (
    REPO,
    Untouched,
    default_sigint,
    error_line,
    finished_artifacts,
    run_cli,
    write_yaml,
)

FAST = {"steps": 120, "eval_every": 20, "batch_size": 16}


@pytest.fixture(scope="module")
def pruned(mlp_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MLP sample with half its hidden channels removed (no compensation)."""
    out = tmp_path_factory.mktemp("pruned") / "mlp.p50.onnx"
    onnxopt.prune(mlp_onnx, out, ratio=0.5, measure_speed=False)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 samples of the MLP's features (stacked on the first axis)."""
    path = tmp_path_factory.mktemp("data") / "features.npz"
    rng = np.random.default_rng(5)
    np.savez(path, features=rng.standard_normal((400, 64)).astype(np.float32))
    return path


def _data(path: Path) -> dict:
    return {"source": "npz", "path": str(path), "samples": 400}


def _entry(manifest: dict) -> dict:
    return manifest["steps"][-1]


def test_distill_brings_a_pruned_student_back_to_its_teacher(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.onnx"
    with Untouched(pruned, mlp_onnx, samples):
        manifest = onnxopt.distill(pruned, out, teacher=mlp_onnx, data=_data(samples), **FAST)
    entry = _entry(manifest)
    report = entry["report"]
    before, after = report["fidelity_before"], report["fidelity_after"]
    assert after["relative_mse"] < 0.5 * before["relative_mse"]
    assert after["min_cosine"] > before["min_cosine"]
    # trained on the calibration part, chosen on its validation part, proved on 100 held out
    assert report["data"] == {"source": "data", "train": 255, "validation": 45, "held_out": 100}
    assert entry["verification"]["passed"] and entry["verification"]["main"]["samples"] == 100
    assert report["student"]["kind"] == "parent graph"
    assert report["student"]["conversion_max_rel_err"] < 1e-4
    assert report["student"]["batching"] == "concatenated"
    training = report["training"]
    assert training["best_step"] > 0 and training["steps"] == 120
    assert training["validation_loss_best"] < training["validation_loss_before"]
    # the same graph: only its weights changed
    a, b = onnx.load(pruned), onnx.load(out)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    assert (tmp_path / "d.loss.png").is_file()


def test_min_cosine_budget_is_judged_against_the_teacher(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.onnx"
    proc = run_cli(
        "distill", pruned, "-o", out, "--teacher", mlp_onnx, "--data", samples,
        "--steps", "20", "--min-cosine", "0.99999", "-q",
    )  # fmt: skip
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    assert "differs from its parent" in error_line(proc) or "cosine" in error_line(proc)
    assert not out.exists()


def test_a_diverging_run_keeps_the_parent(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.onnx"
    manifest = onnxopt.distill(
        pruned, out, teacher=mlp_onnx, data=_data(samples), steps=30, eval_every=5, lr=1e4,
        max_grad_norm=None, warmup=0,
    )  # fmt: skip
    entry = _entry(manifest)
    assert entry["kept_parent"] is True
    assert "did not lower the validation error" in entry["kept_parent_reason"]
    assert entry["report"]["training"]["best_step"] == 0
    # the output is an unchanged copy of the student
    assert out.read_bytes() == pruned.read_bytes()


def test_a_rate_too_high_goes_back_to_the_best_weights_with_a_lower_one(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxopt.steps.distill.train as loop

    rough = {"steps": 60, "eval_every": 5, "lr": 0.3, "max_grad_norm": None, "warmup": 0}
    entry = _entry(
        onnxopt.distill(pruned, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples), **rough)
    )
    training, report = entry["report"]["training"], entry["report"]
    assert not entry.get("kept_parent"), entry.get("kept_parent_reason")
    assert 1 <= len(training["backtracks"]) <= loop.MAX_BACKTRACKS
    assert report["fidelity_after"]["relative_mse"] < report["fidelity_before"]["relative_mse"]
    # the same run that may not go back never recovers from its first steps
    monkeypatch.setattr(loop, "MAX_BACKTRACKS", 0)
    stuck = _entry(
        onnxopt.distill(pruned, tmp_path / "s.onnx", teacher=mlp_onnx, data=_data(samples), **rough)
    )
    assert stuck["kept_parent"] is True and stuck["report"]["training"]["backtracks"] == []


def _detector_values(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """[1, 4 + 3, 50] per sample: boxes in the hundreds beside scores in 0..1."""
    out = []
    for _ in range(n):
        boxes = rng.uniform(0, 320, (1, 4, 50))
        scores = rng.uniform(0, 1, (1, 3, 50)) ** 4
        out.append(np.concatenate([boxes, scores], axis=1))
    return out


def test_an_output_of_uneven_parts_is_learned_and_judged_part_by_part() -> None:
    import torch

    from onnxopt.steps.distill.fidelity import relative_error, uneven_parts
    from onnxopt.steps.distill.train import LossSpec

    rng = np.random.default_rng(0)
    want = _detector_values(rng, 4)
    axis, scale = uneven_parts(want) or (None, None)
    assert axis == 1 and scale is not None and len(scale) == 7
    assert scale[:4].min() > 1000 * scale[4:].max()
    # even outputs keep the whole tensor's normalization
    assert uneven_parts([rng.standard_normal((1, 8, 50)) for _ in range(4)]) is None
    assert uneven_parts([rng.uniform(0, 1, (1, 4)) for _ in range(4)]) is None  # too small
    # every score lost, the boxes exact: nothing to see relative to the whole tensor
    got = [w.copy() for w in want]
    for g in got:
        g[:, 4:] = 0.0
    whole = float(np.mean([np.mean((g - w) ** 2) for g, w in zip(got, want, strict=True)])) / float(
        np.mean([np.mean(w**2) for w in want])
    )
    assert whole < 1e-4
    assert relative_error(got, want) > 0.3  # three of seven parts entirely wrong
    spec = LossSpec(outputs=["y"], weights={}, intermediates=[], kind="mse", temperature=1.0)
    spec.parts["y"] = (1, torch.from_numpy(scale).float())
    pair = {"y": torch.from_numpy(np.concatenate(got)).float()}
    target = {"y": torch.from_numpy(np.concatenate(want)).float()}
    assert float(spec(pair, target)) == pytest.approx(relative_error(got, want), rel=1e-3)


def test_pipeline_prune_distill_is_cached_and_teacher_is_the_source(
    mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(mlp_onnx)},
            "data": _data(samples),
            "output_dir": str(out),
            "steps": [
                {"type": "prune", "ratio": 0.5, "measure_speed": False},
                {"type": "distill", **FAST},
            ],
        },
    )
    first = run_cli("run", cfg, "--json")
    assert first.returncode == 0, first.stderr
    entry = json.loads(first.stdout)["steps"][1]
    assert entry["status"] == "ok" and entry["report"]["teacher"] == "source"
    assert entry["versions"]["torch"]
    second = run_cli("run", cfg, "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["steps"][1]["status"] == "cached"
    # a changed teacher (here: another step named as teacher) is a new key
    cfg2 = write_yaml(
        tmp_path / "p2.yaml",
        {
            **__import__("yaml").safe_load(cfg.read_text()),
            "steps": [
                {"type": "prune", "ratio": 0.5, "measure_speed": False},
                {"type": "distill", "teacher": "prune", **FAST},
            ],
        },
    )
    third = run_cli("run", cfg2, "--json")
    assert third.returncode == 0, third.stderr
    step = json.loads(third.stdout)["steps"][1]
    # the student is its own teacher: nothing to learn, the parent is kept
    assert step["status"] == "ok" and step["kept_parent"] is True


def test_kl_loss_and_intermediates_with_adapter(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    student = onnx.load(pruned)
    teacher = onnx.load(mlp_onnx)
    shared = [
        n.output[0]
        for n in student.graph.node
        if n.op_type == "Relu" and n.output[0] in {m.output[0] for m in teacher.graph.node}
    ]
    assert shared, "the pruned MLP keeps its Relu tensors' names"
    manifest = onnxopt.distill(
        pruned, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples), loss="kl",
        intermediates=shared[:1], **FAST,
    )  # fmt: skip
    report = _entry(manifest)["report"]
    assert report["loss"]["kind"] == "kl" and report["loss"]["intermediates"] == shared[:1]
    assert report["fidelity_after"]["relative_mse"] < report["fidelity_before"]["relative_mse"]


def _widths(path: Path) -> dict[str, list[int]]:
    """Every tensor's inferred shape (the MLP's shapes are static past the batch)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    return {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }


def test_the_features_where_channels_were_pruned_are_matched(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    student, teacher = _widths(pruned), _widths(mlp_onnx)
    narrower = {n for n in student if n in teacher and student[n] != teacher[n]}
    assert narrower, "the pruned MLP's hidden tensors keep their names, with fewer channels"
    outputs = {o.name for o in onnx.load(pruned).graph.output}
    readers = [
        o
        for node in onnx.load(pruned).graph.node
        if set(node.input) & narrower
        for o in node.output
        if o in teacher and o not in outputs
    ]
    manifest = onnxopt.distill(
        pruned, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples), features="pruned",
        **FAST,
    )  # fmt: skip
    report = _entry(manifest)["report"]
    features = report["loss"]["features"]
    assert features["pruned_tensors"] == len(narrower)
    assert features["matched"] and set(features["matched"]) <= set(readers), features
    assert report["fidelity_after"]["relative_mse"] < report["fidelity_before"]["relative_mse"]
    # outputs only by default, and none for a parent that was not pruned
    plain = onnxopt.distill(
        pruned, tmp_path / "o.onnx", teacher=mlp_onnx, data=_data(samples), **FAST
    )
    assert _entry(plain)["report"]["loss"]["features"]["matched"] == []
    whole = onnxopt.distill(
        mlp_onnx, tmp_path / "w.onnx", teacher=mlp_onnx, data=_data(samples), steps=2,
        features="pruned",
    )  # fmt: skip
    facts = _entry(whole)["report"]["loss"]["features"]
    assert facts["pruned_tensors"] == 0 and facts["matched"] == []


def test_the_validation_loss_that_chooses_the_weights_is_the_outputs_alone() -> None:
    import torch

    from onnxopt.steps.distill.train import LossSpec

    spec = LossSpec(
        outputs=["y"], weights={"h": 0.5}, intermediates=["h"], kind="mse", temperature=1.0
    )
    got = {"y": torch.ones(2, 3), "h": torch.zeros(2, 4)}
    want = {"y": torch.ones(2, 3), "h": torch.ones(2, 4)}
    assert float(spec(got, want)) == pytest.approx(0.5)
    assert float(spec(got, want, outputs_only=True)) == 0.0


def test_factory_student(mlp_onnx: Path, samples: Path, tmp_path: Path) -> None:
    factory = tmp_path / "small.py"
    factory.write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(),\n"
        "                               torch.nn.Linear(32, 10))\n"
    )
    manifest = onnxopt.distill(
        mlp_onnx, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples),
        student={"factory": f"{factory}:build"}, steps=200, eval_every=25, lr=3e-3,
    )  # fmt: skip
    entry = _entry(manifest)
    assert entry["report"]["student"]["kind"] == "factory"
    # the parent is the teacher itself here, so a small student cannot beat it: kept
    assert entry["kept_parent"] is True
    assert "closer to the teacher" in entry["kept_parent_reason"]
    # it learned (the untrained module's validation loss fell) and was exported and measured
    training = entry["report"]["training"]
    assert training["validation_loss_best"] < 0.5 * training["validation_loss_before"]
    assert 0 < entry["report"]["fidelity_after"]["relative_mse"] < 1


def test_no_data_is_a_usage_error(pruned: Path, mlp_onnx: Path, tmp_path: Path) -> None:
    proc = run_cli("distill", pruned, "-o", tmp_path / "d.onnx", "--teacher", mlp_onnx)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert "has none" in line and "--data" in line and "--allow-synthetic" in line
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_synthetic_opt_in_trains_and_says_so(pruned: Path, mlp_onnx: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "distill", pruned, "-o", tmp_path / "d.onnx", "--teacher", mlp_onnx,
        "--allow-synthetic", "--steps", "40",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "held-out cosine to the teacher" in proc.stdout
    assert "trained on generated inputs" in proc.stderr


def test_unconvertible_op_is_named_before_training(
    mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])
    nodes = [
        helper.make_node("QuantizeLinear", ["features", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "z"),
    ]
    graph = helper.make_graph(nodes, "q", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    student = tmp_path / "q.onnx"
    onnx.save(model, student)
    teacher = tmp_path / "t.onnx"
    graph_t = helper.make_graph([helper.make_node("Identity", ["features"], ["y"])], "t", [x], [y])
    onnx.save(helper.make_model(graph_t, opset_imports=[helper.make_opsetid("", 18)]), teacher)
    proc = run_cli("distill", student, "-o", tmp_path / "d.onnx", "--teacher", teacher,
                   "--data", samples)  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = error_line(proc)
    assert "QuantizeLinear" in line and "DequantizeLinear" in line and "q.onnx" in line
    assert "distill before quantize" in line
    assert not (tmp_path / "d.onnx").exists()


def test_bad_teacher_names_the_choices(pruned: Path, samples: Path, tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(pruned)},
            "data": {"source": "npz", "path": str(samples)},
            "output_dir": str(tmp_path / "out"),
            "steps": [{"type": "distill", "teacher": "prnue"}],
        },
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "teacher 'prnue' is neither 'source'" in error_line(proc)


def test_missing_torch_names_the_extra(pruned: Path, mlp_onnx: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # this interpreter has no torch\n"
        "from onnxopt.cli import main\n"
        f"sys.argv = ['onnxopt', 'distill', {str(pruned)!r}, '-o', {str(tmp_path / 'd.onnx')!r},"
        f" '--teacher', {str(mlp_onnx)!r}, '--allow-synthetic']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "pip install 'onnxopt[torch]'" in error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_training_leaves_no_artifact(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(pruned)},
            "data": {"source": "npz", "path": str(samples)},
            "output_dir": str(out),
            "steps": [
                {"type": "distill", "teacher": str(mlp_onnx), "steps": 100000, "eval_every": 50}
            ],
        },
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt", "run", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509 - the child only resets SIGINT
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(".*.partial")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(4)  # into the training loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert finished_artifacts(out) == []
    assert not list(out.glob(".*.partial")) and not list(out.glob("*.png"))
    assert "Traceback" not in err


def test_teacher_file_is_an_input_never_written(
    pruned: Path, mlp_onnx: Path, tmp_path: Path
) -> None:
    from onnxopt.config import parse_config
    from onnxopt.engine.context import input_files

    cfg = parse_config(
        {
            "model": {"path": str(pruned)},
            "steps": [{"type": "distill", "teacher": str(mlp_onnx)}],
        },
        "test",
    )
    assert mlp_onnx.resolve() in input_files(cfg)


@pytest.mark.slow
def test_distill_recipe_prune_distill_int8_on_the_resnet_sample(tmp_path: Path) -> None:
    """configs/distill.yaml, shortened (fewer samples and steps, no bench), end to end."""
    import yaml

    from onnxopt.config import load_config
    from onnxopt.engine import run_pipeline

    recipe = REPO / "configs" / "distill.yaml"
    config, base = load_config(recipe)
    types = [s.type for s in config.steps]
    assert types == ["export", "simplify", "prune", "distill", "quantize", "bench"]
    data = yaml.safe_load(recipe.read_text())
    data["data"].update(samples=112, holdout=16)
    for step in data["steps"]:
        if step["type"] == "distill":
            step.update(steps=60, eval_every=20)
    data["steps"] = [s for s in data["steps"] if s["type"] != "bench"]
    data["model"]["factory"] = str(REPO / "sample_models" / "resnet.py") + ":build"
    data["data"]["callable"] = str(REPO / "sample_models" / "images.py") + ":samples"
    short = write_yaml(tmp_path / "distill.yaml", data)
    config, base = load_config(short)
    manifest = run_pipeline(config, base, out_dir=tmp_path / "out")
    steps = {e["type"]: e for e in manifest["steps"]}
    report = steps["distill"]["report"]
    assert report["fidelity_before"]["min_cosine"] < 0.9
    assert report["fidelity_after"]["min_cosine"] > 0.97
    assert steps["distill"]["verification"]["passed"]
    assert steps["quantize"]["verification"]["passed"]
    assert manifest["final_artifact"] == steps["quantize"]["output"]["path"]


def test_same_seed_same_bytes_and_augment_hook(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    hook = tmp_path / "aug.py"
    hook.write_text(
        "def jitter(feeds, rng):\n"
        "    return {k: v + rng.normal(0, 0.01, v.shape) for k, v in feeds.items()}\n"
    )
    runs = []
    for name in ("a.onnx", "b.onnx"):
        manifest = onnxopt.distill(
            pruned, tmp_path / name, teacher=mlp_onnx, data=_data(samples),
            augment=f"{hook}:jitter", steps=40, eval_every=20,
        )  # fmt: skip
        runs.append(_entry(manifest))
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert runs[0]["report"]["training"] == runs[1]["report"]["training"] | {
        "seconds": runs[0]["report"]["training"]["seconds"]
    }


def test_a_broken_augment_hook_is_a_usage_error(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    hook = tmp_path / "aug.py"
    hook.write_text("def bad(feeds, rng):\n    return {'other': 1}\n")
    with pytest.raises(onnxopt.OnnxoptError) as err:
        onnxopt.distill(
            pruned, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples),
            augment=f"{hook}:bad", steps=5,
        )  # fmt: skip
    assert err.value.exit_code == ExitCode.USAGE
    assert "must return a dict of the inputs ['features']" in err.value.message
    assert not (tmp_path / "d.onnx").exists()


def test_task_scores_before_and_after(
    pruned: Path, mlp_onnx: Path, samples: Path, tmp_path: Path
) -> None:
    metric = tmp_path / "metric.py"
    metric.write_text(
        "import numpy as np\n"
        "def agreement(runner, data):\n"
        "    x = np.load(data)['features'][:64]\n"
        "    import onnxruntime as ort\n"
        f"    teacher = ort.InferenceSession({str(mlp_onnx)!r},\n"
        "                                   providers=['CPUExecutionProvider'])\n"
        "    want = teacher.run(None, {'features': x})[0].argmax(1)\n"
        "    got = runner.predict({'features': x})\n"
        "    return float(np.mean(next(iter(got.values())).argmax(1) == want))\n"
    )
    manifest = onnxopt.distill(
        pruned, tmp_path / "d.onnx", teacher=mlp_onnx, data=_data(samples),
        evaluate={"callable": f"{metric}:agreement", "data": str(samples),
                  "budget": {"max_drop": 1.0}},
        **FAST,
    )  # fmt: skip
    entry = _entry(manifest)
    task = entry["report"]["task"]
    assert task["teacher"]["score"] == 1.0
    assert task["after"]["score"] > task["before"]["score"]
    assert entry["verification"]["task"]["parent_score"] == 1.0  # judged against the teacher
