"""Channel pruning through the ops real exports are made of, one test per rule: each pruned
graph must equal the original run with the pruned channels zeroed (the producer's removed
output channels and the readers' removed input rows), so the rule is proved exact whatever
the fidelity of the pruning itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.errors import StepError
from tests.test_prune import build, prune, w

C = 8  # channels of the producer "A"; half are pruned


@dataclass
class Case:
    """A graph, the initializers the pruned channels index (name -> axis) and its inputs."""

    nodes: list
    inits: dict[str, np.ndarray]
    x_shape: list
    y_shape: list
    feed: tuple[int, ...]
    #: initializer -> the axis its entries index the group's channels on
    zero: dict[str, int] = field(default_factory=dict)
    #: readers that see the channels flattened: initializer -> (axis, spatial, channel-major)
    flat: dict[str, tuple[int, int, bool]] = field(default_factory=dict)
    #: the producer's weight axis of output channels (1 for a ConvTranspose)
    producer_axis: int = 0


def _conv(name: str, src: str, dst: str, weight: str, **kw: object) -> onnx.NodeProto:
    return helper.make_node("Conv", [src, weight], [dst], name=name, **kw)


def pad_spatial() -> Case:
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A", pads=[1, 1, 1, 1]),
            helper.make_node("Pad", ["a", "pads"], ["p"], mode="reflect"),
            _conv("B", "p", "y", "wb"),
        ],
        {"wa": w(C, 3, 3, 3), "ba": w(C), "pads": pads, "wb": w(4, C, 3, 3)},
        ["N", 3, 6, 6],
        ["N", 4, 6, 6],
        (2, 3, 6, 6),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def prelu() -> Case:
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("PRelu", ["a", "slope"], ["p"]),
            _conv("B", "p", "y", "wb"),
        ],
        {"wa": w(C, 3, 1, 1), "ba": w(C), "slope": w(C, 1, 1), "wb": w(4, C, 1, 1)},
        ["N", 3, 5, 5],
        ["N", 4, 5, 5],
        (2, 3, 5, 5),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def instance_norm() -> Case:
    return Case(
        [
            _conv("A", "x", "a", "wa", pads=[1, 1, 1, 1]),
            helper.make_node("InstanceNormalization", ["a", "scale", "bias"], ["n"]),
            helper.make_node("Relu", ["n"], ["r"]),
            _conv("B", "r", "y", "wb"),
        ],
        {"wa": w(C, 3, 3, 3), "scale": w(C), "bias": w(C), "wb": w(4, C, 1, 1)},
        ["N", 3, 5, 5],
        ["N", 4, 5, 5],
        (2, 3, 5, 5),
        {"wa": 0, "wb": 1},
    )


def flatten_channels_last() -> Case:
    """Keras/TF: NCHW features transposed to NHWC and flattened into a dense layer."""
    return Case(
        [
            _conv("A", "x", "a", "wa", pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", ["t", "flat"], ["f"]),
            helper.make_node("MatMul", ["f", "wd"], ["y"], name="D"),
        ],
        {"wa": w(C, 3, 3, 3), "flat": np.array([-1, 16 * C], np.int64), "wd": w(16 * C, 10)},
        ["N", 3, 4, 4],
        ["N", 10],
        (2, 3, 4, 4),
        {"wa": 0},
        {"wd": (0, 16, False)},
    )


def flatten_by_reshape() -> Case:
    """PyTorch's x.view(n, -1) with the size written out: channel-major rows of a Gemm."""
    return Case(
        [
            _conv("A", "x", "a", "wa", pads=[1, 1, 1, 1]),
            helper.make_node("Reshape", ["a", "flat"], ["f"]),
            helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="G", transB=1),
        ],
        {
            "wa": w(C, 3, 3, 3),
            "flat": np.array([0, 16 * C], np.int64),
            "wg": w(10, 16 * C),
            "bg": w(10),
        },
        ["N", 3, 4, 4],
        ["N", 10],
        (2, 3, 4, 4),
        {"wa": 0},
        {"wg": (1, 16, True)},
    )


def l2_normalised() -> Case:
    """x / ||x|| over the channels (an embedding's normalisation): the norm ends the group."""
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("ReduceL2", ["a", "axes"], ["n"], keepdims=1),
            helper.make_node("Div", ["a", "n"], ["u"]),
            _conv("B", "u", "y", "wb"),
        ],
        {"wa": w(C, 3, 1, 1), "ba": w(C), "axes": np.array([1], np.int64), "wb": w(4, C, 1, 1)},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
        (2, 3, 4, 4),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def lp_normalisation() -> Case:
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("LpNormalization", ["a"], ["u"], axis=1, p=2),
            _conv("B", "u", "y", "wb"),
        ],
        {"wa": w(C, 3, 1, 1), "ba": w(C), "wb": w(4, C, 1, 1)},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
        (2, 3, 4, 4),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def resize_scales() -> Case:
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("Resize", ["a", "", "scales"], ["u"], mode="nearest"),
            _conv("B", "u", "y", "wb"),
        ],
        {
            "wa": w(C, 3, 1, 1),
            "ba": w(C),
            "scales": np.array([1, 1, 2, 2], np.float32),
            "wb": w(4, C, 1, 1),
        },
        ["N", 3, 3, 3],
        ["N", 4, 6, 6],
        (2, 3, 3, 3),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def resize_sizes() -> Case:
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("Resize", ["a", "", "", "sizes"], ["u"], mode="linear"),
            _conv("B", "u", "y", "wb"),
        ],
        {
            "wa": w(C, 3, 1, 1),
            "ba": w(C),
            "sizes": np.array([2, C, 5, 5], np.int64),
            "wb": w(4, C, 1, 1),
        },
        [2, 3, 3, 3],
        [2, 4, 5, 5],
        (2, 3, 3, 3),
        {"wa": 0, "ba": 0, "wb": 1},
    )


def conv_transpose() -> Case:
    """A decoder: ConvTranspose produces the channels (weight axis 1) and reads them (axis 0)."""
    return Case(
        [
            helper.make_node("ConvTranspose", ["x", "wa", "ba"], ["a"], name="A", strides=[2, 2]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("ConvTranspose", ["r", "wb"], ["y"], name="B", strides=[2, 2]),
        ],
        {"wa": w(3, C, 2, 2), "ba": w(C), "wb": w(C, 4, 2, 2)},
        ["N", 3, 3, 3],
        ["N", 4, 12, 12],
        (2, 3, 3, 3),
        {"wa": 1, "ba": 0, "wb": 0},
        producer_axis=1,
    )


def conv1d_into_lstm() -> Case:
    """A Conv1d front end whose features, transposed to [T, N, C], feed an LSTM's W."""
    hidden = 6
    return Case(
        [
            _conv("A", "x", "a", "wa", pads=[1, 1]),
            helper.make_node("Transpose", ["a"], ["t"], perm=[2, 0, 1]),
            helper.make_node("LSTM", ["t", "W", "R", "B"], ["y"], hidden_size=hidden, name="L"),
        ],
        {
            "wa": w(C, 3, 3),
            "W": w(1, 4 * hidden, C),
            "R": w(1, 4 * hidden, hidden),
            "B": w(1, 8 * hidden),
        },
        ["N", 3, 10],
        [10, 1, "N", hidden],
        (2, 3, 10),
        {"wa": 0, "W": 2},
    )


def unsqueeze_conv2d_squeeze() -> Case:
    """A Conv1d written as Unsqueeze -> Conv2d (1 x k) -> Squeeze (TF exports)."""
    return Case(
        [
            helper.make_node("Unsqueeze", ["x", "at2"], ["x4"]),
            _conv("A", "x4", "a", "wa", pads=[0, 1, 0, 1]),
            helper.make_node("Squeeze", ["a", "at2"], ["s"]),
            helper.make_node("Relu", ["s"], ["r"]),
            _conv("B", "r", "y", "wb", pads=[1, 1]),
        ],
        {"at2": np.array([2], np.int64), "wa": w(C, 3, 1, 3), "wb": w(4, C, 3)},
        ["N", 3, 9],
        ["N", 4, 9],
        (2, 3, 9),
        {"wa": 0, "wb": 1},
    )


def slice_and_split() -> Case:
    """Rows sliced off and the rest split in two along H: every part keeps the channels."""
    return Case(
        [
            _conv("A", "x", "a", "wa", pads=[1, 1, 1, 1]),
            helper.make_node(
                "Slice", ["a", "s0", "s1", "s_axes"], ["cut"]
            ),  # rows 1.. of H, all channels
            helper.make_node("Split", ["cut", "halves"], ["top", "bottom"], axis=2),
            _conv("B1", "top", "y1", "wb1"),
            _conv("B2", "bottom", "y2", "wb2"),
            helper.make_node("Concat", ["y1", "y2"], ["y"], axis=2),
        ],
        {
            "wa": w(C, 3, 3, 3),
            "s0": np.array([0, 1], np.int64),
            "s1": np.array([2**62, 7], np.int64),
            "s_axes": np.array([1, 2], np.int64),
            "halves": np.array([3, 3], np.int64),
            "wb1": w(4, C, 1, 1),
            "wb2": w(4, C, 1, 1),
        },
        ["N", 3, 7, 5],
        ["N", 4, 6, 5],
        (2, 3, 7, 5),
        {"wa": 0, "wb1": 1, "wb2": 1},
    )


def shape_read_for_the_batch() -> Case:
    """Shape read only for the batch size (as exports scale or reshape by it)."""
    return Case(
        [
            helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
            helper.make_node("Shape", ["a"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"]),
            helper.make_node("Cast", ["n"], ["nf"], to=onnx.TensorProto.FLOAT),
            _conv("B", "a", "b", "wb"),
            helper.make_node("Mul", ["b", "nf"], ["y"]),
        ],
        {"wa": w(C, 3, 1, 1), "ba": w(C), "zero": np.array(0, np.int64), "wb": w(4, C, 1, 1)},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
        (2, 3, 4, 4),
        {"wa": 0, "ba": 0, "wb": 1},
    )


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f
    for f in (
        pad_spatial,
        prelu,
        instance_norm,
        flatten_channels_last,
        flatten_by_reshape,
        l2_normalised,
        lp_normalisation,
        resize_scales,
        resize_sizes,
        conv_transpose,
        conv1d_into_lstm,
        unsqueeze_conv2d_squeeze,
        slice_and_split,
        shape_read_for_the_batch,
    )
}


def _removed(case: Case) -> np.ndarray:
    """The channels an L1 ranking of the producer's weights removes at ratio 0.5."""
    per = np.moveaxis(case.inits["wa"], case.producer_axis, 0).reshape(C, -1)
    keep = np.sort(np.argsort(-np.abs(per).sum(axis=1), kind="stable")[: C // 2])
    return np.setdiff1d(np.arange(C), keep)


def _zeroed(src: Path, case: Case, removed: np.ndarray) -> bytes:
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init).copy()
        if init.name in case.zero:
            index = [slice(None)] * value.ndim
            index[case.zero[init.name]] = removed
            value[tuple(index)] = 0
        elif init.name in case.flat:
            axis, spatial, major = case.flat[init.name]
            cols = np.arange(spatial)
            rows = (removed[:, None] * spatial + cols) if major else (cols[:, None] * C + removed)
            index = [slice(None)] * value.ndim
            index[axis] = rows.ravel()
            value[tuple(index)] = 0
        else:
            continue
        init.CopyFrom(numpy_helper.from_array(value, init.name))
    return model.SerializeToString()


@pytest.mark.parametrize("name", sorted(CASES))
def test_pruning_through_the_op_equals_the_original_with_the_channels_zeroed(
    tmp_path: Path, name: str
) -> None:
    case = CASES[name]()
    src = build(tmp_path / "m.onnx", case.nodes, case.inits, case.x_shape, case.y_shape)
    entry, out = prune(src, tmp_path / "o", ratio=0.5)
    group = next(g for g in entry["report"]["groups"] if "A" in g["producers"])
    assert group["prunable"] and group["channels_after"] == C // 2, group
    onnx.checker.check_model(str(out))
    x = np.random.default_rng(1).standard_normal(case.feed).astype(np.float32)
    reference = ort.InferenceSession(_zeroed(src, case, _removed(case)))
    want = reference.run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert entry["report"]["macs_after"] < entry["report"]["macs_before"]


@pytest.mark.parametrize(
    ("op", "node", "inits", "reason"),
    [
        (
            "Pad",
            helper.make_node("Pad", ["a", "pads"], ["p"]),
            {"pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)},
            "Pad pads the channel axis",
        ),
        (
            "ReduceMean",
            helper.make_node("ReduceMean", ["a", "axes"], ["p"], keepdims=1),
            {"axes": np.array([1], np.int64)},
            "ReduceMean reduces the channel axis",
        ),
        (
            "Slice",
            helper.make_node("Slice", ["a", "s0", "s1", "axes"], ["p"]),
            {
                "s0": np.array([0], np.int64),
                "s1": np.array([4], np.int64),
                "axes": np.array([1], np.int64),
            },
            "Slice cuts the channel axis",
        ),
    ],
)
def test_an_op_that_mixes_or_cuts_the_channels_ends_pruning_with_its_name(
    tmp_path: Path, op: str, node: onnx.NodeProto, inits: dict, reason: str
) -> None:
    node.name = f"the_{op.lower()}"
    out_channels = {"Pad": C + 2, "ReduceMean": 1, "Slice": 4}[op]
    src = build(
        tmp_path / "m.onnx",
        [
            _conv("A", "x", "a", "wa"),
            node,
            _conv("B", "p", "y", "wb"),
        ],
        {"wa": w(C, 3, 1, 1), **inits, "wb": w(4, out_channels, 1, 1)},
        ["N", 3, 4, 4],
        ["N", 4, 4, 4],
    )
    with pytest.raises(StepError, match="removed nothing") as info:
        prune(src, tmp_path / "o", ratio=0.5)
    assert f"{node.name}: {reason}" in str(info.value)


@pytest.mark.parametrize(
    ("op", "nodes", "inits", "y_shape", "reason"),
    [
        (
            "Pad",
            [
                helper.make_node("Identity", ["axes_c"], ["axes_r"]),
                helper.make_node("Pad", ["a", "pads", "", "axes_r"], ["p"], name="the_pad"),
            ],
            {"pads": np.array([1, 1, 1, 1], np.int64), "axes_c": np.array([2, 3], np.int64)},
            ["N", 4, 6, 6],
            "the_pad: Pad with axes computed at run time",
        ),
        (
            "Slice",
            [
                helper.make_node("Identity", ["steps_c"], ["steps_r"]),
                helper.make_node(
                    "Slice", ["a", "s0", "s1", "axes", "steps_r"], ["p"], name="the_slice"
                ),
            ],
            {
                "s0": np.array([0], np.int64),
                "s1": np.array([2], np.int64),
                "axes": np.array([2], np.int64),
                "steps_c": np.array([1], np.int64),
            },
            ["N", 4, 2, 4],
            "the_slice: Slice with axes or steps computed at run time",
        ),
    ],
)
def test_an_operand_computed_at_run_time_is_not_guessed(
    tmp_path: Path, op: str, nodes: list, inits: dict, y_shape: list, reason: str
) -> None:
    # a Pad's axes or a Slice's steps that only the runtime knows: the group stays whole
    src = build(
        tmp_path / "m.onnx",
        [_conv("A", "x", "a", "wa"), *nodes, _conv("B", "p", "y", "wb")],
        {"wa": w(C, 3, 1, 1), **inits, "wb": w(4, C, 1, 1)},
        ["N", 3, 4, 4],
        y_shape,
    )
    with pytest.raises(StepError, match="removed nothing") as info:
        prune(src, tmp_path / "o", ratio=0.5)
    assert reason in str(info.value)


def test_compensation_folds_removed_features_into_an_lstm_input_bias(tmp_path: Path) -> None:
    # the removed channels' mean activations, through W, go into the first half of B
    case = conv1d_into_lstm()
    case.inits["wa"] = np.abs(case.inits["wa"])  # positive features: means far from zero
    src = build(tmp_path / "m.onnx", case.nodes, case.inits, case.x_shape, case.y_shape)
    entry, out = prune(src, tmp_path / "o", ratio=0.5, compensate=True)
    group = next(g for g in entry["report"]["groups"] if "A" in g["producers"])
    assert group["compensated"] == ["L"], group
    with np.load(tmp_path / "o" / "inputs.npz") as data:
        x = data["x"]
    model = onnx.load(str(src))
    model.graph.output.append(helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None))
    (t,) = ort.InferenceSession(model.SerializeToString()).run(["t"], {"x": x})
    mean = t.reshape(-1, C).mean(axis=0)
    removed = _removed(case)
    W, B = case.inits["W"], case.inits["B"]
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    gates = W.shape[1]
    want = B[:, :gates] + W[:, :, removed] @ mean[removed]
    np.testing.assert_allclose(got["B"][:, :gates], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["B"][:, gates:], B[:, gates:])
    assert got["W"].shape == (1, gates, C // 2)
