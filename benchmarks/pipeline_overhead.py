"""Measure onnxopt's own overhead: --help start-up, a one-step command beyond importing the
libraries it needs, how often each model file is parsed, quickstart cold vs cached, peak
memory.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/pipeline_overhead.py``). Each
measurement is a fresh process; wall times are medians of ``--repeat`` runs, and the peak
resident memory of each process is read from the OS. Results go to stdout as a table and,
with ``--json FILE``, as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs a command in a child process and prints the child's peak RSS (KiB on Linux).
_PEAK = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def measure(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS in MiB of one run of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return wall, int(proc.stdout.strip().splitlines()[-1]) // 1024


# Counts, in a child process, how often onnxopt parses (onnx.load) and checks
# (onnx.checker by path) each file during one command, by file name.
_COUNT = """
import collections, json, sys
from pathlib import Path
import onnx, onnx.checker
counts = collections.Counter()
load, check = onnx.load_model, onnx.checker.check_model
def counted_load(f, *a, **k):
    counts["parse " + Path(str(f)).name] += 1
    return load(f, *a, **k)
def counted_check(m, *a, **k):
    counts["check " + Path(str(m)).name] += 1
    return check(m, *a, **k)
onnx.load = onnx.load_model = counted_load
onnx.checker.check_model = counted_check
from onnxopt.cli import app
sys.argv = ["onnxopt", *sys.argv[1:]]
try:
    app()
except SystemExit:
    pass
print(json.dumps(counts))
"""
LIBRARIES = "import onnx, onnxruntime, numpy, pydantic, typer, rich, yaml"


def one_step(repeat: int) -> dict[str, object]:
    """A one-step simplify of a one-node model: its wall time beyond importing the libraries
    it needs, and the parses and checks of each file (ours, not onnxsim's) per step."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(tempfile.mkdtemp(prefix="onnxopt-one-step-"))
    try:
        src = folder / "tiny.onnx"
        weight = numpy_helper.from_array(np.eye(16, dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
            [weight],
        )
        onnx.save_model(helper.make_model(graph), str(src))
        base = [sys.executable, "-m", "onnxopt"]
        cmd = [*base, "simplify", str(src), "-o", str(folder / "s.onnx"), "-b", "ort"]
        cmd += ["--no-guard", "-q"]
        total = [measure(cmd)[0] for _ in range(repeat * 3)]
        imports = [measure([sys.executable, "-c", LIBRARIES])[0] for _ in range(repeat * 3)]
        parses = {}
        commands = {
            "simplify -b ort": ["simplify", str(src), "-o", str(folder / "a.onnx"), "-b", "ort"],
            "quantize -m dynamic": ["quantize", str(src), "-o", str(folder / "b.onnx")],
        }
        commands["quantize -m dynamic"] += ["-m", "dynamic"]
        for name, args in commands.items():
            proc = subprocess.run(
                [sys.executable, "-c", _COUNT, *args, "-q"], capture_output=True, text=True
            )
            parses[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        return {
            "command_s": statistics.median(total),
            "library_imports_s": statistics.median(imports),
            "overhead_s": statistics.median(total) - statistics.median(imports),
            "parses": parses,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    onnxopt = [sys.executable, "-m", "onnxopt"]
    results: dict[str, dict[str, float]] = {}

    def record(name: str, runs: list[tuple[float, int]]) -> None:
        walls = [w for w, _ in runs]
        results[name] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "peak_rss_mib": max(m for _, m in runs),
        }

    record("onnxopt --help", [measure([*onnxopt, "--help"]) for _ in range(args.repeat * 3)])
    step = one_step(args.repeat)

    cold, cached = [], []
    for _ in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="onnxopt-bench-"))
        try:
            run = [*onnxopt, "run", args.config, "-o", str(out), "--quiet"]
            cold.append(measure(run))
            cached.append(measure(run))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    record("quickstart cold", cold)
    record("quickstart cached", cached)

    ratio = results["quickstart cached"]["median_s"] / results["quickstart cold"]["median_s"]
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(f"{'measurement':<22}{'median s':>10}{'min s':>9}{'max s':>9}{'peak MiB':>10}")
    for name, row in results.items():
        print(
            f"{name:<22}{row['median_s']:>10.2f}{row['min_s']:>9.2f}{row['max_s']:>9.2f}"
            f"{row['peak_rss_mib']:>10}"
        )
    print(f"cached / cold wall-time ratio: {ratio:.3f}")
    print(
        f"one-step simplify of a one-node model: {step['command_s']:.2f} s, of which "
        f"{step['library_imports_s']:.2f} s importing onnx, onnxruntime, numpy, pydantic, typer, "
        f"rich and yaml: onnxopt's own overhead {step['overhead_s']:.2f} s"
    )
    for name, counts in step["parses"].items():  # type: ignore[attr-defined]
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(f"parses and checks during one '{name}' (file: count): {shown}")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "cached_over_cold": ratio, "one_step": step}, indent=2)
        )


if __name__ == "__main__":
    main()
