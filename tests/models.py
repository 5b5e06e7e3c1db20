"""Tiny ONNX models built in code for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 18)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def add_relu(path: Path, batch: str | int = "batch") -> Path:
    """y = Relu(x + c) with x of shape [batch, 4] and a constant folded away by simplify."""
    c1 = numpy_helper.from_array(np.full((4,), 0.5, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full((4,), 0.25, np.float32), "c2")
    nodes = [
        helper.make_node("Add", ["c1", "c2"], ["c"]),  # constant subgraph: folded by onnxsim
        helper.make_node("Add", ["x", "c"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "add_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        [c1, c2],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def layernorm_decomposed(path: Path, hidden: int = 32) -> Path:
    """LayerNorm written out in primitive ops, which onnxruntime.transformers fuses.

    The fused kernel computes in another order, so its outputs differ from the parent's in
    the last bits: a real rewrite whose error a zero tolerance must reject.
    """
    rng = np.random.default_rng(3)
    gamma = numpy_helper.from_array(rng.uniform(0.5, 1.5, hidden).astype(np.float32), "gamma")
    beta = numpy_helper.from_array(rng.uniform(-0.1, 0.1, hidden).astype(np.float32), "beta")
    eps = numpy_helper.from_array(np.array(1e-5, np.float32), "eps")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "axes"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [gamma, beta, eps, two, axes],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def compute_model(path: Path) -> Path:
    """Conv -> Flatten -> Gemm -> MatMul with known MACs, batch symbolic."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.standard_normal((16, 8 * 6 * 6)).astype(np.float32), "g")
    m = numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "m")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 0, 0]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["h"], transB=1),
        helper.make_node("MatMul", ["h", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "compute",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [w, g, m],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def compute_model_macs(batch: int) -> int:
    """Hand-computed MACs of :func:`compute_model`."""
    conv = batch * 8 * 6 * 6 * (3 * 3 * 3)
    gemm = batch * (8 * 6 * 6) * 16
    matmul = batch * 16 * 5
    return conv + gemm + matmul


def matmul_chain(path: Path, layers: int, width: int, *, external: bool) -> Path:
    """x @ W1 @ W2 ... with orthogonal-scaled weights (values stay bounded)."""
    rng = np.random.default_rng(1)
    inits, nodes = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        _save(model, path)
    return path


def reshape_fails_at_runtime(path: Path) -> Path:
    """Valid for the checker, but Reshape to [3, -1] fails on a [1, 4] input at run time."""
    shape = numpy_helper.from_array(np.array([3, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, None])],
        [shape],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def constant_weights(path: Path, width: int = 16) -> Path:
    """x @ W with W held in a Constant node (as Paddle and spox exports do)."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["W"], value=w),
        helper.make_node("MatMul", ["x", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def fp16_overflow(path: Path) -> Path:
    """y = (x * 1e6) * 1e-6 + x @ W: the intermediate and the constant overflow float16."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(np.array(1e6, np.float32), "big"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "small"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "big"], ["scaled"], name="scale_up"),
        helper.make_node("Mul", ["scaled", "small"], ["back"], name="scale_down"),
        helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["back", "mm"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def outlier_chain(path: Path, width: int = 64) -> Path:
    """Three MatMuls; the middle weight has one huge outlier, which wrecks per-tensor int8.

    The outlier feeds a column that the last layer ignores (its row of weights is zero), so
    in float it does not matter, but it sets the middle layer's int8 scale.
    """
    rng = np.random.default_rng(5)
    inits, nodes, prev = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        if i == 1:
            w[0, 0] = 200.0
        if i == 2:
            w[0, :] = 0.0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"mm{i}"))
        prev = out
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def shape_inference_stopper(path: Path, width: int = 64) -> Path:
    """MatMul -> Expand(shape = Abs(Shape)) -> MatMul: runs, but symbolic inference gives up.

    ONNX Runtime's symbolic shape inference cannot follow a shape through Abs, stops with
    "Incomplete symbolic shape inference" and, on its way out, saves
    ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` file into the current folder.
    """
    rng = np.random.default_rng(4)
    w1, w2 = (
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name
        )
        for name in ("w1", "w2")
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m"]),
        helper.make_node("Shape", ["m"], ["s"]),
        helper.make_node("Abs", ["s"], ["s_abs"]),
        helper.make_node("Expand", ["m", "s_abs"], ["e"]),
        helper.make_node("MatMul", ["e", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_inference_stopper",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [w1, w2],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def if_reads_quantized_value(path: Path, width: int = 32) -> Path:
    """a = x @ W0; y = If(sum(x) > 0, a @ W1, Relu(a @ W2)) @ W3.

    The If bodies read ``a``, the output of a MatMul that dynamic quantization rewrites into
    several nodes; ONNX Runtime's quantizer then places the If before the node that now
    makes ``a`` (as seen on real VAD models), an invalid graph.
    """
    rng = np.random.default_rng(5)

    def weight(name: str) -> onnx.TensorProto:
        values = rng.standard_normal((width, width)) / np.sqrt(width)
        return numpy_helper.from_array(values.astype(np.float32), name)

    def body(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)]
        )

    then_graph = body("then", [helper.make_node("MatMul", ["a", "W1"], ["t"])], "t")
    else_graph = body(
        "else",
        [helper.make_node("MatMul", ["a", "W2"], ["e"]), helper.make_node("Relu", ["e"], ["r"])],
        "r",
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a"], name="mm0"),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("MatMul", ["h", "W3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "if_reads_quantized_value",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [weight(n) for n in ("W0", "W1", "W2", "W3")]
        + [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def conv_net(
    path: Path,
    *,
    opset: int = 18,
    channels: int = 16,
    size: int = 32,
    explicit_pads: bool = False,
) -> Path:
    """Conv -> Relu -> Conv -> Relu -> GlobalAveragePool, batch symbolic, seeded weights.

    ``explicit_pads``: each Conv reads a separate ``Pad`` node (as some exporters write it),
    which onnxsim folds into ``Conv.pads``; ``opset`` 11-12 is what Paddle and older
    exporters write.
    """
    rng = np.random.default_rng(6)
    inits, nodes = [], []
    prev, cin = "x", 3
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    if explicit_pads:
        inits.append(pads)
    for i in range(2):
        scale = 1.0 / np.sqrt(cin * 9)
        w = (rng.standard_normal((channels, cin, 3, 3)) * scale).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(
                (rng.standard_normal(channels) * 0.1).astype(np.float32), f"b{i}"
            ),
        ]
        if explicit_pads:
            nodes.append(helper.make_node("Pad", [prev, "pads"], [f"p{i}"], name=f"pad{i}"))
            nodes.append(
                helper.make_node("Conv", [f"p{i}", f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}")
            )
        else:
            nodes.append(
                helper.make_node(
                    "Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"
                )
            )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"]))
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, 1, 1])],
        inits,
    )
    ir = 6 if opset < 13 else 8
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    return _save(model, path)


def transformer_encoder(
    path: Path,
    *,
    layers: int = 2,
    hidden: int = 16,
    heads: int = 2,
    ffn: int = 64,
    gelu: str = "erf",
) -> Path:
    """Post-LayerNorm encoder layers on x [batch, sequence, hidden] as exporters write them.

    Each layer: Q/K/V projections (MatMul + bias Add) split into heads by Reshape/Transpose,
    softmax attention, the out projection, a residual Add and LayerNormalization, then the
    feed-forward block ``l{i}.fc1`` MatMul(W1 [hidden, ffn]) -> Add(b1) -> GELU ->
    ``l{i}.fc2`` MatMul(W2 [ffn, hidden]) -> Add(b2) -> residual Add -> LayerNormalization.
    ``gelu``: ``erf`` (Div/Erf/Add/Mul/Mul, as torch exports it), ``tanh`` (the Pow/Tanh
    approximation), ``gelu`` (the opset-20 Gelu node) or ``bias_gelu`` (onnxruntime's fused
    com.microsoft BiasGelu, which takes b1). The scalar constants are shared by the layers.
    The stream enters through Expand(x, Max(Shape(x), 1)), an identity whose dims shape
    inference cannot tell (as an attention mask's Expand/Where leaves a Hugging Face export's
    batch dim unknown), so the analysis must not need full shapes.
    """
    rng = np.random.default_rng(11)
    head_dim = hidden // heads
    inits = {
        "ones3": np.ones(3, np.int64),
        "split_heads": np.array([0, 0, heads, head_dim], np.int64),
        "merge_heads": np.array([0, 0, hidden], np.int64),
        "scale": np.array(1.0 / np.sqrt(head_dim), np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "three": np.array(3.0, np.float32),
        "cubic": np.array(0.044715, np.float32),
        "sqrt_2_pi": np.array(np.sqrt(2.0 / np.pi), np.float32),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Max", ["x_shape", "ones3"], ["stream_shape"]),
        helper.make_node("Expand", ["x", "stream_shape"], ["stream"]),
    ]

    def linear(name: str, src: str, rows: int, cols: int, out: str, bias_first: bool) -> None:
        inits[f"{name}.w"] = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        inits[f"{name}.b"] = (rng.standard_normal(cols) * 0.1).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [src, f"{name}.w"], [f"{name}.mm"], name=name))
        terms = [f"{name}.b", f"{name}.mm"] if bias_first else [f"{name}.mm", f"{name}.b"]
        nodes.append(helper.make_node("Add", terms, [out], name=f"{name}.bias"))

    def layer_norm(name: str, src: str, out: str) -> None:
        inits[f"{name}.g"] = (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)
        inits[f"{name}.beta"] = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
        nodes.append(
            helper.make_node(
                "LayerNormalization", [src, f"{name}.g", f"{name}.beta"], [out], axis=-1, name=name
            )
        )

    def op(kind: str, inputs: list[str], out: str, **attrs: object) -> None:
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))

    prev = "stream"
    for i in range(layers):
        p = f"l{i}"
        for part in ("q", "k", "v"):
            linear(f"{p}.{part}", prev, hidden, hidden, f"{p}.{part}_out", bias_first=True)
            op("Reshape", [f"{p}.{part}_out", "split_heads"], f"{p}.{part}_heads")
        op("Transpose", [f"{p}.q_heads"], f"{p}.qt", perm=[0, 2, 1, 3])
        op("Transpose", [f"{p}.k_heads"], f"{p}.kt", perm=[0, 2, 3, 1])
        op("Transpose", [f"{p}.v_heads"], f"{p}.vt", perm=[0, 2, 1, 3])
        op("MatMul", [f"{p}.qt", f"{p}.kt"], f"{p}.scores")
        op("Mul", [f"{p}.scores", "scale"], f"{p}.scaled")
        op("Softmax", [f"{p}.scaled"], f"{p}.probs", axis=-1)
        op("MatMul", [f"{p}.probs", f"{p}.vt"], f"{p}.ctx")
        op("Transpose", [f"{p}.ctx"], f"{p}.ctx_t", perm=[0, 2, 1, 3])
        op("Reshape", [f"{p}.ctx_t", "merge_heads"], f"{p}.ctx_m")
        linear(f"{p}.o", f"{p}.ctx_m", hidden, hidden, f"{p}.attn", bias_first=False)
        op("Add", [prev, f"{p}.attn"], f"{p}.res1")
        layer_norm(f"{p}.ln1", f"{p}.res1", f"{p}.h")
        # the feed-forward block
        h, fc1 = f"{p}.h", f"{p}.fc1"
        inits[f"{fc1}.w"] = (rng.standard_normal((hidden, ffn)) / np.sqrt(hidden)).astype(
            np.float32
        )
        inits[f"{fc1}.b"] = (rng.standard_normal(ffn) * 0.1).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [h, f"{fc1}.w"], [f"{fc1}.mm"], name=fc1))
        act = f"{p}.act"
        if gelu == "bias_gelu":
            nodes.append(
                helper.make_node(
                    "BiasGelu",
                    [f"{fc1}.mm", f"{fc1}.b"],
                    [act],
                    domain="com.microsoft",
                    name=act,
                )
            )
        else:
            u = f"{fc1}.out"
            op("Add", [f"{fc1}.b", f"{fc1}.mm"], u)  # bias first, as torch writes it
            if gelu == "gelu":
                op("Gelu", [u], act)
            elif gelu == "erf":
                op("Div", [u, "sqrt2"], f"{p}.g_div")
                op("Erf", [f"{p}.g_div"], f"{p}.g_erf")
                op("Add", [f"{p}.g_erf", "one"], f"{p}.g_add")
                op("Mul", [u, f"{p}.g_add"], f"{p}.g_mul")
                op("Mul", [f"{p}.g_mul", "half"], act)
            elif gelu == "tanh":
                op("Pow", [u, "three"], f"{p}.g_pow")
                op("Mul", [f"{p}.g_pow", "cubic"], f"{p}.g_cubic")
                op("Add", [u, f"{p}.g_cubic"], f"{p}.g_inner")
                op("Mul", [f"{p}.g_inner", "sqrt_2_pi"], f"{p}.g_scaled")
                op("Tanh", [f"{p}.g_scaled"], f"{p}.g_tanh")
                op("Add", [f"{p}.g_tanh", "one"], f"{p}.g_add")
                op("Mul", [u, f"{p}.g_add"], f"{p}.g_mul")
                op("Mul", [f"{p}.g_mul", "half"], act)
            else:
                raise ValueError(f"unknown gelu {gelu!r}")
        linear(f"{p}.fc2", act, ffn, hidden, f"{p}.ffn", bias_first=False)
        op("Add", [h, f"{p}.ffn"], f"{p}.res2")
        out = "y" if i == layers - 1 else f"{p}.y"
        layer_norm(f"{p}.ln2", f"{p}.res2", out)
        prev = out
    shape = ["batch", "sequence", hidden]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        nodes,
        "transformer_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items() if k in used],
    )
    opsets = [helper.make_opsetid("", 20 if gelu == "gelu" else 18)]
    if gelu == "bias_gelu":
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    return _save(helper.make_model(graph, opset_imports=opsets), path)


def batched_weights(path: Path, heads: int = 4, width: int = 64) -> Path:
    """x [heads, batch, width] @ W [heads, width, width]: one weight per head, as some
    exporters write per-head projections. Dynamic per-channel int8 writes a
    DynamicQuantizeMatMul that ONNX Runtime 1.32 builds and loads but refuses to run ("b zero
    point is not valid"): a candidate that fails at run time."""
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((heads, width, width)) / np.sqrt(width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="per_head")],
        "batched_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [heads, "batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [heads, "batch", width])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def recurrent_in_if(path: Path, channels: int = 8, hidden: int = 32) -> Path:
    """A spox-style recurrent VAD: y = If(sum(x) > 0, body_a, body_b), each body a Conv1d
    front end and an LSTM inside a nested If, as silero-vad's export is made.

    Every weight is a Constant node inside a body; the LSTM's W and R are Unsqueeze(Constant)
    in the outer body, read by the nested body: where ONNX Runtime's quantizers do not look.
    """
    rng = np.random.default_rng(9)

    def const(name: str, values: np.ndarray) -> onnx.NodeProto:
        tensor = numpy_helper.from_array(values.astype(values.dtype), name)
        return helper.make_node("Constant", [], [name], value=tensor)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def body(tag: str) -> onnx.GraphProto:
        lstm = helper.make_graph(
            [helper.make_node("LSTM", [f"{tag}_seq", f"{tag}_W", f"{tag}_R"], ["", f"{tag}_h"],
                              hidden_size=hidden, name=f"{tag}_lstm")],
            f"{tag}_lstm_body",
            [],
            [helper.make_tensor_value_info(f"{tag}_h", TensorProto.FLOAT, None)],
        )  # fmt: skip
        idle = helper.make_graph(
            [helper.make_node("Identity", [f"{tag}_h0"], [f"{tag}_idle"])],
            f"{tag}_idle_body",
            [],
            [helper.make_tensor_value_info(f"{tag}_idle", TensorProto.FLOAT, None)],
        )
        nodes = [
            const(f"{tag}_cw", weights(2 * channels, channels, 3)),
            const(f"{tag}_cb", weights(2 * channels)),
            helper.make_node("Conv", ["x", f"{tag}_cw", f"{tag}_cb"], [f"{tag}_c"], pads=[1, 1],
                             name=f"{tag}_conv"),
            helper.make_node("Relu", [f"{tag}_c"], [f"{tag}_r"]),
            helper.make_node("Transpose", [f"{tag}_r"], [f"{tag}_seq"], perm=[2, 0, 1]),
            const(f"{tag}_axes", np.array([0], np.int64)),
            const(f"{tag}_w2", weights(4 * hidden, 2 * channels)),
            helper.make_node("Unsqueeze", [f"{tag}_w2", f"{tag}_axes"], [f"{tag}_W"]),
            const(f"{tag}_r2", weights(4 * hidden, hidden)),
            helper.make_node("Unsqueeze", [f"{tag}_r2", f"{tag}_axes"], [f"{tag}_R"]),
            const(f"{tag}_h0", np.zeros((1, 1, hidden), np.float32)),
            helper.make_node("If", ["cond"], [f"{tag}_out"], then_branch=lstm, else_branch=idle),
        ]  # fmt: skip
        return helper.make_graph(
            nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, None)]
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=body("a"), else_branch=body("b")),
        ],
        "recurrent_in_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, "time"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, hidden])],
        [numpy_helper.from_array(np.array(-1e9, np.float32), "zero")],  # the LSTM branch always
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
