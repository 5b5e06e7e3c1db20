"""Is onnxopt's reported latency the model's, not the harness's?

For each model, one session is timed two ways, interleaved block by block in one run:
- onnxopt: the timed loop that `onnxopt bench` uses (a clock read around each session.run),
  reported as the median of per-run samples;
- bare: a plain `for` loop of session.run calls timed as a whole, reported as wall / runs.
The ratios are printed per model (target <= 1.03), on the ResNet-style sample
(224x224, batch 1) and on the MLP sample (a sub-millisecond model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def export_samples(folder: Path) -> dict[str, tuple[Path, dict[str, list]]]:
    import onnxopt

    resnet = folder / "resnet.onnx"
    mlp = folder / "mlp.onnx"
    onnxopt.export(
        f"{REPO / 'sample_models' / 'resnet.py'}:build",
        resnet,
        [{"name": "image", "shape": ["batch", 3, 224, 224], "range": [0, 1]}],
        dims={"batch": 1},
    )
    onnxopt.export(
        f"{REPO / 'sample_models' / 'mlp.py'}:build",
        mlp,
        [{"name": "features", "shape": ["batch", 64]}],
        dims={"batch": 1},
    )
    return {"resnet (224x224, b=1)": resnet, "mlp (sub-ms)": mlp}  # type: ignore[dict-item]


def compare(path: Path, rounds: int, block: int, threads: int | None) -> dict[str, float]:
    from onnxopt.bench.core import _timed_loop
    from onnxopt.config import Target
    from onnxopt.modelio import load_model
    from onnxopt.runtime import make_session
    from onnxopt.verify import make_inputs, resolve_dims, specs_from_model

    specs = specs_from_model(load_model(path, load_weights=False))
    dims, _ = resolve_dims(specs, {})
    feeds = make_inputs(specs, dims, seed=0)
    session = make_session(path, Target(intra_op_threads=threads))
    run = session.run
    for _ in range(block):
        run(None, feeds)
    ours, ours_mean, bare = [], [], []
    for _ in range(rounds):
        samples: list[float] = []
        start = time.perf_counter()
        _timed_loop(run, feeds, block, samples)
        ours_mean.append((time.perf_counter() - start) * 1000.0 / block)
        ours.append(statistics.median(samples))
        start = time.perf_counter()
        for _ in range(block):
            run(None, feeds)
        bare.append((time.perf_counter() - start) * 1000.0 / block)
    o, b = statistics.median(ours), statistics.median(bare)
    wall = statistics.median(ours_mean)
    return {"onnxopt_ms": o, "bare_ms": b, "ratio": o / b, "loop_cost_ratio": wall / b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = export_samples(Path(tmp))
        print(f"threads={args.threads}, rounds={args.rounds} (blocks interleaved)")
        print("reported ratio: onnxopt median / bare mean (the figure users see, target <= 1.03)")
        print("loop cost ratio: wall time of onnxopt's timed loop / bare loop (harness cost)")
        print(f"{'model':<24}{'onnxopt ms':>12}{'bare ms':>12}{'reported':>10}{'loop cost':>11}")
        for name, path in models.items():
            block = 20 if "resnet" in name else 2000
            r = compare(Path(path), args.rounds, block, args.threads)
            print(
                f"{name:<24}{r['onnxopt_ms']:>12.4f}{r['bare_ms']:>12.4f}{r['ratio']:>10.3f}"
                f"{r['loop_cost_ratio']:>11.3f}"
            )


if __name__ == "__main__":
    main()
