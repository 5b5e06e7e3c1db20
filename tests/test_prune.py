"""prune: channel groups on graphs built in code, checked against hand-sliced references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ExitCode, StepError
from tests import models
from tests.conftest import SAMPLES, Untouched, error_line, run_cli, write_yaml

RNG = np.random.default_rng(0)
OPSET = [helper.make_opsetid("", 18)]


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def build(
    path: Path,
    nodes: list,
    inits: dict[str, np.ndarray],
    x_shape: list,
    y_shape: list,
) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def prune(src: Path, out: Path, **step: object) -> tuple[dict, Path]:
    cfg = {
        "model": {"path": str(src)},
        "output_dir": str(out),
        "steps": [{"type": "prune", "guard": None, **step}],  # what pruning does, not speed
    }
    entry = run_pipeline(parse_config(cfg), out.parent)["steps"][0]
    return entry, out / entry["output"]["path"]


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def keep_by_l1(*mats: np.ndarray, count: int) -> np.ndarray:
    """Channels kept by summed L1 norms over output channels (axis 0 of each matrix)."""
    score = sum(np.abs(m.reshape(m.shape[0], -1)).sum(axis=1) for m in mats)
    return np.sort(np.argsort(-score, kind="stable")[:count])


def same_outputs(pruned: Path, src: Path, replaced: dict[str, np.ndarray], shape: tuple) -> None:
    """The pruned model equals the source graph run with hand-sliced weights."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name in replaced:
            init.CopyFrom(numpy_helper.from_array(replaced[init.name], init.name))
    for node in model.graph.node:  # a depthwise conv's group follows its channels
        for attr in node.attribute:
            if attr.name == "group" and attr.i > 1:
                attr.i = replaced[node.input[1]].shape[0]
    del model.graph.value_info[:]
    reference = ort.InferenceSession(model.SerializeToString())
    x = RNG.standard_normal(shape).astype(np.float32)
    want = reference.run(None, {"x": x})[0]
    got = ort.InferenceSession(str(pruned)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    onnx.checker.check_model(str(pruned))


def test_conv_chain(tmp_path: Path) -> None:
    wa, ba, wb = w(8, 3, 3, 3), w(8), w(4, 8, 3, 3)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1], name="A"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "wb"], ["y"], pads=[1, 1, 1, 1], name="B"),
        ],
        {"wa": wa, "ba": ba, "wb": wb},
        ["N", 3, 8, 8],
        ["N", 4, 8, 8],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5)
    keep = keep_by_l1(wa, count=4)
    got = weights(out)
    assert got["wa"].shape == (4, 3, 3, 3) and got["wb"].shape == (4, 4, 3, 3)
    same_outputs(out, src, {"wa": wa[keep], "ba": ba[keep], "wb": wb[:, keep]}, (2, 3, 8, 8))
    groups = {tuple(g["producers"]): g for g in entry["report"]["groups"]}
    assert groups[("A",)]["channels_after"] == 4
    assert groups[("B",)]["prunable"] is False  # reaches the graph output
    assert entry["report"]["macs_after"] < entry["report"]["macs_before"]
    assert entry["report"]["parameters_after"] < entry["report"]["parameters_before"]
    assert "second_shape" in entry["verification"]


def test_residual_block_prunes_both_sides_together(tmp_path: Path) -> None:
    wa, wb, wc = w(8, 3, 1, 1), w(8, 8, 3, 3), w(4, 8, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name="A"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "wb"], ["b"], pads=[1, 1, 1, 1], name="B"),
            helper.make_node("Add", ["b", "r"], ["s"]),
            helper.make_node("Relu", ["s"], ["t"]),
            helper.make_node("Conv", ["t", "wc"], ["y"], name="C"),
        ],
        {"wa": wa, "wb": wb, "wc": wc},
        ["N", 3, 6, 6],
        ["N", 4, 6, 6],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5)
    keep = keep_by_l1(wa, wb, count=4)
    group = next(g for g in entry["report"]["groups"] if "A" in g["producers"])
    assert sorted(group["producers"]) == ["A", "B"] and group["channels_after"] == 4
    same_outputs(
        out, src, {"wa": wa[keep], "wb": wb[keep][:, keep], "wc": wc[:, keep]}, (2, 3, 6, 6)
    )


def test_concat_branches_use_channel_offsets(tmp_path: Path) -> None:
    wa, wb, wc = w(6, 3, 1, 1), w(4, 3, 1, 1), w(5, 10, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name="A"),
            helper.make_node("Conv", ["x", "wb"], ["b"], name="B"),
            helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
            helper.make_node("Conv", ["c", "wc"], ["y"], name="C"),
        ],
        {"wa": wa, "wb": wb, "wc": wc},
        ["N", 3, 4, 4],
        ["N", 5, 4, 4],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5)
    ka, kb = keep_by_l1(wa, count=3), keep_by_l1(wb, count=2)
    cols = np.concatenate([ka, 6 + kb])
    same_outputs(out, src, {"wa": wa[ka], "wb": wb[kb], "wc": wc[:, cols]}, (2, 3, 4, 4))


def test_depthwise_block(tmp_path: Path) -> None:
    wa, wd, bd, wb = w(8, 3, 1, 1), w(8, 1, 3, 3), w(8), w(4, 8, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name="A"),
            helper.make_node(
                "Conv", ["a", "wd", "bd"], ["d"], group=8, pads=[1, 1, 1, 1], name="DW"
            ),
            helper.make_node("Relu", ["d"], ["r"]),
            helper.make_node("Conv", ["r", "wb"], ["y"], name="B"),
        ],
        {"wa": wa, "wd": wd, "bd": bd, "wb": wb},
        ["N", 3, 5, 5],
        ["N", 4, 5, 5],
    )
    _, out = prune(src, tmp_path / "o", ratio=0.5)
    keep = keep_by_l1(wa, count=4)
    same_outputs(
        out, src, {"wa": wa[keep], "wd": wd[keep], "bd": bd[keep], "wb": wb[:, keep]}, (2, 3, 5, 5)
    )
    dw = next(n for n in onnx.load(str(out)).graph.node if n.name == "DW")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4


def test_conv_flatten_gemm(tmp_path: Path) -> None:
    wa, wg, bg = w(6, 3, 3, 3), w(10, 6 * 16), w(10)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="A"),
            helper.make_node("Flatten", ["a"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1, name="G"),
        ],
        {"wa": wa, "wg": wg, "bg": bg},
        ["N", 3, 4, 4],
        ["N", 10],
    )
    _, out = prune(src, tmp_path / "o", ratio=0.5)
    keep = keep_by_l1(wa, count=3)
    cols = (keep[:, None] * 16 + np.arange(16)[None, :]).ravel()
    same_outputs(out, src, {"wa": wa[keep], "wg": wg[:, cols]}, (2, 3, 4, 4))


def test_transformer_mlp_block(tmp_path: Path) -> None:
    w1, b1, w2, b2 = w(16, 32), w(32), w(32, 16), w(16)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Sigmoid", ["hb"], ["s"]),
            helper.make_node("MatMul", ["s", "w2"], ["o"], name="fc2"),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        ["N", "S", 16],
        ["N", "S", 16],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.25, round_to=8)
    keep = keep_by_l1(w1.T, count=24)
    same_outputs(out, src, {"w1": w1[:, keep], "b1": b1[keep], "w2": w2[keep]}, (2, 5, 16))
    fc1 = next(g for g in entry["report"]["groups"] if g["producers"] == ["fc1"])
    assert fc1["channels_after"] == 24  # 32 * 0.75, a multiple of round_to


ENCODER_LINEARS = ("q", "k", "v", "o", "fc2")  # their channels are the hidden size: kept


@pytest.mark.parametrize("gelu", ["erf", "tanh", "gelu", "bias_gelu"])
def test_transformer_encoder_prunes_only_the_feed_forward_channels(
    tmp_path: Path, gelu: str
) -> None:
    src = models.transformer_encoder(tmp_path / "m.onnx", layers=2, hidden=16, ffn=64, gelu=gelu)
    before = weights(src)
    entry, out = prune(src, tmp_path / "o", ratio=0.5)
    groups = {g["producers"][0]: g for g in entry["report"]["groups"]}
    replaced = {}
    for i in range(2):
        fc1 = groups[f"l{i}.fc1"]
        assert fc1["prunable"] and (fc1["channels_before"], fc1["channels_after"]) == (64, 32)
        for name in ENCODER_LINEARS:
            assert groups[f"l{i}.{name}"]["prunable"] is False, name
        assert any("Reshape" in r for r in groups[f"l{i}.q"]["reasons"])  # split into heads
        assert any("LayerNormalization" in r for r in groups[f"l{i}.fc2"]["reasons"])
        w1, b1, w2 = (before[f"l{i}.{n}"] for n in ("fc1.w", "fc1.b", "fc2.w"))
        keep = keep_by_l1(w1.T, count=32)
        replaced |= {f"l{i}.fc1.w": w1[:, keep], f"l{i}.fc1.b": b1[keep], f"l{i}.fc2.w": w2[keep]}
    got = weights(out)
    for name, value in before.items():  # W1 columns, b1 entries, W2 rows; nothing else
        np.testing.assert_array_equal(got[name], replaced.get(name, value), err_msg=name)
    for shape in [(2, 5, 16), (1, 9, 16)]:  # two sequence lengths, equal to the hand-sliced
        same_outputs(out, src, replaced, shape)
    report = entry["report"]
    assert report["parameters_after"] == report["parameters_before"] - 2 * 32 * (16 + 1 + 16)
    assert entry["verification"]["second_shape"]["passed"]


def test_sample_transformer_feed_forward_groups_are_pruned(tmp_path: Path) -> None:
    import onnxopt

    src = tmp_path / "tr.onnx"
    seq = ["batch", "sequence"]
    specs = [
        {"name": "input_ids", "shape": seq, "dtype": "int64", "range": [0, 1000]},
        {"name": "attention_mask", "shape": seq, "dtype": "int64", "range": [1, 2]},
    ]
    dims = {"batch": 2, "sequence": 16}
    onnxopt.export(f"{SAMPLES / 'transformer.py'}:build", src, specs, dims=dims)
    cfg = {
        "model": {"path": str(src)},
        "inputs": specs,
        "dims": dims,
        "output_dir": str(tmp_path / "o"),
        "steps": [{"type": "prune", "guard": None, "ratio": 0.5}],
    }
    entry = run_pipeline(parse_config(cfg), tmp_path)["steps"][0]
    out = tmp_path / "o" / entry["output"]["path"]
    report = entry["report"]
    pruned = [g for g in report["groups"] if g["prunable"]]
    # the two layers' fc1 (hidden 128 -> ffn 512); Q/K/V/out and fc2 keep the hidden size
    assert [(g["channels_before"], g["channels_after"]) for g in pruned] == [(512, 256)] * 2
    assert len(report["groups"]) == 12
    assert report["parameters_after"] == report["parameters_before"] - 2 * 256 * (128 + 1 + 128)
    assert report["macs_after"] < report["macs_before"]
    assert entry["verification"]["second_shape"]["passed"]
    ids = RNG.integers(0, 1000, (3, 11))  # another batch and sequence length than the dims
    mask = np.ones((3, 11), np.int64)
    mask[0, 7:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    want = ort.InferenceSession(str(src)).run(None, feeds)[0]
    got = ort.InferenceSession(str(out)).run(None, feeds)[0]
    assert got.shape == want.shape == (3, 11, 128)
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.5, cosine


def test_compensation_folds_into_the_bias_add_after_a_matmul(tmp_path: Path) -> None:
    # A Linear exports as MatMul + Add(bias): the removed channels' mean goes into that bias.
    w1, w2, b2 = w(8, 16), w(16, 8), w(8)
    b1 = (np.abs(w(16)) * 5 + 3).astype(np.float32)  # large means after Relu
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["b1", "h"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        ["batch", "sequence", 8],
        ["batch", "sequence", 8],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5, compensate=True)
    report = entry["report"]
    fc1 = next(g for g in report["groups"] if g["producers"] == ["fc1"])
    assert fc1["compensated"] == ["fc2"]
    assert entry["verification"]["main"]["outputs"][0]["cosine"] > (
        report["cosine_without_compensation"] + 0.01
    )
    with np.load(tmp_path / "o" / "inputs.npz") as data:  # the inputs the means came from
        x = data["x"]
    r = np.maximum(x @ w1 + b1, 0).reshape(-1, 16).mean(axis=0)
    removed = np.setdiff1d(np.arange(16), keep_by_l1(w1.T, count=8))
    got = weights(out)
    assert got["w2"].shape == (8, 8)
    np.testing.assert_allclose(got["b2"], b2 + r[removed] @ w2[removed], rtol=1e-4, atol=1e-3)


def test_activation_criterion_reads_the_last_axis_of_channels_last_matmuls(
    tmp_path: Path,
) -> None:
    # [N, H, W, C] into a MatMul (ConvNeXt's pointwise layers): the channels are the last axis
    w1, w2 = w(8, 8), w(8, 4)
    b1 = np.array([-50, 0, -50, 0, -50, 0, -50, 0], np.float32)  # odd channels stay active
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        {"w1": w1, "b1": b1, "w2": w2},
        ["N", 4, 4, 8],
        ["N", 4, 4, 4],
    )
    _, out = prune(src, tmp_path / "o", ratio=0.5, criterion="activation")
    np.testing.assert_array_equal(weights(out)["b1"], np.zeros(4, np.float32))


def test_unsupported_pattern_is_left_intact_and_reported(tmp_path: Path) -> None:
    wa, wb = w(8, 3, 1, 1), w(4, 2, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name="A"),
            helper.make_node("DepthToSpace", ["a"], ["t"], blocksize=2),
            helper.make_node("Conv", ["t", "wb"], ["y"], name="B"),
        ],
        {"wa": wa, "wb": wb},
        ["N", 3, 4, 4],
        ["N", 4, 8, 8],
    )
    with pytest.raises(StepError, match="removed nothing") as info:
        prune(src, tmp_path / "o", ratio=0.5)
    assert "DepthToSpace is not understood" in str(info.value)
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(src)},
            "output_dir": str(tmp_path / "o2"),
            "steps": [{"type": "prune", "ratio": 0.5}],
        },
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.FAILURE
    assert "channel pruning removed nothing" in error_line(proc)


def test_magnitude_sparsity_and_two_four_pattern(tmp_path: Path) -> None:
    w1, w2 = w(64, 64), w(64, 8)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["y"]),
        ],
        {"w1": w1, "w2": w2},
        ["N", 64],
        ["N", 8],
    )
    entry, out = prune(src, tmp_path / "o", method="magnitude", ratio=0.6)
    report = entry["report"]
    assert report["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert report["compressed_size_after"] < report["compressed_size_before"]
    assert any("no faster" in warning for warning in entry["warnings"])
    got = weights(out)["w1"]
    threshold = np.sort(np.abs(np.concatenate([w1.ravel(), w2.ravel()])))[
        int(0.6 * (w1.size + w2.size)) - 1
    ]
    np.testing.assert_array_equal(got, np.where(np.abs(w1) > threshold, w1, 0))
    entry, out = prune(src, tmp_path / "o24", method="magnitude", pattern="2:4")
    got = weights(out)["w1"]
    blocks = (got.T.reshape(64, 16, 4) == 0).sum(axis=-1)  # groups of 4 along the input dim
    assert (blocks == 2).all()
    assert entry["report"]["sparsity"] == pytest.approx(0.5)


def test_prune_budget_turns_a_large_drop_into_a_failure(tmp_path: Path) -> None:
    wa, wb = w(16, 3, 3, 3), w(4, 16, 3, 3)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="A"),
            helper.make_node("Conv", ["a", "wb"], ["y"], pads=[1, 1, 1, 1], name="B"),
        ],
        {"wa": wa, "wb": wb},
        ["N", 3, 6, 6],
        ["N", 4, 6, 6],
    )
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"path": str(src)},
            "output_dir": str(tmp_path / "o"),
            "steps": [{"type": "prune", "ratio": 0.75, "tolerance": {"min_cosine": 0.99}}],
        },
    )
    proc = run_cli("run", cfg)
    assert proc.returncode == ExitCode.VERIFICATION
    assert "cosine" in error_line(proc)


def test_cli_prune_and_python_api(tmp_path: Path) -> None:
    import json

    import onnxopt

    wa, wb = w(8, 3, 3, 3), w(4, 8, 3, 3)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="A"),
            helper.make_node("Conv", ["a", "wb"], ["y"], pads=[1, 1, 1, 1], name="B"),
        ],
        {"wa": wa, "wb": wb},
        ["N", 3, 6, 6],
        ["N", 4, 6, 6],
    )
    with Untouched(src):
        proc = run_cli(
            "prune", src, "-o", tmp_path / "p.onnx", "--ratio", "0.5", "--no-guard", "--json"
        )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["steps"][0]["report"]
    assert report["method"] == "channel" and report["macs_after"] < report["macs_before"]
    manifest = onnxopt.prune(src, tmp_path / "q.onnx", method="magnitude", ratio=0.5)
    assert manifest["steps"][0]["report"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    bad = run_cli(
        "prune", src, "-o", tmp_path / "r.onnx", "--method", "magnitude", "--pattern", "4:2"
    )
    assert bad.returncode == ExitCode.USAGE
    assert "expected N:M" in error_line(bad)


def _three_convs(tmp_path: Path) -> Path:
    wa, wb, wc = w(16, 3, 3, 3), w(16, 16, 3, 3), w(4, 16, 3, 3)
    return build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1], name="stage1.conv"),
            helper.make_node("Relu", ["a"], ["ra"]),
            helper.make_node("Conv", ["ra", "wb"], ["b"], pads=[1, 1, 1, 1], name="stage2.conv"),
            helper.make_node("Relu", ["b"], ["rb"]),
            helper.make_node("Conv", ["rb", "wc"], ["y"], pads=[1, 1, 1, 1], name="head"),
        ],
        {"wa": wa, "wb": wb, "wc": wc},
        ["N", 3, 6, 6],
        ["N", 4, 6, 6],
    )


def test_layer_ratios_by_name_pattern(tmp_path: Path) -> None:
    src = _three_convs(tmp_path)
    entry, _ = prune(src, tmp_path / "o", ratio=0.25, layer_ratios={"stage2.*": 0.75})
    after = {g["producers"][0]: g["channels_after"] for g in entry["report"]["groups"]}
    assert after == {"stage1.conv": 12, "stage2.conv": 4, "head": 4}


def test_ratio_auto_finds_the_largest_ratio_within_budget(tmp_path: Path) -> None:
    src = _three_convs(tmp_path)
    entry, _ = prune(src, tmp_path / "o", ratio="auto", tolerance={"min_cosine": 0.9}, auto_steps=5)
    auto = entry["report"]["auto"]
    assert 0 < auto["ratio"] < 0.9
    assert entry["verification"]["main"]["outputs"][0]["cosine"] >= 0.9
    passed = [t["ratio"] for t in auto["search"] if t["passed"]]
    failed = [t["ratio"] for t in auto["search"] if not t["passed"]]
    assert auto["ratio"] == max(passed)
    assert failed and min(failed) > auto["ratio"]  # every larger ratio tried missed the budget
    with pytest.raises(Exception, match="needs a budget"):
        prune(src, tmp_path / "o2", ratio="auto")


def test_compensation_folds_removed_means_into_the_next_bias(tmp_path: Path) -> None:
    # Channels with a large positive bias have a large mean after Relu: dropping them without
    # compensation shifts the output; folding their mean into the next bias undoes most of it.
    wa, ba, wb = w(8, 3, 1, 1), (np.abs(w(8)) * 5 + 3).astype(np.float32), w(4, 8, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "wb"], ["y"], name="B"),
        ],
        {"wa": wa, "ba": ba, "wb": wb},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5, compensate=True)
    report = entry["report"]
    with_comp = entry["verification"]["main"]["outputs"][0]["cosine"]
    assert report["groups"][0]["compensated"] == ["B"]
    assert with_comp > report["cosine_without_compensation"] + 0.01
    assert "B_compensation_bias" in weights(out)


def test_activation_criterion_keeps_the_busiest_channels(tmp_path: Path) -> None:
    wa = w(8, 3, 1, 1)
    ba = np.array([-50, 0, -50, 0, -50, 0, -50, 0], np.float32)  # odd channels stay active
    wb = w(4, 8, 1, 1)
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "wb"], ["y"], name="B"),
        ],
        {"wa": wa, "ba": ba, "wb": wb},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
    )
    _, out = prune(src, tmp_path / "o", ratio=0.5, criterion="activation")
    np.testing.assert_array_equal(weights(out)["ba"], np.zeros(4, np.float32))


def test_cli_ratio_auto_layer_ratio_and_compensate(tmp_path: Path) -> None:
    import json

    src = _three_convs(tmp_path)
    proc = run_cli(
        "prune",
        src,
        "-o",
        tmp_path / "a.onnx",
        "--ratio",
        "auto",
        "--min-cosine",
        "0.9",
        "--layer-ratio",
        "stage1.*=0",
        "--compensate",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)["steps"][0]
    report = entry["report"]
    assert 0 < report["auto"]["ratio"] < 0.9
    after = {g["producers"][0]: g["channels_after"] for g in report["groups"]}
    assert after["stage1.conv"] == 16  # pattern ratio 0 keeps every channel
    assert "cosine_without_compensation" in report
    assert "speed" in entry
    bad = run_cli("prune", src, "-o", tmp_path / "b.onnx", "--ratio", "lots")
    assert bad.returncode == ExitCode.USAGE
    assert "--ratio expects a number" in error_line(bad)


def test_magnitude_pruning_streams_external_weights(tmp_path: Path) -> None:
    """Weights in external data go file to file (the path models over 2 GB take)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from onnxopt.config import parse_config
    from onnxopt.engine import run_pipeline
    from tests import models

    src = models.matmul_chain(tmp_path / "ext.onnx", 3, 64, external=True)
    dense = models.matmul_chain(tmp_path / "dense.onnx", 3, 64, external=False)
    results = []
    for source, name in ((src, "ext"), (dense, "dense")):
        cfg = {
            "model": {"path": str(source)},
            "output_dir": str(tmp_path / name),
            "external_data": "always" if name == "ext" else "never",
            "steps": [{"type": "prune", "method": "magnitude", "ratio": 0.5, "guard": None}],
        }
        manifest = run_pipeline(parse_config(cfg), tmp_path)
        entry = manifest["steps"][0]
        out = tmp_path / name / entry["output"]["path"]
        if name == "ext":
            assert entry["output"]["external_data"] == [out.name + ".data"]
        model = onnx.load(str(out))
        results.append({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
        assert entry["report"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # streaming and in-memory pruning give the same weights
    for name, weights in results[1].items():
        np.testing.assert_array_equal(results[0][name], weights)


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_compensation_handles_convolutions_of_any_rank(tmp_path: Path, spatial: int) -> None:
    # Conv1d (audio front ends), Conv2d and Conv3d: the removed channels' mean activations,
    # summed over the consumer's kernel, go into its bias
    kernel = (3,) * spatial
    w1, w2 = w(16, 4, *kernel), w(8, 16, *kernel)
    b1 = (np.abs(w(16)) * 5 + 3).astype(np.float32)
    b2 = w(8)
    pads = {"pads": [1] * (2 * spatial)}
    src = build(
        tmp_path / "m.onnx",
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="c1", **pads),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2", **pads),
        ],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        ["batch", 4, *([6] * spatial)],
        ["batch", 8, *([6] * spatial)],
    )
    entry, out = prune(src, tmp_path / "o", ratio=0.5, compensate=True)
    c1 = next(g for g in entry["report"]["groups"] if g["producers"] == ["c1"])
    assert c1["compensated"] == ["c2"] and c1["channels_after"] == 8
    got = weights(out)
    assert got["w2"].shape == (8, 8, *kernel) and got["w1"].shape == (8, 4, *kernel)
    with np.load(tmp_path / "o" / "inputs.npz") as data:
        x = data["x"]
    model = onnx.load(str(src))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    (r,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["r"], {"x": x}
    )
    mean = r.mean(axis=tuple(i for i in range(r.ndim) if i != 1))
    removed = np.setdiff1d(np.arange(16), keep_by_l1(w1, count=8))
    part = w2[:, removed] * mean[removed].reshape(1, -1, *([1] * spatial))
    delta = part.reshape(8, -1).sum(axis=1)
    np.testing.assert_allclose(got["b2"], b2 + delta, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("consumer", ["gemm_transB", "matmul_batched"])
def test_pruning_reaches_gemm_transb_and_batched_matmul_consumers(
    tmp_path: Path, consumer: str
) -> None:
    # a Gemm with transB reads its weight's columns; a batched MatMul weight [B, K, N] its
    # second-last axis (no per-channel bias can hold its compensation: left uncompensated)
    w1, b1 = w(8, 16), (np.abs(w(16)) * 5 + 3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
    ]
    if consumer == "gemm_transB":
        w2, b2 = w(8, 16), w(8)
        nodes.append(helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1))
        inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        x_shape, y_shape = ["batch", 8], ["batch", 8]
    else:
        w2 = w(3, 16, 8)
        nodes.append(helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"))
        inits = {"w1": w1, "b1": b1, "w2": w2}
        x_shape, y_shape = [3, "sequence", 8], [3, "sequence", 8]
    src = build(tmp_path / "m.onnx", nodes, inits, x_shape, y_shape)
    entry, out = prune(src, tmp_path / "o", ratio=0.5, compensate=True)
    fc1 = next(g for g in entry["report"]["groups"] if g["producers"] == ["fc1"])
    assert fc1["channels_after"] == 8
    keep = keep_by_l1(w1.T, count=8)
    got = weights(out)
    if consumer == "gemm_transB":
        assert fc1["compensated"] == ["fc2"]
        np.testing.assert_array_equal(got["w2"], w2[:, keep])
    else:
        assert fc1["compensated"] == []
        np.testing.assert_array_equal(got["w2"], w2[:, keep])
    with np.load(tmp_path / "o" / "inputs.npz") as data:
        x = data["x"]
    h = np.maximum(x @ w1 + b1, 0)[..., keep]
    (y,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    if consumer == "matmul_batched":
        np.testing.assert_allclose(y, h @ w2[:, keep], rtol=1e-4, atol=1e-4)


def _softmax_classifier(path: Path) -> Path:
    """features -> Gemm -> Relu -> Gemm -> Softmax: class scores, whose default rules (top-1
    agreement, score change) would refuse a pruning that moves the answers."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits = {"w1": w(16, 32), "b1": w(32), "w2": w(32, 10), "b2": w(10)}
    return build(path, nodes, inits, ["N", 16], ["N", 10])


def test_pruning_has_no_default_bound_on_class_scores_unless_one_is_set(tmp_path: Path) -> None:
    src = _softmax_classifier(tmp_path / "m.onnx")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "free" / "p.onnx"
    proc = run_cli("prune", src, "-o", out, "--ratio", "0.75", "--data", data, "--no-guard")
    assert proc.returncode == 0, proc.stderr  # the function changes on purpose
    assert out.exists()
    bound = tmp_path / "bound" / "p.onnx"
    proc = run_cli(
        "prune", src, "-o", bound, "--ratio", "0.75", "--data", data, "--no-guard",
        "--min-top1", "0.999",
    )  # fmt: skip
    assert proc.returncode == int(ExitCode.VERIFICATION), proc.stderr
    assert "top-1" in error_line(proc) and not bound.exists()
