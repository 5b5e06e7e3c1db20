"""How much distillation wins back after channel pruning, on real pretrained models (those of
benchmarks/realworld.py: pinned PyPI wheels, their own inputs and task proxies).

Each model is pruned once (`onnxopt prune --macs-target S`, allocated by sensitivity, as
optimize's ladder does); the pruned model is then distilled from the original by each
recipe, on the same 256 samples (a quarter held out by onnxopt, the rest trains it). Each
row gives the held-out relative error and mean cosine onnxopt measured before and after,
and the task proxy on 64 fresh samples the tool never saw. Run:
`python benchmarks/distill_recovery.py [--models a,b] [--target 0.35] [--recipes a,b]`
(recipes: outputs or outputs + the pruned features, at two learning rates).
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

from prune_allocation import UNBOUNDED  # noqa: E402

DEFAULT = "orientation,nudenet,minilm"
#: the recipes compared (distill step options on top of optimize's own)
RECIPES: dict[str, dict[str, Any]] = {
    "outputs-lr1e-3": {"features": "none", "lr": 1e-3},
    "outputs-lr1e-4": {"features": "none", "lr": 1e-4},
    "features-lr1e-3": {"features": "pruned", "lr": 1e-3},
}
BASE = {"steps": 300, "batch_size": 16, "max_seconds": 300}


def _distill(pruned: Path, teacher: Path, out: Path, data: Path, options: dict[str, Any]) -> Any:
    import onnxopt
    from onnxopt.errors import OnnxoptError

    try:
        return onnxopt.distill(
            pruned, out, teacher=teacher, data=str(data), target={"intra_op_threads": 1},
            tolerance=UNBOUNDED, **BASE, **options,
        )["steps"][-1]  # fmt: skip
    except OnnxoptError as err:
        return str(err).splitlines()[0][:160]


def _fidelity(f: dict[str, Any]) -> str:
    return f"rel. error {f['relative_mse']:.4f}, mean cosine {f['mean_cosine']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--target", type=float, default=0.35, help="share of the MACs pruned")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--fresh", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/onnxopt-realworld"))
    args = parser.parse_args()

    from _machine import machine_line
    from _realworld_models import each_prepared, session
    from prune_allocation import _prune

    print(machine_line())
    cache = args.cache.expanduser().resolve()
    for spec, prep, data, ref in each_prepared(args.models, cache, args.samples, args.fresh):
        folder = data.parent
        pruned = folder / "pruned.onnx"
        entry = _prune(prep.model, pruned, data, macs_target=args.target)
        if isinstance(entry, str):
            print(f"  prune refused: {entry}")
            continue
        report = entry["report"]
        share = 1 - report["macs_after"] / report["macs_before"]
        value, _ = spec.judge(ref, session(pruned), prep.fresh)
        print(f"  pruned: MACs -{share:.1%}, task proxy {value:.3f} (compensated)")
        for label in args.recipes.split(","):
            started = time.monotonic()
            out = folder / f"d{abs(hash(label))}.onnx"
            got = _distill(pruned, prep.model, out, data, RECIPES[label])
            if isinstance(got, str):
                print(f"  {label}: refused: {got}")
                continue
            rep = got["report"]
            line = f"held-out {_fidelity(rep['fidelity_before'])}"
            if "fidelity_after" not in rep:
                print(f"  {label}: kept the parent ({rep.get('reason')})")
                continue
            value, _ = spec.judge(ref, session(out), prep.fresh)
            training = rep["training"]
            matched = len(rep["loss"]["features"]["matched"])
            print(
                f"  {label}: {line} -> {_fidelity(rep['fidelity_after'])}; task proxy "
                f"{value:.3f}; best at step {training['best_step']}/{training['steps']}, "
                f"{matched} features ({time.monotonic() - started:.0f} s)"
            )


if __name__ == "__main__":
    main()
