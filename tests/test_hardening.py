"""Hardening: SIGTERM, one run per output folder, deterministic artifacts, fuzzed configs."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ConfigError, ExitCode
from tests import models
from tests.conftest import (
    SAMPLES,
    error_line,
    finished_artifacts,
    run_cli,
    wait_for_first_step,
    write_yaml,
)


def _start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onnxopt", "run", str(cfg), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )


def test_sigterm_exits_143_and_leaves_no_partial_artifact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"factory": f"{SAMPLES / 'resnet.py'}:build"},
            "inputs": [{"name": "image", "shape": ["batch", 3, 224, 224]}],
            "output_dir": str(out),
            "steps": [{"type": "export"}],
        },
    )
    proc = _start(cfg)
    wait_for_first_step(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.TERMINATED, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    assert finished_artifacts(out) == []
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"


def test_second_run_on_the_same_folder_waits_or_fails_with_no_wait(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {"model": {"path": str(src)}, "output_dir": str(out), "steps": [{"type": "simplify"}]},
    )
    with (out / ".onnxopt.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345")
        held.flush()
        proc = run_cli("run", cfg, "--no-wait")
        assert proc.returncode == ExitCode.USAGE
        assert "in use by another onnxopt run (pid 12345)" in error_line(proc)
        waiting = _start(cfg)
        time.sleep(3)
        assert waiting.poll() is None  # still waiting for the lock
        assert finished_artifacts(out) == []
        fcntl.flock(held, fcntl.LOCK_UN)
    _, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr
    assert "waiting for it" in stderr
    assert len(finished_artifacts(out)) == 1


def test_same_input_and_config_give_byte_identical_artifacts(tmp_path: Path) -> None:
    src = models.matmul_chain(tmp_path / "m.onnx", 2, 32, external=False)
    steps = [
        {"type": "simplify", "backend": ["onnxsim", "ort"], "guard": None},
        {"type": "prune", "ratio": 0.25, "measure_speed": False},
        {
            "type": "quantize",
            "mode": "dynamic",
            "measure_speed": False,
            "tolerance": {"min_cosine": 0.9},
        },
    ]
    digests = []
    for name in ("a", "b"):
        cfg = {"model": {"path": str(src)}, "output_dir": str(tmp_path / name), "steps": steps}
        manifest = run_pipeline(parse_config(cfg), tmp_path)
        digests.append([(s["output"]["path"], s["output"]["sha256"]) for s in manifest["steps"]])
    assert digests[0] == digests[1]


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
known_keys = st.sampled_from(
    [
        "model",
        "steps",
        "inputs",
        "dims",
        "target",
        "verify",
        "output_dir",
        "name",
        "type",
        "path",
        "factory",
        "mode",
    ]
)
config_like = st.dictionaries(known_keys | st.text(max_size=8), yaml_values, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_like | yaml_values)
def test_any_document_is_a_config_or_a_config_error(data: object) -> None:
    text = yaml.safe_dump(data)
    try:
        parse_config(yaml.safe_load(text), "fuzz.yaml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.yaml") or "environment variable" in str(err)


def test_disk_full_during_save_keeps_the_previous_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import onnx

    from onnxopt.errors import StepError
    from onnxopt.modelio import model_digest

    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "out"
    first = run_pipeline(
        parse_config(
            {"model": {"path": str(src)}, "output_dir": str(out), "steps": [{"type": "simplify"}]}
        ),
        tmp_path,
    )
    kept = out / first["steps"][0]["output"]["path"]
    digest = model_digest(kept)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)  # the disk, not the thing under test
    cfg = parse_config(
        {
            "model": {"path": str(src)},
            "output_dir": str(out),
            "steps": [{"type": "simplify"}, {"type": "simplify", "backend": "ort"}],
        }
    )
    with pytest.raises(StepError, match="No space left on device"):
        run_pipeline(cfg, tmp_path)
    assert model_digest(kept) == digest
    assert finished_artifacts(out) == [kept.name]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_bad_calibration_data_is_a_clear_input_error(tmp_path: Path) -> None:
    import numpy as np

    src = models.compute_model(tmp_path / "c.onnx")
    nan = np.random.default_rng(0).uniform(size=(4, 1, 3, 8, 8)).astype(np.float32)
    nan[1, 0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    np.savez(tmp_path / "other.npz", z=np.nan_to_num(nan))
    (tmp_path / "empty").mkdir()
    for path, expected in (
        (tmp_path / "nan.npz", "has NaN or Inf"),
        (tmp_path / "other.npz", "has no arrays ['x']"),
        (tmp_path / "empty", "holds no images"),
    ):
        cfg = write_yaml(
            tmp_path / "p.yaml",
            {
                "model": {"path": str(src)},
                "output_dir": str(tmp_path / "o"),
                "steps": [
                    {
                        "type": "quantize",
                        "mode": "static",
                        "static": {
                            "calibration": {
                                "source": "images" if path.is_dir() else "npz",
                                "path": str(path),
                            }
                        },
                    }
                ],
            },
        )
        proc = run_cli("run", cfg)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert expected in error_line(proc)
        assert finished_artifacts(tmp_path / "o") == []


def _run_with_inputs_file(tmp_path: Path, src: Path, **arrays: Any) -> Any:
    """`onnxopt run` of one simplify step verified on an .npz holding ``arrays``."""
    import numpy as np

    np.savez(tmp_path / "in.npz", **arrays)
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(src)},
            "output_dir": str(tmp_path / "o"),
            "verify": {"inputs_file": str(tmp_path / "in.npz")},
            "steps": [{"type": "simplify"}],
        },
    )
    return run_cli("run", cfg)


def test_inputs_file_missing_an_array(tmp_path: Path) -> None:
    import numpy as np

    src = models.add_relu(tmp_path / "m.onnx")
    proc = _run_with_inputs_file(tmp_path, src, other=np.ones((2, 4), np.float32))
    assert proc.returncode == ExitCode.USAGE
    assert "has no array 'x'" in error_line(proc)


def test_nan_or_inf_in_verification_inputs_is_a_clear_input_error(tmp_path: Path) -> None:
    import numpy as np

    src = models.add_relu(tmp_path / "m.onnx")
    for value in (np.nan, np.inf):
        x = np.ones((2, 4), np.float32)
        x[1, 2] = value
        proc = _run_with_inputs_file(tmp_path, src, x=x)
        assert proc.returncode == ExitCode.USAGE
        line = error_line(proc)
        assert "array 'x' has NaN or Inf (1 of 8 values)" in line and "nan_to_num" in line
        assert not (tmp_path / "o").exists() or not finished_artifacts(tmp_path / "o")
        proc = run_cli("bench", str(src), "--inputs-file", str(tmp_path / "in.npz"))
        assert proc.returncode == ExitCode.USAGE
        assert "has NaN or Inf" in error_line(proc)


def test_opset_too_old_and_models_without_inputs(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    old = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "old",
            [  # IR version 3: initializers are also graph inputs
                helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8]),
                helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [8, 8]),
            ],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 8])],
            [w],
        ),
        opset_imports=[helper.make_opsetid("", 7)],
    )
    old.ir_version = 3
    onnx.save(old, str(tmp_path / "old.onnx"))
    for mode in ("dynamic", "int4"):
        proc = run_cli("quantize", tmp_path / "old.onnx", "-o", tmp_path / "q.onnx", "-m", mode)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        line = error_line(proc)
        assert "IR version 3 and opset 7" in line and "convert_version" in line
        assert not (tmp_path / "q.onnx").exists()
    proc = run_cli("simplify", tmp_path / "old.onnx", "-o", tmp_path / "s.onnx", "-q")
    assert proc.returncode == 0, proc.stderr  # steps that need no new ops still work

    c = numpy_helper.from_array(np.ones((2, 2), np.float32), "c")
    no_inputs = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["c"], ["y"])],
            "no_inputs",
            [],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 2])],
            [c],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(no_inputs, str(tmp_path / "none.onnx"))
    for args in (("simplify",), ("package",)):
        out = tmp_path / ("n.ort" if args[0] == "package" else "n.onnx")
        proc = run_cli(*args, tmp_path / "none.onnx", "-o", out, "-q")
        assert proc.returncode == 0, (args, proc.stderr)
    proc = run_cli("quantize", tmp_path / "none.onnx", "-o", tmp_path / "nq.onnx", "-m", "dynamic")
    assert proc.returncode == ExitCode.FAILURE
    assert "quantized nothing" in error_line(proc)
