"""PyTorch -> ONNX export: exporters, fallback, validation, dynamic axes, weights, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxopt.config import parse_config
from onnxopt.engine import run_pipeline
from onnxopt.errors import ExitCode, InputError, VerificationError
from onnxopt.graph import io_table
from tests.conftest import SAMPLES, Untouched, error_line, finished_artifacts, run_cli

FACTORIES = Path(__file__).with_name("factories.py")
MLP = f"{SAMPLES / 'mlp.py'}:build"


def _export_cfg(factory: str, out: Path, inputs: list[dict], **step: object) -> dict:
    return {
        "model": {"factory": factory},
        "inputs": inputs,
        "dims": {"batch": 2},
        "output_dir": str(out),
        "steps": [{"type": "export", **step}],
    }


X4 = [{"name": "x", "shape": ["batch", 4]}]


def test_mlp_export_dynamic_batch_and_report(tmp_path: Path) -> None:
    cfg = parse_config(
        _export_cfg(
            MLP, tmp_path, [{"name": "features", "shape": ["batch", 64]}], output_names=["logits"]
        )
    )
    with Untouched(SAMPLES):  # the factory's folder: no __pycache__, nothing rewritten
        manifest = run_pipeline(cfg, tmp_path)
    entry = manifest["steps"][0]
    assert entry["report"]["exporter"] == "dynamo"
    assert entry["verification"]["passed"] is True
    assert entry["verification"]["second_shape"]["dims"] == {"batch": 3}
    assert entry["parent"] == f"pytorch:{MLP}"
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    path = tmp_path / entry["output"]["path"]
    model = onnx.load(str(path))
    io = io_table(model)
    assert io["inputs"][0]["shape"] == ["batch", 64]
    assert io["outputs"][0]["name"] == "logits"
    # a batch size never seen during export or verification still runs and matches torch
    module = __import__("sample_models.mlp", fromlist=["build"]).build()
    x = np.random.default_rng(5).standard_normal((5, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"features": x})[0]
    want = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not (tmp_path / (path.name + ".data")).exists()  # small model: one file


def test_torchscript_exporter_and_multiple_dict_outputs(tmp_path: Path) -> None:
    cfg = parse_config(
        _export_cfg(
            f"{FACTORIES}:two_outputs",
            tmp_path,
            [{"name": "x", "shape": ["batch", 4]}, {"name": "y", "shape": ["batch", 3]}],
            exporter="torchscript",
            output_names=["a", "b"],
        )
    )
    manifest = run_pipeline(cfg, tmp_path)
    entry = manifest["steps"][0]
    assert entry["report"]["exporter"] == "torchscript"
    names = [o["name"] for o in entry["verification"]["main"]["outputs"]]
    assert names == ["a", "b"]


def test_auto_falls_back_to_torchscript_and_records_why(tmp_path: Path) -> None:
    cfg = parse_config(
        _export_cfg(
            f"{FACTORIES}:data_dependent",
            tmp_path,
            [{"name": "x", "shape": ["batch", 4], "range": [0.0, 1.0]}],
        )
    )
    manifest = run_pipeline(cfg, tmp_path)
    report = manifest["steps"][0]["report"]
    assert report["exporter"] == "torchscript"
    assert report["attempts"][0]["exporter"] == "dynamo"
    assert report["attempts"][0]["ok"] is False
    assert "export failed" in report["attempts"][0]["reason"]
    assert any("dynamo was not used" in w for w in manifest["steps"][0]["warnings"])


def test_baked_batch_is_caught_by_validation(tmp_path: Path) -> None:
    # torchscript bakes the traced batch size in; dynamo specialises the dim to it.
    cfg = parse_config(_export_cfg(f"{FACTORIES}:bakes_batch", tmp_path, X4))
    with pytest.raises(VerificationError) as info:
        run_pipeline(cfg, tmp_path)
    assert "dynamo: dynamic dims became fixed: x[0] fixed to 3" in str(info.value)
    assert "torchscript: differs from PyTorch: output 'output_0'" in str(info.value)
    assert finished_artifacts(tmp_path) == []


def test_exporter_bug_fails_with_exit_3_and_no_artifact(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = run_cli(
        "export", f"{FACTORIES}:export_differs", "-o", out, "-i", "x:batch,4", "--dim", "batch=2"
    )
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    line = error_line(proc)
    assert "export produced no model that matches PyTorch" in line
    assert "dynamo: differs from PyTorch" in line and "torchscript: differs" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (f"{FACTORIES}:raises", "raised ValueError: checkpoint folder is empty"),
        (f"{FACTORIES}:not_a_module", "returned int, expected torch.nn.Module"),
        (f"{FACTORIES}:no_such", "factory 'no_such' not found"),
        ("no/such/file.py:build", "factory file not found"),
        ("not_a_module_anywhere:build", "cannot import factory module"),
        ("nocolon", "is not of the form"),
    ],
)
def test_bad_factories_are_usage_errors(tmp_path: Path, factory: str, expected: str) -> None:
    cfg = parse_config(_export_cfg(factory, tmp_path, X4))
    with pytest.raises(InputError, match=expected.replace("(", r"\(")) as info:
        run_pipeline(cfg, tmp_path)
    assert info.value.exit_code == ExitCode.USAGE
    assert finished_artifacts(tmp_path) == []


def test_cli_factory_error_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("export", f"{FACTORIES}:raises", "-o", tmp_path / "m.onnx", "-i", "x:batch,4")
    assert proc.returncode == ExitCode.USAGE
    assert "raised ValueError" in error_line(proc)


def test_weights_pt_and_safetensors_are_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    mlp = __import__("sample_models.mlp", fromlist=["build"])
    trained = mlp.build(seed=7)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    want = trained(torch.from_numpy(x)).detach().numpy()
    for name in ("w.pt", "w.safetensors"):
        data = _export_cfg(
            MLP, tmp_path / f"out-{name}", [{"name": "features", "shape": ["batch", 64]}]
        )
        data["model"]["weights"] = str(tmp_path / name)
        manifest = run_pipeline(parse_config(data), tmp_path)
        path = tmp_path / f"out-{name}" / manifest["steps"][0]["output"]["path"]
        got = ort.InferenceSession(str(path)).run(None, {"features": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_weights_for_another_architecture(tmp_path: Path) -> None:
    mlp = __import__("sample_models.mlp", fromlist=["build"])
    torch.save(mlp.build(hidden=32).state_dict(), tmp_path / "small.pt")
    data = _export_cfg(MLP, tmp_path, [{"name": "features", "shape": ["batch", 64]}])
    data["model"]["weights"] = str(tmp_path / "small.pt")
    with pytest.raises(InputError, match="do not fit the module: size mismatch"):
        run_pipeline(parse_config(data), tmp_path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    data["model"]["weights"] = str(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="cannot read weights bad.pt"):
        run_pipeline(parse_config(data), tmp_path)


def test_inputs_spec_that_does_not_fit_the_module(tmp_path: Path) -> None:
    cfg = parse_config(_export_cfg(MLP, tmp_path, [{"name": "features", "shape": ["batch", 7]}]))
    with pytest.raises(InputError, match="module failed on the inputs spec"):
        run_pipeline(cfg, tmp_path)


def test_module_factory_and_factory_args(tmp_path: Path) -> None:
    data = _export_cfg(
        "sample_models.mlp:build", tmp_path, [{"name": "features", "shape": ["batch", 16]}]
    )
    data["model"]["factory_args"] = {"features": 16, "classes": 3}
    manifest = run_pipeline(parse_config(data), Path(__file__).parent.parent)
    assert manifest["steps"][0]["report"]["torch_outputs"] == [[2, 3]]


def test_cli_export_writes_only_the_output(mlp_onnx: Path) -> None:
    found = sorted(str(p.relative_to(mlp_onnx.parent)) for p in mlp_onnx.parent.rglob("*"))
    assert found == ["mlp.onnx"]
    onnx.checker.check_model(str(mlp_onnx))


def test_export_bytes_do_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    digests = []
    for where in ("a", "b/c"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        (folder / "net.py").write_text(
            (SAMPLES / "mlp.py")
            .read_text()
            .replace("from sample_models._seed import seeded", "from _seed import seeded")
        )
        (folder / "_seed.py").write_text((SAMPLES / "_seed.py").read_text())
        data = _export_cfg(
            f"{folder / 'net.py'}:build",
            folder / "out",
            [{"name": "features", "shape": ["batch", 64]}],
        )
        manifest = run_pipeline(parse_config(data), folder)
        assert manifest["steps"][0]["report"]["stack_traces_removed"] > 0
        digests.append(manifest["steps"][0]["output"]["sha256"])
        path = folder / "out" / manifest["steps"][0]["output"]["path"]
        assert str(folder) not in path.read_bytes().decode("latin-1")
    assert digests[0] == digests[1]
