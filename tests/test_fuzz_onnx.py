"""Mutated ONNX files (bit flips, truncation, spliced bytes): a clear error, never a crash.

The mutants are fed to the real commands in one worker process (in process, so that a
hundred files take seconds). A crash of the worker (a segfault in a native library) fails
the test and names the file; every non-zero exit must be one documented code with a single
'error:' line, never an internal error.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests import models
from tests.conftest import REPO
from tests.wild_models import if_outer_scope

WORKER = r"""
import json, sys
from typer.testing import CliRunner
from onnxopt.cli import app

runner = CliRunner()
for path in sys.argv[1:]:
    for command in (["inspect", path, "--json"], ["simplify", path, "--backend", "ort",
                    "-o", path + ".out.onnx", "-q"], ["simplify", path, "-o",
                    path + ".sim.onnx", "-q"]):
        print(json.dumps({"start": path, "command": command[0]}), flush=True)
        result = runner.invoke(app, command)
        error = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
        print(json.dumps({
            "path": path, "command": " ".join(command[:1] + command[2:4]),
            "code": result.exit_code,
            "uncaught": None if result.exception is None or isinstance(result.exception, SystemExit)
                        else repr(result.exception),
            "errors": error, "traceback": "Traceback" in result.output,
        }), flush=True)
"""


def _mutants(seed_models: list[Path], folder: Path, count: int) -> list[Path]:
    rng = random.Random(20261128)
    out = []
    for i in range(count):
        src = seed_models[i % len(seed_models)]
        data = bytearray(src.read_bytes())
        kind = i % 3
        if kind == 0:  # flip 1-8 random bits
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(1, len(data))]
        else:  # overwrite a run of bytes with random ones
            pos = rng.randrange(len(data))
            span = rng.randint(1, 16)
            data[pos : pos + span] = bytes(rng.randrange(256) for _ in range(span))
        path = folder / f"mutant-{i:03d}-{src.stem}.onnx"
        path.write_bytes(bytes(data))
        out.append(path)
    return out


def test_mutated_models_give_clear_errors_and_never_crash(tmp_path: Path) -> None:
    seeds = [
        models.add_relu(tmp_path / "add_relu.onnx"),
        models.compute_model(tmp_path / "compute.onnx"),
        if_outer_scope(tmp_path / "if_outer.onnx", width=8),
    ]
    mutants = _mutants(seeds, tmp_path, 90)
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, *map(str, mutants)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln for ln in lines if "start" in ln]
    assert proc.returncode == 0, (
        f"worker died ({proc.returncode}) on {started[-1] if started else '?'}: "
        f"{proc.stderr[-2000:]}"
    )
    results = [ln for ln in lines if "code" in ln]
    assert len(results) == 3 * len(mutants)
    outcomes: dict[int, int] = {}
    for r in results:
        outcomes[r["code"]] = outcomes.get(r["code"], 0) + 1
        assert r["uncaught"] is None, r
        assert not r["traceback"], r
        if r["code"] != 0:
            assert r["code"] in (1, 2, 3), r
            assert len(r["errors"]) == 1 and "internal error" not in r["errors"][0], r
    # the mutations must really reach the error paths, and some mutants still load
    assert outcomes.get(2, 0) >= len(mutants), outcomes
    assert outcomes.get(0, 0) > 0, outcomes
