"""The user's files are read-only, and a run writes nowhere but its output and scratch folders.

Every subcommand runs here from an empty working folder, with its inputs (model, external
data, factory, calibration data, reports, pipeline file) in a folder that is read-only for
the command, and ``TMPDIR`` pointing at an empty folder. Afterwards the inputs are
byte-identical (sha256, size, mtime), the working folder and the temp folder are empty, and
the output folder holds exactly ``-o`` and its declared companions. The routes where a step
keeps its parent (the one that once moved the user's model away), fail or are interrupted
are checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.errors import ExitCode
from onnxopt.runtime import make_session, run_session
from tests import models
from tests.conftest import (
    REPO,
    Untouched,
    default_sigint,
    error_line,
    listing,
    run_cli,
    run_cli_read_only,
    wait_for_first_step,
    write_yaml,
)

FACTORY = """
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the user's inputs, written once; each test makes it read-only for its command."""
    folder = tmp_path_factory.mktemp("user-inputs")
    (folder / "net.py").write_text(FACTORY)
    models.shape_inference_stopper(folder / "stopper.onnx")
    models.conv_net(folder / "conv.onnx")
    models.conv_net(folder / "conv-pads.onnx", explicit_pads=True)
    models.matmul_chain(folder / "chain.onnx", 2, 32, external=True)  # chain.onnx.data
    models.layernorm_decomposed(folder / "ln.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "cal.npz", x=rng.standard_normal((8, 4, 64)).astype(np.float32))
    np.savez(folder / "conv-cal.npz", x=rng.standard_normal((6, 2, 3, 32, 32)).astype(np.float32))
    for name in ("a", "b"):
        proc = run_cli(
            "bench", folder / "conv.onnx", "--runs", "3", "--trials", "1", "--warmup", "1",
            "-o", folder / f"{name}.json", "-q",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return folder


def _case(inputs: Path) -> dict[str, tuple[list[str | Path], set[str]]]:
    """command -> (arguments with OUT for the output folder, what OUT holds afterwards)."""
    i = inputs
    quick = ["--runs", "3", "--trials", "1", "--warmup", "1"]
    return {
        "export": (
            ["export", f"{i / 'net.py'}:build", "-o", "OUT/m.onnx", "-i", "x:batch,16"],
            {"m.onnx"},
        ),
        "simplify-onnxsim": (["simplify", i / "conv.onnx", "-o", "OUT/s.onnx"], {"s.onnx"}),
        "simplify-ort": (
            ["simplify", i / "conv.onnx", "-o", "OUT/s.onnx", "-b", "ort", "--ort-level", "all"],
            {"s.onnx"},
        ),
        "simplify-transformers": (
            ["simplify", i / "ln.onnx", "-o", "OUT/s.onnx", "-b", "transformers"],
            {"s.onnx"},
        ),
        # symbolic shape inference gives up on this model and writes into the current folder
        "quantize-static": (
            [
                "quantize",
                i / "stopper.onnx",
                "-o",
                "OUT/q.onnx",
                "-m",
                "static",
                "--calibration",
                i / "cal.npz",
                "--min-cosine",
                "0.9",
            ],  # fmt: skip
            {"q.onnx"},
        ),
        # no guard: a kept parent would be copied with its weights file, the (small) int8
        # model is saved in one file; either way nothing but -o and its companion
        "quantize-dynamic-external": (
            ["quantize", i / "chain.onnx", "-o", "OUT/q.onnx", "-m", "dynamic", "--no-guard"],
            {"q.onnx"},
        ),
        "quantize-fp16": (
            ["quantize", i / "conv.onnx", "-o", "OUT/q.onnx", "-m", "fp16"],
            {"q.onnx"},
        ),
        "quantize-int4": (
            [
                "quantize",
                i / "stopper.onnx",
                "-o",
                "OUT/q.onnx",
                "-m",
                "int4",
                "--min-cosine",
                "0.5",
            ],
            {"q.onnx"},
        ),
        "quantize-auto": (
            [
                "quantize",
                i / "conv.onnx",
                "-o",
                "OUT/q.onnx",
                "-m",
                "auto",
                "--calibration",
                i / "conv-cal.npz",
                "--min-cosine",
                "0.5",
            ],  # fmt: skip
            {"q.onnx"},
        ),
        "prune-channel": (
            ["prune", i / "conv.onnx", "-o", "OUT/p.onnx", "--ratio", "0.25"],
            {"p.onnx"},
        ),
        "prune-magnitude": (
            ["prune", i / "chain.onnx", "-o", "OUT/p.onnx", "--method", "magnitude"],
            {"p.onnx", "p.onnx.data"},  # external weights stay external,
        ),
        "bench": (
            [
                "bench",
                i / "conv.onnx",
                i / "conv-pads.onnx",
                *quick,
                "--placement",
                "-o",
                "OUT/b.json",
                "--markdown",
                "OUT/b.md",
            ],  # fmt: skip
            {"b.json", "b.md"},
        ),
        "package": (
            ["package", i / "conv.onnx", "-o", "OUT/c.ort"],
            {"c.ort", "c.required_operators.config"},
        ),
        "inspect": (["inspect", i / "conv.onnx", "--provider", "cpu", "--json"], set()),
        "report-merge": (
            ["report", "merge", i / "a.json", i / "b.json", "-o", "OUT/m.json"],
            {"m.json"},
        ),
    }


CASES = sorted(_case(Path("x")))


@pytest.mark.parametrize("name", CASES)
def test_nothing_is_written_outside_the_output(inputs: Path, tmp_path: Path, name: str) -> None:
    args, expected = _case(inputs)[name]
    out, cwd, tmp = (tmp_path / n for n in ("out", "cwd", "tmp"))
    for folder in (out, cwd, tmp):
        folder.mkdir()
    argv = [str(a).replace("OUT", str(out)) for a in args]
    with Untouched(inputs):
        proc = run_cli_read_only(inputs, *argv, cwd=cwd, env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    assert listing(cwd) == set(), f"{name} wrote into the working folder: {listing(cwd)}"
    assert listing(tmp) == set(), f"{name} left temporary files: {listing(tmp)}"
    assert listing(out) == expected, f"{name} wrote {listing(out)}, expected {expected}"


def test_a_pipeline_writes_only_its_output_folder(inputs: Path, tmp_path: Path) -> None:
    out, cwd, tmp = (tmp_path / n for n in ("out", "cwd", "tmp"))
    for folder in (cwd, tmp):
        folder.mkdir()
    pipeline = write_yaml(  # beside the model, in the folder that is read-only for the run
        inputs / f"{tmp_path.name}.yaml",
        {
            "model": {"path": "conv.onnx"},
            "output_dir": str(out),
            "steps": [{"type": "simplify"}, {"type": "bench", "runs": 3, "trials": 1}],
        },
    )
    with Untouched(inputs):
        proc = run_cli_read_only(inputs, "run", pipeline, cwd=cwd, env={"TMPDIR": str(tmp)})
    assert proc.returncode == 0, proc.stderr
    assert listing(cwd) == set() and listing(tmp) == set()
    names = listing(out)
    assert {"manifest.json", "inputs.npz", "02-bench.json", "02-bench.md"} <= names, names
    assert {n for n in names if n.startswith(".")} == {".onnxopt.lock"}, names


# ---------------------------------------------------------------- keep-parent routes


def _json_run(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout)


def _same_outputs(a: Path, b: Path) -> None:
    from onnxopt.verify import make_inputs, specs_from_model

    feeds = make_inputs(
        specs_from_model(onnx.load(str(a), load_external_data=False)), {"batch": 2}, 3
    )
    for x, y in zip(
        run_session(make_session(a), feeds, "a"),
        run_session(make_session(b), feeds, "b"),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_quantize_auto_that_keeps_the_parent_copies_it(tmp_path: Path) -> None:
    """The route that once moved the user's model to -o: now -o is a copy, said plainly."""
    src = models.matmul_chain(tmp_path / "model.onnx", 2, 64, external=False)
    out = tmp_path / "q.onnx"
    with Untouched(src):
        _, manifest = _json_run("quantize", src, "-o", out, "-m", "auto", "--min-cosine", "1")
    assert manifest["steps"][0]["kept_parent"] is True
    assert "no candidate met the accuracy budget" in manifest["steps"][0]["kept_parent_reason"]
    copy = manifest["output_is_unchanged_copy"]
    assert copy["of"] == str(src.resolve()) and "accuracy budget" in copy["reason"]
    assert _sha(out) == _sha(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "q.onnx"]
    with Untouched(src):
        proc = run_cli("quantize", src, "-o", out, "-m", "auto", "--min-cosine", "1")
    assert proc.returncode == 0, proc.stderr
    assert "is an unchanged copy of" in proc.stdout and "accuracy budget" in proc.stdout


def test_a_kept_parent_with_external_data_is_copied_not_moved(tmp_path: Path) -> None:
    """External data under a name of the user's own: the copy gets its own weights file."""
    src = models.matmul_chain(tmp_path / "model.onnx", 2, 64, external=False)
    model = onnx.load(str(src))
    onnx.save_model(
        model, str(src), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    out = tmp_path / "o" / "q.onnx"
    with Untouched(src, tmp_path / "weights.bin"):
        _, manifest = _json_run(
            "quantize", src, "-o", out, "-m", "auto", "--min-cosine", "0.9999999"
        )
    assert manifest["output_is_unchanged_copy"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.onnx", "q.onnx.data"]
    _same_outputs(src, out)


def test_prune_auto_that_keeps_nothing_copies_the_parent(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "model.onnx")
    out = tmp_path / "p.onnx"
    with Untouched(src):
        _, manifest = _json_run(
            "prune", src, "-o", out, "--ratio", "auto", "--min-cosine", "0.9999999", "--no-guard"
        )
    entry = manifest["steps"][0]
    assert entry["kept_parent"] is True and "no ratio above 0" in entry["kept_parent_reason"]
    assert entry["report"]["auto"]["search"], "the search is recorded"
    assert _sha(out) == _sha(src)


def test_a_speed_guard_that_keeps_the_parent_copies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's handling of a 'slower' verdict (the verdict itself: test_bench.py)."""
    import onnxopt
    from onnxopt.bench import stats

    monkeypatch.setattr(stats, "slower_beyond", lambda ratio, low, tolerance: True)
    src = models.conv_net(tmp_path / "model.onnx", explicit_pads=True)
    out = tmp_path / "s.onnx"
    with Untouched(src):
        manifest = onnxopt.simplify(src, out, guard={"runs": 5, "trials": 1})
    entry = manifest["steps"][0]
    assert entry["kept_parent"] and "slower" in entry["kept_parent_reason"]
    assert "slower" in manifest["output_is_unchanged_copy"]["reason"]
    assert _sha(out) == _sha(src)


def test_cached_kept_parent_and_failed_runs_leave_the_source_alone(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "model.onnx", 2, 64, external=True)
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": "model.onnx"},
            "output_dir": "out",
            "steps": [{"type": "quantize", "mode": "auto", "tolerance": {"min_cosine": 0.9999999}}],
        },
    )
    for attempt in range(2):  # the second run is a cache hit of the kept parent
        with Untouched(src, cfg):
            proc = run_cli("run", cfg, "--json")
        assert proc.returncode == 0, proc.stderr
        entry = json.loads(proc.stdout)["steps"][0]
        assert entry["kept_parent"] and entry["status"] == ("ok" if attempt == 0 else "cached")
    with Untouched(src):  # a failed budget: exit 3, nothing at -o
        proc = run_cli(
            "quantize", src, "-o", tmp_path / "q.onnx", "-m", "dynamic", "--min-cosine", "0.9999999"
        )
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_an_interrupted_command_leaves_the_source_alone(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "model.onnx", size=64, channels=32)
    out = tmp_path / "o"
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.random.default_rng(0).standard_normal((16, 1, 3, 64, 64)).astype(np.float32))
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": "model.onnx"},
            "output_dir": "o",
            "steps": [
                {
                    "type": "quantize",
                    "mode": "auto",
                    "static": {"calibration": {"source": "npz", "path": "cal.npz"}},
                },
            ],  # fmt: skip
        },
    )
    with Untouched(src, cal, cfg):
        proc = subprocess.Popen(
            [sys.executable, "-m", "onnxopt", "run", str(cfg)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,  # noqa: PLW1509 - the child only resets SIGINT
        )
        wait_for_first_step(out, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (ExitCode.INTERRUPTED, ExitCode.OK), stderr
    assert not list(out.glob(".*.partial"))


# ---------------------------------------------------------------- nothing overwritten


def test_a_run_refuses_to_overwrite_the_users_files_in_its_folder(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    np.savez(tmp_path / "inputs.npz", x=np.ones((2, 4), np.float32))
    for extra, found in (
        ({"verify": {"inputs_file": "inputs.npz"}}, "is an input of this run"),
        ({}, "which onnxopt did not write"),
    ):
        cfg = write_yaml(
            tmp_path / "p.yaml",
            {
                "model": {"path": "m.onnx"},
                "output_dir": ".",
                "steps": [{"type": "simplify"}],
                **extra,
            },
        )
        with Untouched(src, tmp_path / "inputs.npz", cfg):
            proc = run_cli("run", cfg)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert found in error_line(proc) and "choose another output_dir" in error_line(proc)
    (tmp_path / "inputs.npz").unlink()
    (tmp_path / "manifest.json").write_text('{"my": "own file"}')
    with Untouched(tmp_path / "manifest.json"):
        proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.USAGE and "manifest.json" in error_line(proc)
