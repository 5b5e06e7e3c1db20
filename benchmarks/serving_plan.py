"""`onnxopt bench --plan` on the ResNet-style and the transformer samples: the chosen
serving configuration, the runner-up, and how long the search took (issue 16).

Exports both samples (ResNet 224x224; transformer at sequence 128, batch symbolic), then
runs the plan search of each with a p99 budget per request (60 ms and 5 ms by default) and
prints the plan, the runner-up and the search's wall time and configuration counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resnet-budget", type=float, default=60.0)
    parser.add_argument("--transformer-budget", type=float, default=5.0)
    args = parser.parse_args()

    from _machine import machine_line

    import onnxopt.api as api
    from onnxopt.bench.report import plan_lines

    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resnet, tr = folder / "resnet.onnx", folder / "tr.onnx"
        api.export(
            f"{REPO}/sample_models/resnet.py:build",
            resnet,
            [{"name": "image", "shape": ["batch", 3, 224, 224], "range": [0, 1]}],
            dims={"batch": 1},
        )
        api.export(
            f"{REPO}/sample_models/transformer.py:build",
            tr,
            [
                {
                    "name": "input_ids",
                    "shape": ["batch", "sequence"],
                    "dtype": "int64",
                    "range": [0, 1000],
                },
                {
                    "name": "attention_mask",
                    "shape": ["batch", "sequence"],
                    "dtype": "int64",
                    "range": [1, 2],
                },
            ],  # fmt: skip
            dims={"batch": 2, "sequence": 16},
        )
        for path, budget, dims in (
            (resnet, args.resnet_budget, None),
            (tr, args.transformer_budget, {"sequence": 128}),
        ):
            started = time.perf_counter()
            report = api.bench(
                [path], dims=dims, plan=True, latency_budget_ms=budget, runs=10, trials=1
            )
            wall = time.perf_counter() - started
            plan = report["plans"][0]
            print("\n".join(plan_lines(plan)))
            print(
                f"search: {plan['seconds']:.1f} s for {plan['searched']} of {plan['of']} "
                f"configurations ({wall:.1f} s with the plain benchmark around it)\n"
            )


if __name__ == "__main__":
    main()
