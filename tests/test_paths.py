"""A user's paths are resolved once, when the config is loaded: ``~`` expanded, relative to the
pipeline file's folder; the files the cache key hashes are the files the steps read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxopt.config import load_config, parse_config, resolve_paths
from tests.conftest import Untouched, run_cli, write_yaml

FACTORY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
"""

EVALUATE = """
import numpy as np


def agreement(runner, data):
    d = np.load(data)
    logits = runner.predict({"x": d["x"]})[runner.output_names[0]]
    return float(np.mean(np.argmax(logits, axis=1) == d["labels"]))
"""


def test_relative_and_home_paths_resolve_against_the_file_and_home(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    cfg = write_yaml(
        folder / "p.yaml",
        {
            "model": {"factory": "models/net.py:build", "weights": "~/w.pt"},
            "inputs": [{"name": "x", "shape": ["batch", 16]}],
            "data": {"path": "data/d.npz"},
            "evaluate": {"callable": "pkg.metrics:score", "data": "~/task.npz"},
            "steps": [{"type": "export"}, {"type": "bench", "baseline": "../base.json"}],
        },
    )
    config, base = load_config(cfg)
    home = Path("~").expanduser()
    assert config.model.factory == f"{folder}/models/net.py:build"
    assert config.model.weights == str(home / "w.pt")
    assert config.data is not None and config.data.path == str(folder / "data" / "d.npz")
    assert config.evaluate is not None and config.evaluate.data == str(home / "task.npz")
    assert config.evaluate.callable == "pkg.metrics:score"  # a module: imported by name
    assert config.steps[1].input_files() == [str(folder / ".." / "base.json")]
    assert config.output_dir == str(folder / "out")
    # resolving again (the engine does, for configs built in code) changes nothing
    assert resolve_paths(config, tmp_path / "elsewhere") == config
    # a config built in code resolves against the folder it is run for
    built = resolve_paths(parse_config({"model": "m.onnx", "steps": [{"type": "simplify"}]}), base)
    assert built.model.path == str(folder / "m.onnx")
    # cache keys see paths below the pipeline's folder relative to it
    dumped = config.model.model_dump(mode="json", context={"relative_to": folder})
    assert dumped["factory"] == "models/net.py:build" and dumped["weights"] == str(home / "w.pt")


@pytest.mark.slow
def test_home_paths_are_read_and_hashed_as_the_same_files(tmp_path: Path) -> None:
    """weights, data, evaluate data and a teacher under ~, run from another folder: the run
    reads them, and changing any of them changes the key of the steps that read it."""
    import torch

    home = tmp_path / "home"
    home.mkdir()
    (home / "net.py").write_text(FACTORY)
    (home / "evaluate.py").write_text(EVALUATE)
    namespace: dict = {}
    exec(FACTORY, namespace)
    net = namespace["build"]()
    torch.save(net.state_dict(), home / "w.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    np.savez(home / "d.npz", x=x)
    with torch.no_grad():
        labels = net(torch.from_numpy(x[:64])).argmax(1).numpy()
    np.savez(home / "task.npz", x=x[:64], labels=labels)
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    env = {"HOME": str(home)}
    proc = run_cli(
        "export", "~/net.py:build", "-o", home / "teacher.onnx", "-i", "x:batch,16",
        "--weights", "~/w.pt", "-q", cwd=elsewhere, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cfg = write_yaml(
        project / "p.yaml",
        {
            "model": {"factory": "~/net.py:build", "weights": "~/w.pt"},
            "inputs": [{"name": "x", "shape": ["batch", 16]}],
            "data": {"path": "~/d.npz", "samples": 200},
            "evaluate": {
                "callable": "~/evaluate.py:agreement",
                "data": "~/task.npz",
                "budget": {"max_drop": 1.0},
            },
            "output_dir": "out",
            "steps": [
                {"type": "export"},
                {"type": "prune", "ratio": 0.5, "measure_speed": False},
                {
                    "type": "distill",
                    "teacher": "~/teacher.onnx",
                    "steps": 20,
                    "eval_every": 10,
                    "batch_size": 16,
                },
            ],
        },
    )

    # (ONNX Runtime keeps its own telemetry store under ~/.cache: not the user's input)
    inputs = [home / n for n in ("net.py", "evaluate.py", "w.pt", "d.npz", "task.npz")]
    inputs.append(home / "teacher.onnx")

    def run() -> dict:
        with Untouched(*inputs):
            proc = run_cli("run", cfg, "--json", "-q", cwd=elsewhere, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = run()
    config = first["pipeline"]["config"]
    assert config["model"]["weights"] == str(home / "w.pt")
    assert config["data"]["path"] == str(home / "d.npz")
    assert config["evaluate"]["data"] == str(home / "task.npz")
    assert config["steps"][2]["teacher"] == str(home / "teacher.onnx")
    assert first["output_dir"] == str(project / "out")  # beside the file, not the cwd
    assert not any(p.name == "~" for p in tmp_path.rglob("*"))
    assert first["inputs"]["evaluate"]["data_sha256"] is not None  # the file it read
    assert [s["status"] for s in run()["steps"]] == ["cached"] * 3

    def statuses_after(change: str) -> list[str]:
        path = home / change
        if change == "w.pt":
            state = torch.load(path)
            state["0.bias"] = state["0.bias"] + 0.01
            torch.save(state, path)
        elif change == "teacher.onnx":
            import onnx

            model = onnx.load(str(path))
            model.doc_string = "changed"
            onnx.save(model, str(path))
        else:
            arrays = dict(np.load(path))
            arrays["x"] = arrays["x"] * 1.01
            np.savez(path, **arrays)
        return [s["status"] for s in run()["steps"]]

    # each file the config names under ~ is the file whose bytes the keys cover
    assert statuses_after("teacher.onnx") == ["cached", "cached", "ok"]
    # the task metric scores every model-changing step, the export included
    assert statuses_after("task.npz") == ["ok", "ok", "ok"]
    assert statuses_after("w.pt") == ["ok", "ok", "ok"]


def test_a_cache_folder_a_library_kept_in_the_environment_dies_with_the_step(
    tmp_path: Path,
) -> None:
    """torch's inductor stores its cache folder (made in the temp folder, i.e. the step's
    scratch) in TORCHINDUCTOR_CACHE_DIR on first use; a later call in the same process
    would write into the removed scratch beside the first output again."""
    import os
    import tempfile

    import onnxopt
    from onnxopt import _fs

    with _fs.scratch_env(tmp_path / "scratch"):
        os.environ["ONNXOPT_TEST_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "cache")
    assert "ONNXOPT_TEST_CACHE_DIR" not in os.environ
    (tmp_path / "factory.py").write_text(FACTORY)
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):  # the same process, as a Python program using the API does
        onnxopt.export(
            f"{tmp_path / 'factory.py'}:build",
            out / "m.onnx",
            inputs=[{"name": "x", "shape": ["batch", 16]}],
        )
    assert sorted(p.name for p in first.iterdir()) == ["m.onnx"]
    assert not any(str(first) in v for v in os.environ.values())
