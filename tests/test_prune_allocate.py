"""Pruning by allocation (macs_target): each group's measured sensitivity must be what
pruning that group really does to the outputs, the allocation must spend the target on the
groups that cost least, and on a model whose groups differ it must keep the outputs closer
than one uniform ratio removing as many MACs."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxopt.config import PruneStep
from onnxopt.steps.prune import allocate
from onnxopt.steps.prune.analysis import attr
from onnxopt.steps.prune.channels import channel_prune
from tests.conftest import file_states, run_cli
from tests.test_prune import build, w
from tests.test_prune_rules import CASES


def _ctx(feeds: list[dict[str, np.ndarray]], dims: dict[str, int]) -> types.SimpleNamespace:
    """What measuring and pruning read of a step's context: the dims, the calibration
    samples and the target (the engine's own context is used end to end below)."""
    from onnxopt.config import Target

    return types.SimpleNamespace(
        dims=dims, calibration=feeds, inputs=feeds[0], target=Target(), scratch=None
    )


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list]:
    session = ort.InferenceSession(model.SerializeToString())
    return [session.run(None, f) for f in feeds]


@pytest.mark.parametrize("compensate", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_groups_measured_change_is_what_pruning_it_alone_does(
    tmp_path: Path, name: str, compensate: bool
) -> None:
    case = CASES[name]()
    src = build(tmp_path / "m.onnx", case.nodes, case.inits, case.x_shape, case.y_shape)
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal(case.feed).astype(np.float32)} for _ in range(3)]
    ctx = _ctx(feeds, {"N": case.feed[0]})
    cfg = PruneStep(type="prune", sensitivity_ratios=[0.5], compensate=compensate)
    model = onnx.load(str(src))
    found = allocate.measure(model, cfg, ctx)  # type: ignore[arg-type]
    costs, total = found.costs, found.total
    cost = next(c for c in costs if "A" in c.key.split(","))
    assert total > 0 and cost.channel_macs > 0 and cost.unmeasured is None
    pruned = onnx.load(str(src))
    channel_prune(pruned, cfg, ctx, ratios={cost.key: 0.5})  # type: ignore[arg-type]
    real = allocate._change(_outputs(pruned, feeds), _outputs(model, feeds))
    assert real > 0
    padded = any(n.name != "A" and any(v for v in attr(n, "pads", [])) for n in case.nodes)
    if compensate and padded:
        # the mean folded into a bias also lands where a padded kernel reads zeros: close
        assert cost.curve[0.5] == pytest.approx(real, rel=0.1)
    else:
        assert cost.curve[0.5] == pytest.approx(real, rel=1e-3, abs=1e-7)


def _cost(key: str, change: dict[float, float], macs: float = 100.0) -> allocate.GroupCost:
    return allocate.GroupCost(key, 16, macs, list(range(16)), dict(change))


def test_the_allocation_spends_the_target_where_the_outputs_change_least() -> None:
    cfg = PruneStep(type="prune")
    robust = _cost("robust", {0.25: 1e-4, 0.5: 3e-4, 0.75: 9e-4})
    fragile = _cost("fragile", {0.25: 1e-1, 0.5: 3e-1, 0.75: 6e-1})
    total = 2 * 16 * 100.0
    ratios = allocate.allocate([fragile, robust], total, 0.25, cfg)
    assert ratios == {"robust": 0.5}  # 8 of 32 channels' MACs, all from the robust group
    more = allocate.allocate([fragile, robust], total, 0.5, cfg)
    assert more["robust"] == 0.75 and 0 < more["fragile"] <= 0.25  # robust used up first
    assert allocate.estimated_saving([fragile, robust], more, cfg) >= 0.5 * total
    # beyond what the measured ratios allow: everything at the largest, and it stops
    most = allocate.allocate([fragile, robust], total, 0.99, cfg)
    assert most == {"robust": 0.75, "fragile": 0.75}
    # between measured points the change follows the channels removed: with round_to 8, a
    # group of 24 loses 8 channels at 0.375 as at 0.5, so it changes as much
    rounded = PruneStep(type="prune", round_to=8)
    coarse = allocate.GroupCost("coarse", 24, 1.0, list(range(24)), {0.25: 0.0, 0.5: 0.2})
    assert coarse.change(0.375, rounded) == pytest.approx(0.2)
    # a group that could not be measured is never pruned
    robust.unmeasured = "input shape unknown"
    assert "robust" not in allocate.allocate([fragile, robust], total, 0.25, cfg)


def _two_blocks(path: Path) -> Path:
    """x -> A (conv 3x3) -> Relu -> B (conv 3x3) -> Relu -> C (1x1) -> y. Every channel of
    A matters; half of B's channels are read by C with tiny weights, and their own weights
    are the smaller (an L1 ranking removes them first): pruning B by half costs almost
    nothing, pruning A by any ratio costs much."""
    rng = np.random.default_rng(0)
    wb = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    wb[16:] *= 0.3
    wc = rng.standard_normal((4, 32, 1, 1)).astype(np.float32)
    wc[:, 16:] *= 1e-3
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "wb", "bb"], ["b"], name="B", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "wc"], ["y"], name="C"),
    ]
    inits = {"wa": w(32, 3, 3, 3), "ba": w(32), "wb": wb, "bb": w(32), "wc": wc}
    return build(path, nodes, inits, ["N", 3, 16, 16], ["N", 4, 16, 16])


def test_allocated_pruning_keeps_the_outputs_closer_than_a_uniform_ratio(tmp_path: Path) -> None:
    src = _two_blocks(tmp_path / "m.onnx")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((48, 3, 16, 16)).astype("f4"))
    before = file_states(src, data)

    def pruned(*options: str) -> dict:
        out = tmp_path / f"p{len(options)}" / "p.onnx"
        proc = run_cli("prune", src, "-o", out, "--data", data, "--no-guard", "--json", *options)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["steps"][-1]

    uniform = pruned("--ratio", "0.25")
    share = 1 - uniform["report"]["macs_after"] / uniform["report"]["macs_before"]
    allocated = pruned("--macs-target", f"{share:.3f}", "--criterion", "l1", "--no-measure-speed")
    report = allocated["report"]
    assert share - 0.01 <= report["allocation"]["macs_removed"] <= share + 0.15
    by_name = {",".join(g["producers"]): g for g in report["allocation"]["groups"]}
    assert by_name["B"]["ratio"] > by_name["A"]["ratio"]  # spent where it costs least
    assert all(len(g["change"]) == 3 for g in by_name.values())  # what it measured, kept
    assert report["allocation"]["measured_on"].endswith("calibration samples")
    got, ref = (e["verification"]["main"]["outputs"][0]["cosine"] for e in (allocated, uniform))
    assert got > ref, (got, ref)
    assert file_states(src, data) == before


def test_a_macs_target_is_checked_as_channel_pruning(tmp_path: Path) -> None:
    src = _two_blocks(tmp_path / "m.onnx")
    for options in (["--method", "magnitude"], ["--ratio", "auto", "--min-cosine", "0.9"]):
        proc = run_cli("prune", src, "-o", tmp_path / "o.onnx", "--macs-target", "0.3", *options)
        assert proc.returncode == 2 and "macs_target" in proc.stderr, proc.stderr
        assert not (tmp_path / "o.onnx").exists()
