"""`onnxopt optimize` on the samples and MiniLM: the chain it chooses against the best single step.

For each model (exported here, no downloads):

- the ResNet-style sample (image-like samples from sample_models/images.py),
- the transformer sample (random token ids),
- all-MiniLM-L6-v2 (real sentences: the paraphrase pairs of configs/minilm_paraphrase.py,
  then prose found on this machine; the `minilm` extra),

the search runs with a data file of representative samples (split by onnxopt into a
calibration/training part and a held-out part that every candidate is judged and timed on),
1 intra-op thread, and the output budget (min cosine 0.99 to the source; no task metric).
Printed per model: the chosen chain, its speed-up over the source with the 95% interval
(timed interleaved with the source, re-timed against the runner-up), its min cosine, the
best single step's speed-up (the fastest one-step candidate within the budget, from the
same search), the number of candidates and the search's wall time. The header gives this
CPU's int8 facts: what int8 buys, and so what the search chooses, depends on them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _minilm_data(folder: Path, samples: int, sequence: int) -> tuple[Path, dict[str, int]]:
    """Real sentences padded to ``sequence`` tokens: the paraphrase pairs, then prose found
    on this machine (package descriptions, docstrings), enough to distill on."""
    import random

    from _machine import corpus_sentences, minilm_npz
    from minilm_paraphrase import PAIRS

    pairs = [s for pair in PAIRS for s in pair]
    corpus = corpus_sentences(set(pairs))
    random.Random(0).shuffle(corpus)
    path = folder / "minilm.npz"
    minilm_npz(path, (pairs + corpus)[:samples], sequence)
    return path, {"batch": 1, "sequence": sequence}


def _search(model: Path, data: Path, dims: dict[str, int], args: argparse.Namespace) -> dict:
    import onnxopt

    out = model.with_name(model.stem + ".optimized.onnx")
    started = time.monotonic()
    manifest = onnxopt.optimize(
        model,
        out,
        data={"path": str(data), "samples": 10_000, "holdout": args.holdout},
        dims=dims,
        target={"intra_op_threads": 1},
        time_budget=args.time_budget,
        recover=args.recover,
        distill={"steps": args.distill_steps, "batch_size": 16, "max_seconds": 600},
    )
    report = manifest["steps"][-1]["report"]
    report["wall_s"] = time.monotonic() - started
    return report


def _line(name: str, report: dict) -> str:
    rows = {r["id"]: r for r in report["candidates"]}
    singles = [
        r
        for r in rows.values()
        if len(r["chain"]) == 1 and r["status"] == "verified" and r.get("speedup")
    ]
    single = max(singles, key=lambda r: r["speedup"], default=None)
    single_text = f"{single['label']} {single['speedup']:.2f}x" if single else "none"
    ran = sum(1 for r in rows.values() if r["id"] != "source" and r["status"] != "not tried")
    if report["chosen"] is None:
        chosen = f"unchanged copy ({report['outcome'].split(': ', 1)[-1][:70]})"
        return f"{name:<12}{chosen:<60}{'':>22}{single_text:>28}{ran:>6}{report['wall_s']:>8.0f}"
    win = rows[report["chosen"]]
    low, high = win["ratio_ci"]
    interval = f"[{1 / high:.2f}, {1 / low:.2f}]"
    return (
        f"{name:<12}{win['label']:<44}{win['speedup']:>6.2f}x {interval:<12}"
        f"{win['cosine']:>8.4f}{single_text:>28}{ran:>6}{report['wall_s']:>8.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet,transformer,minilm")
    parser.add_argument("--samples", type=int, default=192, help="samples per model")
    parser.add_argument("--holdout", type=float, default=0.25, help="held-out fraction")
    parser.add_argument("--image-side", type=int, default=224, help="ResNet input side")
    parser.add_argument("--sequence", type=int, default=128, help="tokens per sample")
    parser.add_argument("--time-budget", default="20m", help="per model")
    parser.add_argument("--recover", default="auto", help="auto, distill, compensate, none")
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--markdown", action="store_true", help="also print each report")
    args = parser.parse_args()

    from _machine import machine_line
    from int8_recipes import _data, _export

    from onnxopt.cpu import int8_facts

    print(machine_line(flags=True))
    print(f"int8: {int8_facts().summary()}")
    print(
        f"ResNet sample {args.image_side}x{args.image_side}, sequences of {args.sequence} "
        f"tokens, {args.samples} samples per model ({args.holdout:.0%} held out), batch 1, "
        f"1 thread, time budget {args.time_budget} per model, recover {args.recover}"
    )
    print(
        f"{'model':<12}{'chosen chain':<44}{'speed-up':>7} {'95% CI':<12}{'min cos':>8}"
        f"{'best single step':>28}{'cands':>6}{'wall s':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            model = _export(folder, name, args.image_side)
            if name == "minilm":
                data, dims = _minilm_data(folder, args.samples, args.sequence)
            else:
                data, dims = _data(folder, name, args.samples, args.image_side, args.sequence)
            report = _search(model, data, dims, args)
            print(_line(name, report), flush=True)
            if args.markdown:
                print((model.with_name(model.stem + ".optimized.optimize.md")).read_text())


if __name__ == "__main__":
    main()
