"""Uniform channel pruning against pruning allocated by sensitivity, at equal MACs, on real
pretrained models (those of benchmarks/realworld.py: pinned PyPI wheels, their own inputs
and task proxies).

For each model and each uniform ratio, `onnxopt prune --ratio R --compensate` prunes every
prunable group by R; its share S of the MACs removed is then asked of
`onnxopt prune --macs-target S --compensate`, which measures each group's output change
when pruned alone (on the calibration samples) and spends S where it costs least. Both are
judged the same way: the held-out cosine of onnxopt's own verification (the quarter of
the data it holds out) and the model's task proxy on fresh samples never given to the
tool. Run: `python benchmarks/prune_allocation.py [--models a,b] [--ratios 0.25,0.5]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

DEFAULT = "orientation,ocr_cls,ocr_rec,ddddocr,nudenet,ocr_det,minilm"
#: no budget: both prunings are measured, not judged, by onnxopt (the proxy judges them)
UNBOUNDED = {
    "min_cosine": -1.0, "min_top1_agreement": 0.0, "max_slice_error": 1e9,
    "max_score_change": 1.0, "max_decision_flips": 1.0,
}  # fmt: skip


def _prune(model: Path, out: Path, data: Path, **options: Any) -> dict[str, Any] | str:
    import onnxopt
    from onnxopt.errors import OnnxoptError

    try:
        entry = onnxopt.prune(
            model, out, data=str(data), compensate=True, measure_speed=False, guard=None,
            round_to=8, target={"intra_op_threads": 1}, tolerance=UNBOUNDED, **options,
        )["steps"][-1]  # fmt: skip
    except OnnxoptError as err:
        return str(err).splitlines()[0][:160]
    return entry


def _row(entry: dict[str, Any] | str, judge: Any, ref: Any, path: Path, fresh: Any) -> str:
    from _realworld_models import session

    if isinstance(entry, str):
        return f"refused: {entry}"
    report = entry["report"]
    if not report["macs_before"]:
        return "MACs not counted"
    share = 1 - report["macs_after"] / report["macs_before"]
    cosine = min(o["cosine"] for o in entry["verification"]["main"]["outputs"] if "cosine" in o)
    value, _ = judge(ref, session(path), fresh)
    return f"MACs -{share:.1%}, held-out cosine {cosine:.4f}, task proxy {value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--ratios", default="0.25,0.5")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--fresh", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/onnxopt-realworld"))
    args = parser.parse_args()

    from _machine import machine_line
    from _realworld_models import each_prepared

    print(machine_line())
    ratios = [float(r) for r in args.ratios.split(",")]
    cache = args.cache.expanduser().resolve()
    for spec, prep, data, ref in each_prepared(args.models, cache, args.samples, args.fresh):
        folder = data.parent
        for ratio in ratios:
            started = time.monotonic()
            uniform_out = folder / f"u{ratio}.onnx"
            uniform = _prune(prep.model, uniform_out, data, ratio=ratio)
            line = _row(uniform, spec.judge, ref, uniform_out, prep.fresh)
            print(f"  uniform {ratio:g}:   {line}")
            if isinstance(uniform, str):
                break
            rep = uniform["report"]
            if not rep["macs_before"]:
                break
            share = round(1 - rep["macs_after"] / rep["macs_before"], 3)
            alloc_out = folder / f"a{ratio}.onnx"
            allocated = _prune(prep.model, alloc_out, data, macs_target=share)
            line = _row(allocated, spec.judge, ref, alloc_out, prep.fresh)
            took = time.monotonic() - started
            print(f"  allocated {share:.3f}: {line} ({took:.0f} s both)")


if __name__ == "__main__":
    main()
