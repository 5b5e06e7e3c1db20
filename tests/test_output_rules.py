"""Each output judged by what it is: the worst slice of a mixed-range output, class scores
by agreement, decisions by flips; and static int8 keeps a mixed-range Concat in float."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.config import Target
from onnxopt.verify import InputSet, Tol, verify_against_parent
from tests.conftest import Untouched

OPSET = [helper.make_opsetid("", 17)]
ANCHORS, FEATURES, CLASSES = 100, 16, 18


def _save(nodes: list, inits: dict, inputs: list, outputs: list, path: Path) -> Path:
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()]
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector(
    path: Path, qdq: str = "none", score_op: str = "Sigmoid", score_bias: float = 0.0
) -> Path:
    """A detection head: boxes (Conv * 100, range about +-300) and class scores (Sigmoid,
    0..1) concatenated on axis 1, as YOLO exports write [N, 4 + classes, anchors].

    ``qdq``: "none"; "joined": one int8 scale after the Concat (what static QDQ gives a
    Concat); "parts": each part its own scale before the Concat (the float-kept join)."""
    rng = np.random.default_rng(5)
    inits = {
        "wb": (rng.standard_normal((4, FEATURES, 1)) / 4).astype(np.float32),
        "ws": (rng.standard_normal((CLASSES, FEATURES, 1)) / 2).astype(np.float32),
        "hundred": np.array(100.0, np.float32),
        "score_bias": np.array(score_bias, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["b0"], name="box_conv"),
        helper.make_node("Mul", ["b0", "hundred"], ["boxes"], name="box_scale"),
        helper.make_node("Conv", ["x", "ws"], ["s00"], name="score_conv"),
        helper.make_node("Add", ["s00", "score_bias"], ["s0"], name="score_bias_add"),
        helper.make_node(score_op, ["s0"], ["scores"], name="score_sigmoid"),
    ]

    def qdq_pair(src: str, dst: str, scale: float, zero: int) -> None:
        inits[f"{dst}_s"] = np.array(scale, np.float32)
        inits[f"{dst}_z"] = np.array(zero, np.uint8)
        nodes.append(
            helper.make_node("QuantizeLinear", [src, f"{dst}_s", f"{dst}_z"], [f"{dst}_q"])
        )
        nodes.append(
            helper.make_node("DequantizeLinear", [f"{dst}_q", f"{dst}_s", f"{dst}_z"], [dst])
        )

    parts = ["boxes", "scores"]
    if qdq == "parts":
        qdq_pair("boxes", "boxes_dq", 640 / 255, 128)
        qdq_pair("scores", "scores_dq", 1 / 255, 0)
        parts = ["boxes_dq", "scores_dq"]
    joined = "y" if qdq != "joined" else "y_float"
    nodes.append(helper.make_node("Concat", parts, [joined], name="head_concat", axis=1))
    if qdq == "joined":
        qdq_pair("y_float", "y", 640 / 255, 128)
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES, ANCHORS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4 + CLASSES, ANCHORS])],
        path,
    )


def _held_out(feeds: list[dict[str, np.ndarray]]) -> InputSet:
    return InputSet(main=feeds[0], dims={}, samples=feeds, synthetic=False)


def _features(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, FEATURES, ANCHORS)).astype(np.float32)} for _ in range(n)]


INT8 = Tol(atol=math.inf, rtol=math.inf, min_cosine=0.99)


@pytest.mark.parametrize("score_op", ["HardSigmoid", "Sigmoid"])
def test_a_small_range_part_destroyed_under_a_high_cosine_is_rejected(
    tmp_path: Path, score_op: str
) -> None:
    # a small-range part of values is judged by its worst slice; Sigmoid scores in the
    # Concat are decisions, judged by their flips (not by relative errors near 0)
    parent = detector(tmp_path / "float.onnx", score_op=score_op)
    broken = detector(tmp_path / "joined.onnx", qdq="joined", score_op=score_op)
    kept = detector(tmp_path / "parts.onnx", qdq="parts", score_op=score_op)
    inputs = _held_out(_features(16))
    bad = verify_against_parent(parent, broken, INT8, inputs, Target())
    row = bad.main["outputs"][0]
    assert row["cosine"] >= 0.99  # what a whole-tensor cosine sees: nothing wrong
    assert not bad.passed
    if score_op == "HardSigmoid":  # 0..1 but no decisions: values
        assert row["worst_slice"]["axis"] == 1 and row["worst_slice"]["index"] >= 4, row
        assert row["problem"].startswith(f"slice [:, {row['worst_slice']['index']}]: relative")
        assert bad.first_failure().startswith("output 'y': slice [:, ")
    else:
        assert "decisions at 0.5 in [:, 4:22]" in bad.tolerance["rules"]["y"]
        assert row["decisions"] == 16 * CLASSES * ANCHORS and row["decision_flips"] > 0, row
        assert "decisions at 0.5 flipped" in bad.first_failure()
        worst = row["worst_slice"]  # the boxes' slices still judged by their error
        assert not (worst["axis"] == 1 and worst["index"] >= 4), worst
    good = verify_against_parent(parent, kept, INT8, inputs, Target())
    assert good.passed, good.first_failure()
    assert good.main["outputs"][0]["worst_slice"]["relative_error"] < INT8.slice_bound


def test_static_int8_keeps_a_mixed_range_concat_in_float(tmp_path: Path) -> None:
    import onnxopt

    src = detector(tmp_path / "det.onnx", score_bias=-8.0)  # scores near 0, as trained
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(1)
    np.savez(data, x=rng.standard_normal((64, FEATURES, ANCHORS)).astype(np.float32))
    with Untouched(src, data):
        manifest = onnxopt.quantize(
            src, tmp_path / "q.onnx", "static", data=data, measure_speed=False
        )
    entry = manifest["steps"][0]
    assert "head_concat" in entry["report"]["kept_float"], entry["report"]
    assert entry["verification"]["passed"]
    row = entry["verification"]["main"]["outputs"][0]
    assert row["worst_slice"]["relative_error"] < 0.28, row


def classifier(path: Path, w: np.ndarray, head: str = "Softmax") -> Path:
    inits = {"w": w.astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"])]
    out = "logits"
    if head:
        axis = {"axis": -1} if head != "Sigmoid" else {}
        nodes.append(helper.make_node(head, ["logits"], ["p"], **axis))
        out = "p"
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", w.shape[1]])],
        path,
    )


def _rows(n: int, seed: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(n)]


def test_class_scores_are_judged_by_top1_and_the_top_score_not_the_cosine(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 5)) * 1.5
    parent = classifier(tmp_path / "p.onnx", w)
    inputs = _held_out(_rows(64))
    # every label kept, probabilities a little softer: the cosine refuses, the rule accepts
    softer = classifier(tmp_path / "soft.onnx", w * 0.7)
    result = verify_against_parent(parent, softer, INT8, inputs, Target())
    row = result.main["outputs"][0]
    assert row["cosine"] < 0.99 and row["top1_agreement"] == 1.0, row
    assert row["judged_by"].startswith("top-1 agreement")
    assert result.passed, result.first_failure()
    assert "class scores" in result.tolerance["rules"]["p"]
    # labels swapped for two classes: refused by the agreement
    swapped = w.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    wrong = verify_against_parent(
        parent, classifier(tmp_path / "w.onnx", swapped), INT8, inputs, Target()
    )
    assert not wrong.passed and "top-1 agreement" in wrong.first_failure()
    # logits without a Softmax are values: the cosine judges them
    plain = verify_against_parent(
        classifier(tmp_path / "l.onnx", w, head=""),
        classifier(tmp_path / "l2.onnx", w * 0.9, head=""),
        INT8,
        inputs,
        Target(),
    )
    assert plain.passed  # a uniform scale keeps the cosine at 1
    assert "rules" not in plain.tolerance


@pytest.mark.parametrize("shift", [0.0, 0.02])
def test_sigmoid_decisions_that_flip_are_refused_under_a_perfect_cosine(
    tmp_path: Path, shift: float
) -> None:
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((8, 40)) * 0.05).astype(np.float32)  # scores close to 0.5
    parent = classifier(tmp_path / "p.onnx", w, head="Sigmoid")
    bias = np.full(40, shift, np.float32)
    inits = {"w": w, "b": bias}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["p"]),
    ]
    child = _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 40])],
        tmp_path / "c.onnx",
    )
    result = verify_against_parent(parent, child, INT8, _held_out(_rows(32)), Target())
    row = result.main["outputs"][0]
    assert row["cosine"] > 0.999, row
    if shift == 0.0:
        assert result.passed and row["decision_flips"] == 0
    else:
        assert not result.passed and row["decision_flips"] > 0, row
        assert "decisions at 0.5 flipped" in result.first_failure()


def written_out_softmax(path: Path, w: np.ndarray) -> Path:
    """Softmax as tf2onnx and JAX exports write it: Exp over a ReduceSum of itself, the sum
    reshaped and expanded back over the classes."""
    classes = w.shape[1]
    inits = {
        "w": w.astype(np.float32),
        "axes": np.array([1], np.int64),
        "column": np.array([-1, 1], np.int64),
        "wide": np.array([1, classes], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Exp", ["logits"], ["e"]),
        helper.make_node("ReduceSum", ["e", "axes"], ["total"], keepdims=0),
        helper.make_node("Reshape", ["total", "column"], ["total_column"]),
        helper.make_node("Expand", ["total_column", "wide"], ["denominator"]),
        helper.make_node("Div", ["e", "denominator"], ["p"]),
    ]
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])],
        path,
    )


def test_a_softmax_written_out_by_other_exporters_is_judged_as_class_scores(
    tmp_path: Path,
) -> None:
    from onnxopt.verify.kinds import kinds_of

    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 5)) * 1.5
    parent = written_out_softmax(tmp_path / "p.onnx", w)
    kind = kinds_of(onnx.load(str(parent)))["p"]
    assert (kind.kind, kind.axis % 2) == ("classes", 1), kind
    result = verify_against_parent(
        parent,
        written_out_softmax(tmp_path / "soft.onnx", w * 0.7),
        INT8,
        _held_out(_rows(64)),
        Target(),
    )
    row = result.main["outputs"][0]
    assert row["cosine"] < 0.99 and row["judged_by"].startswith("top-1 agreement"), row
    assert result.passed, result.first_failure()
    swapped = w.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]
    wrong = written_out_softmax(tmp_path / "w.onnx", swapped)
    assert not verify_against_parent(parent, wrong, INT8, _held_out(_rows(64)), Target()).passed


def sequence_reader(path: Path, w: np.ndarray, flip: np.ndarray | None = None) -> Path:
    """A CTC-style reader: [N, T, 8] features -> Softmax over [N, T, classes]; ``flip`` adds
    a large logit to class 1 at the positions it marks (T entries, broadcast over N)."""
    inits = {"w": w.astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"])]
    head = "logits"
    if flip is not None:
        bump = np.zeros((flip.size, w.shape[1]), np.float32)
        bump[flip, 1] = 50.0
        inits["bump"] = bump
        nodes.append(helper.make_node("Add", ["logits", "bump"], ["bumped"]))
        head = "bumped"
    nodes.append(helper.make_node("Softmax", [head], ["p"], axis=-1))
    return _save(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 40, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 40, w.shape[1]])],
        path,
    )


def test_a_label_sequence_is_judged_whole_not_position_by_position(tmp_path: Path) -> None:
    # one changed position in 40 keeps 97.5% of positions but misreads every line
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 12)) * 1.5
    parent = sequence_reader(tmp_path / "p.onnx", w)
    inputs = _held_out(
        [{"x": rng.standard_normal((1, 40, 8)).astype(np.float32)} for _ in range(32)]
    )
    lenient = Tol(atol=math.inf, rtol=math.inf, min_cosine=0.0, min_top1=0.97)
    one = np.zeros(40, bool)
    one[17] = True
    changed = sequence_reader(tmp_path / "c.onnx", w, flip=one)
    result = verify_against_parent(parent, changed, lenient, inputs, Target())
    row = result.main["outputs"][0]
    assert row["top1_agreement"] > 0.97, row  # what a per-position rule sees: nothing wrong
    assert not result.passed and "label sequences changed" in result.first_failure()
    assert row["sequences_kept"] < 0.97
    same = verify_against_parent(
        parent, sequence_reader(tmp_path / "s.onnx", w * 0.8), lenient, inputs, Target()
    )
    assert same.passed, same.first_failure()
    assert same.main["outputs"][0]["sequences_kept"] == 1.0


def test_scores_that_never_fire_are_not_refused_for_their_relative_error(tmp_path: Path) -> None:
    # scores near 0.02 (no class fires): moved to 0.04, a relative error of about 1 on their
    # slices (refused as values), and no decision changes
    parent = detector(tmp_path / "p.onnx", score_bias=-4.0)
    shifted = detector(tmp_path / "c.onnx", score_bias=-3.3)
    quiet = _held_out([{"x": f["x"] * 0.25} for f in _features(16)])
    result = verify_against_parent(parent, shifted, INT8, quiet, Target())
    row = result.main["outputs"][0]
    assert row["decision_flips"] == 0, row
    assert result.passed, result.first_failure()
    worst = row["worst_slice"]  # the boxes' slices, judged by their error
    assert not (worst["axis"] == 1 and worst["index"] >= 4), worst
    as_values = detector(tmp_path / "vp.onnx", score_op="HardSigmoid", score_bias=-4.0)
    moved = detector(tmp_path / "vc.onnx", score_op="HardSigmoid", score_bias=-3.3)
    plain = verify_against_parent(as_values, moved, INT8, quiet, Target())
    assert not plain.passed and "slice [:, " in plain.first_failure()


@pytest.mark.parametrize(
    ("kept", "total", "passes"),
    [
        (64, 64, True),  # 0.985 expected on unseen inputs
        (63, 64, False),  # 0.984 seen, 0.970 expected: a 0.98 bound is not shown
        (244, 248, True),  # 0.984 seen, 0.980 expected
        (243, 248, False),
        (10, 10, True),  # too few to show 0.98 at all: every one kept passes
        (9, 10, False),
        (0, 0, False),  # nothing compared
    ],
)
def test_a_kept_share_is_judged_as_expected_on_unseen_inputs(
    kept: int, total: int, passes: bool
) -> None:
    from onnxopt.verify.rules import judge_counts

    tol = Tol(atol=math.inf, rtol=math.inf, min_cosine=0.99)
    row: dict = {"name": "p", "passed": True}
    judge_counts(row, tol, {"classes": [kept, total, 0.0]})  # type: ignore[arg-type]
    assert row["passed"] is passes, row
    if not passes and total:
        assert "expected on unseen inputs" in row["problem"], row
    # whole label sequences follow the same rule
    seq: dict = {"name": "s", "passed": True}
    judge_counts(seq, tol, {"classes": [1, 1, 0.0], "sequences": [kept, total]})  # type: ignore[arg-type]
    assert seq["passed"] is passes, seq
