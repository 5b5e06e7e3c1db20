"""A synthetic model over 2 GB (external data) through every step: wall time and peak memory.

Builds a chain of MatMuls (default 9 x 8192 x 8192 float32 = 2.25 GiB of weights, stored as
external data), then runs each step as its own `onnxopt` process and reads that process's
peak resident memory from the kernel (wait4 rusage). Target (issue 6): peak RSS at most
2.5x the model size. Peers fail here: onnxsim and onnxslim cannot write >2 GB protobufs.

Run: .venv/bin/python benchmarks/large_model.py [--layers 9 --width 8192] [--keep DIR]
Needs about 3x the model size in free disk and 8 GiB of memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GIB = 2**30


def _steps(src: Path, out: Path) -> list[tuple[str, list[str]]]:
    simplified = out / "ort.onnx"
    return [
        ("inspect", ["inspect", str(src), "--json"]),
        # --no-guard: the default speed guard times the result against its input with both
        # loaded (two 2.25 GiB sessions); these figures are the cost of the steps themselves
        (
            "simplify (ort)",
            ["simplify", str(src), "--backend", "ort", "--no-guard", "-o", str(simplified)],
        ),
        (
            "simplify (onnxsim)",
            ["simplify", str(src), "--no-guard", "-o", str(out / "onnxsim.onnx")],
        ),
        (
            "quantize dynamic",
            ["quantize", str(src), "--mode", "dynamic", "-o", str(out / "d.onnx")],
        ),
        # random Gaussian weights are a worst case for 4-bit blocks: accept cosine 0.95 here
        (
            "quantize int4",
            [
                "quantize",
                str(src),
                "--mode",
                "int4",
                "--min-cosine",
                "0.95",
                "-o",
                str(out / "q4.onnx"),
            ],
        ),
        (
            "prune magnitude",
            [
                "prune",
                str(src),
                "--method",
                "magnitude",
                "--ratio",
                "0.5",
                "--no-guard",
                "-o",
                str(out / "p.onnx"),
            ],
        ),
        ("bench", ["bench", str(src), "--runs", "5", "--trials", "1", "--warmup", "1"]),
    ]


def _measure(args: list[str]) -> tuple[int, float, float, str]:
    """Run one command; return (exit code, wall seconds, peak RSS bytes, last stderr line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxopt", *args, "-q"]
        if args[0] != "inspect"
        else [sys.executable, "-m", "onnxopt", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().strip().splitlines()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss * 1024.0, err[-1] if err else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--width", type=int, default=8192)
    parser.add_argument("--keep", type=Path, help="build the model here and keep it")
    parser.add_argument("--only", help="comma-separated step names to run")
    args = parser.parse_args()

    from onnxopt.modelio import external_data_files

    folder = args.keep or Path(tempfile.mkdtemp(prefix="large-model-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        src = folder / "big.onnx"
        if not src.exists():
            # in a child process: a process forked from a parent that held the model would
            # inherit the parent's peak memory in its own rusage
            start = time.perf_counter()
            code = (
                f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
                "from tests.models import matmul_chain; "
                f"matmul_chain(Path({str(src)!r}), {args.layers}, {args.width}, external=True)"
            )
            subprocess.run([sys.executable, "-c", code], check=True)
            print(f"built {src} in {time.perf_counter() - start:.0f} s", flush=True)
        size = sum(p.stat().st_size for p in [src, *external_data_files(src)])
        print(f"model: {args.layers} x {args.width}^2 float32 = {size / GIB:.2f} GiB", flush=True)
        out = folder / "out"
        out.mkdir(exist_ok=True)
        wanted = {s.strip() for s in args.only.split(",")} if args.only else None
        print(
            f"{'step':<20} {'exit':>4} {'wall s':>7} {'peak RSS GiB':>13} {'x model':>8}  note",
            flush=True,
        )
        for name, cmd in _steps(src, out):
            if wanted and name not in wanted:
                continue
            code, wall, peak, last = _measure(cmd)
            ratio = peak / size
            flag = "" if ratio <= 2.5 else "  (over the 2.5x target)"
            print(
                f"{name:<20} {code:>4} {wall:>7.1f} {peak / GIB:>13.2f} {ratio:>8.2f}"
                f"{flag}  {last[:90] if code else ''}",
                flush=True,
            )
            for stale in out.iterdir():
                if stale.is_file():
                    stale.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
