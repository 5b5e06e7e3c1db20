"""simplify backends on exported sample models: dynamic dims kept, reports, labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ExitCode
from onnxopt.graph import io_table, op_histogram
from tests import models
from tests.conftest import SAMPLES, error_line, run_cli


@pytest.fixture(scope="module")
def resnet_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A narrow ResNet sample exported, simplified by onnxsim, then ORT 'all'."""
    out = tmp_path_factory.mktemp("resnet")
    cfg = parse_config(
        {
            "model": {"factory": f"{SAMPLES / 'resnet.py'}:build", "factory_args": {"width": 8}},
            "inputs": [{"name": "image", "shape": ["batch", 3, 64, 64], "range": [0, 1]}],
            "dims": {"batch": 1},
            "output_dir": str(out),
            "steps": [
                {"type": "export", "exporter": "torchscript"},
                # what the rewrites do, not their speed (the guard is tested in test_bench)
                {"type": "simplify", "guard": None},
                {"type": "simplify", "backend": "ort", "ort": {"level": "all"}, "guard": None},
            ],
        }
    )
    return run_pipeline(cfg, out)


def test_onnxsim_keeps_dynamic_batch(resnet_pipeline: dict) -> None:
    export, simple, _ = resnet_pipeline["steps"]
    out = Path(resnet_pipeline["output_dir"])
    path = out / simple["output"]["path"]
    assert io_table(onnx.load(str(path)))["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    x = np.random.default_rng(0).uniform(size=(4, 3, 64, 64)).astype(np.float32)
    parent = ort.InferenceSession(str(out / export["output"]["path"])).run(None, {"image": x})
    child = ort.InferenceSession(str(path)).run(None, {"image": x})
    np.testing.assert_allclose(child[0], parent[0], rtol=1e-3, atol=1e-4)
    # the second-shape check really ran at batch 2
    assert simple["verification"]["second_shape"]["outputs"][0]["shape"] == [2, 1000]


def test_simplify_report_counts_nodes_and_sizes(resnet_pipeline: dict) -> None:
    export, simple, _ = resnet_pipeline["steps"]
    report = simple["report"]
    assert report["nodes_before"] == export["report"]["after"]["nodes"]
    assert report["nodes_after"] == report["after"]["nodes"]
    assert report["nodes_after"] <= report["nodes_before"]
    assert report["size_before"] == export["output"]["size_bytes"]
    assert report["size_after"] == simple["output"]["size_bytes"]
    assert report["after"]["ops"]["Conv"] == 20
    assert "BatchNormalization" not in report["after"]["ops"]


def test_ort_level_above_basic_is_labelled(resnet_pipeline: dict) -> None:
    ort_step = resnet_pipeline["steps"][2]
    assert ort_step["report"]["valid_for_provider"] == "cpu"
    assert any("valid only for the 'cpu' provider" in w for w in ort_step["warnings"])
    # ORT 'all' rewrites into CPU-specific contrib ops (NCHWc convolutions, fused
    # activations). Which ones depends on the CPU (a Xeon with AVX-512 leaves some Relu beside
    # its NCHWc convolutions), so only the rewrite itself and its label are asserted.
    ops = ort_step["report"]["after"]["ops"]
    assert any(op.startswith("com.microsoft") for op in ops), ops


def test_transformer_fusions_and_dynamic_sequence(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "model": {
                "factory": f"{SAMPLES / 'transformer.py'}:build",
                "factory_args": {"hidden": 64, "heads": 4, "ffn": 128, "vocab": 100},
            },
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": ["batch", "sequence"],
                    "dtype": "int64",
                    "range": [0, 100],
                },
                {
                    "name": "attention_mask",
                    "shape": ["batch", "sequence"],
                    "dtype": "int64",
                    "range": [1, 2],
                },
            ],
            "dims": {"batch": 2, "sequence": 8},
            "output_dir": str(tmp_path),
            "steps": [
                {"type": "export"},
                {
                    "type": "simplify",
                    "backend": ["onnxsim", "transformers"],
                    "transformers": {"num_heads": 4, "hidden_size": 64},
                    "guard": None,
                },
            ],
        }
    )
    manifest = run_pipeline(cfg, tmp_path)
    step = manifest["steps"][1]
    passes = step["report"]["backends"]
    assert [p["backend"] for p in passes] == ["onnxsim", "transformers"]
    assert passes[1]["nodes_after"] < passes[1]["nodes_before"]
    assert passes[1]["fused"]  # e.g. LayerNormalization / Gelu fusions happened
    assert step["verification"]["second_shape"]["dims"] == {"batch": 3, "sequence": 9}
    path = tmp_path / step["output"]["path"]
    shapes = io_table(onnx.load(str(path)))["inputs"]
    assert shapes[0]["shape"] == ["batch", "sequence"]


def test_cli_simplify_writes_output_only(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    out = tmp_path / "sub" / "m.simple.onnx"
    proc = run_cli("simplify", src, "-o", out, "--no-guard", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.simple.onnx"]
    assert op_histogram(onnx.load(str(out))) == {"Add": 1, "Relu": 1}


def test_cli_simplify_refuses_to_overwrite_input(tmp_path: Path) -> None:
    src = models.add_relu(tmp_path / "m.onnx")
    before = src.read_bytes()
    proc = run_cli("simplify", src, "-o", src)
    assert proc.returncode == ExitCode.USAGE
    assert "never overwrites its input" in error_line(proc)
    assert src.read_bytes() == before


def test_cli_simplify_failed_check_keeps_existing_output(tmp_path: Path) -> None:
    src = models.layernorm_decomposed(tmp_path / "ln.onnx")
    out = tmp_path / "ln.fused.onnx"
    out.write_bytes(b"previous good artifact")
    proc = run_cli("simplify", src, "-o", out, "-b", "transformers", "--atol", "0", "--rtol", "0")
    assert proc.returncode == ExitCode.VERIFICATION
    assert "output differs from its parent" in error_line(proc)
    assert out.read_bytes() == b"previous good artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ln.fused.onnx", "ln.onnx"]


def test_simplify_is_speed_guarded_by_default(tmp_path: Path) -> None:
    """The pattern that made a real pitch CNN 1.45x slower: explicit Pad nodes before Conv,
    which onnxsim folds into Conv.pads. Whether that is slower depends on the CPU; what must
    hold everywhere is that the result was timed against its input, and a slower one is
    never handed over in silence."""
    import json

    from onnxopt.bench import stats
    from tests.conftest import Untouched

    src = models.conv_net(tmp_path / "pads.onnx", explicit_pads=True, size=64, channels=32)
    out = tmp_path / "s.onnx"
    with Untouched(src):
        proc = run_cli("simplify", src, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    entry = manifest["steps"][0]
    assert entry["report"]["op_delta"].get("Pad") == -2  # onnxsim folded both Pads
    speed, guard = entry["speed"], entry["guard"]
    assert speed["parent_median_ms"] > 0 and speed["median_ms"] > 0
    assert guard["slower"] == stats.slower_beyond(speed["ratio"], speed["ratio_ci"][0], 0.03)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if guard["slower"]:
        assert entry["kept_parent"] and manifest["output_is_unchanged_copy"]
        assert out.read_bytes() == src.read_bytes() and "Pad" in ops
    else:
        assert not entry.get("kept_parent") and "Pad" not in ops
    with Untouched(src):
        table = run_cli("simplify", src, "-o", tmp_path / "t.onnx")
    assert table.returncode == 0, table.stderr
    assert "speed-up" in table.stdout or "unchanged copy" in table.stdout
