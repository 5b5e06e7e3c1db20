"""Measure onnxopt's own overhead: --help start-up, quickstart cold vs cached, peak memory.

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
    if args.json:
        args.json.write_text(json.dumps({"results": results, "cached_over_cold": ratio}, indent=2))


if __name__ == "__main__":
    main()
