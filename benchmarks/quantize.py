"""Speed-up and fidelity of each quantization mode against fp32, measured interleaved.

ResNet-18-style sample (224x224, batch 1) at 1 and 2 intra-op threads, and the small
transformer sample (batch 1, sequence 128) at 1 thread. Every variant is produced by
`onnxopt quantize` (so it passed its own verification) and then timed with `onnxopt bench`
machinery against the fp32 model in one interleaved run per thread count. Prints a table of
speed-ups with 95% intervals and cosine / top-1 agreement against fp32.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECOND_TF = {"second_dims": {"batch": 2, "sequence": 64}}
SYNTH = {"allow_synthetic_calibration": True, "calibration": {"samples": 16}}
RESNET_VARIANTS = {
    "static U8S8 per-channel (default)": {"mode": "static", "static": SYNTH},
    "static S8S8 per-tensor": {
        "mode": "static",
        "static": {**SYNTH, "activation_type": "int8", "per_channel": False},
    },
    "dynamic (Conv included)": {
        "mode": "dynamic",
        "op_types_to_quantize": ["Conv", "MatMul", "Gemm"],
        "tolerance": {"min_cosine": 0.9},
    },
    "fp16": {"mode": "fp16"},
}
TRANSFORMER_VARIANTS = {
    "dynamic per-channel (default)": {"mode": "dynamic"},
    "dynamic per-tensor": {"mode": "dynamic", "dynamic": {"per_channel": False}},
    "int4 weight-only (block 32)": {"mode": "int4"},
}


def build(folder: Path) -> dict[str, tuple[Path, list[dict], dict[str, int]]]:
    import onnxopt

    resnet_inputs = [{"name": "image", "shape": ["batch", 3, 224, 224], "range": [0, 1]}]
    tf_inputs = [
        {"name": "input_ids", "shape": ["batch", "sequence"], "dtype": "int64", "range": [0, 1000]},
        {
            "name": "attention_mask",
            "shape": ["batch", "sequence"],
            "dtype": "int64",
            "range": [1, 2],
        },
    ]
    onnxopt.export(
        f"{REPO}/sample_models/resnet.py:build",
        folder / "resnet.onnx",
        resnet_inputs,
        dims={"batch": 1},
    )
    onnxopt.export(
        f"{REPO}/sample_models/transformer.py:build",
        folder / "tf.onnx",
        tf_inputs,
        dims={"batch": 1, "sequence": 128},
        verify=SECOND_TF,  # position embeddings stop at 128
    )
    return {
        "resnet": (folder / "resnet.onnx", resnet_inputs, {"batch": 1}),
        "transformer": (folder / "tf.onnx", tf_inputs, {"batch": 1, "sequence": 128}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    from _machine import machine_line  # benchmarks/ is on sys.path as the script's folder

    import onnxopt
    from onnxopt.bench.core import Candidate
    from onnxopt.bench.runner import InputSource, run_bench
    from onnxopt.config import BenchStep, InputSpec, Target

    print(machine_line(flags=True))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build(folder)
        plans = [("resnet", RESNET_VARIANTS, [1, 2]), ("transformer", TRANSFORMER_VARIANTS, [1])]
        print(
            f"{'model':<12}{'variant':<36}{'thr':>4}{'fp32 ms':>9}{'ms':>9}"
            f"{'speed-up':>10}{'95% CI':>16}{'cosine':>10}{'top1':>7}"
        )
        for name, variants, thread_counts in plans:
            path, inputs, dims = models[name]
            made = []
            for label, step in variants.items():
                out = folder / f"{name}-{len(made)}.onnx"
                verify = SECOND_TF if name == "transformer" else {}
                onnxopt.quantize(path, out, dims=dims, verify=verify, measure_speed=False, **step)
                made.append((label, out))
            specs = [InputSpec.model_validate(i) for i in inputs]
            source = InputSource(specs=specs, dims=dims, seed=0)
            cands = [Candidate("fp32", path)] + [Candidate(lbl, p) for lbl, p in made]
            for threads in thread_counts:
                cfg = BenchStep(type="bench", runs=args.runs, trials=args.trials, warmup=5)
                report = run_bench(cands, source, cfg, Target(intra_op_threads=threads))
                base = report["results"][0]["latency_ms"]["p50"]
                for row in report["results"][1:]:
                    cmp_ = row["compare"]
                    lo, hi = 1 / cmp_["ratio_ci"][1], 1 / cmp_["ratio_ci"][0]
                    fid = row["fidelity"]["outputs"][0]
                    top1 = fid.get("top1_agreement")
                    print(
                        f"{name:<12}{row['model']:<36}{threads:>4}{base:>9.2f}"
                        f"{row['latency_ms']['p50']:>9.2f}{cmp_['speedup']:>9.2f}x"
                        f"{f'[{lo:.2f}, {hi:.2f}]':>16}{fid['cosine']:>10.4f}"
                        f"{'-' if top1 is None else f'{top1:.2f}':>7}"
                    )


if __name__ == "__main__":
    main()
