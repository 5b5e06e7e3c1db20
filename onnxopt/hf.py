"""Local Hugging Face model folders as an export source (``transformers`` extra, offline).

A folder holds ``config.json``, the weights (safetensors or .bin) and the tokenizer or image
processor files. Nothing is downloaded: every load passes ``local_files_only=True``. The
inputs spec comes from the tokenizer (``model_input_names``, int64 ``[batch, sequence]``, ids
drawn below the vocabulary size) or the image processor (``pixel_values [batch, C, H, W]``),
with dynamic batch and sequence axes. The module returned for export wraps the model so that
it takes the inputs positionally and returns plain tensors:

- ``feature-extraction``: ``last_hidden_state``, or with pooling a sentence embedding
  (``auto`` uses a sentence-transformers folder's ``1_Pooling/config.json`` and
  ``Normalize`` module when present);
- ``text-classification`` and ``image-classification``: ``logits``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxopt.errors import InputError, first_line, require

TASKS = ("feature-extraction", "text-classification", "image-classification")


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise InputError(
            f"Hugging Face model folder not found: {path}",
            hint="give model.huggingface a local folder with config.json and the weights",
        )
    if not (path / "config.json").is_file():
        raise InputError(
            f"{path} has no config.json; expected a Hugging Face model folder",
            hint="save one with model.save_pretrained(folder) and tokenizer.save_pretrained",
        )


def _config(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return data


def input_specs(path: Path, task: str) -> list[dict[str, Any]]:
    """The inputs spec of a folder's model for ``task``, from its tokenizer or image processor."""
    require("transformers", "hf")
    _check_folder(path)
    config = _config(path)
    if task == "image-classification":
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise InputError(
                f"{path}: no usable image processor ({first_line(err, 200)})"
            ) from None
        size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        height = size.get("height") or size.get("shortest_edge") or config.get("image_size", 224)
        width = size.get("width") or size.get("shortest_edge") or config.get("image_size", 224)
        channels = int(config.get("num_channels", 3))
        return [
            {
                "name": "pixel_values",
                "shape": ["batch", channels, int(height), int(width)],
                "dtype": "float32",
                "range": [-1.0, 1.0],
            }
        ]
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: no usable tokenizer ({first_line(err, 200)})") from None
    ranges = {
        "input_ids": [0, int(config.get("vocab_size", len(tokenizer)))],
        "attention_mask": [1, 2],  # every position real: random zeros would mask whole rows
        "token_type_ids": [0, int(config.get("type_vocab_size", 1))],
    }
    return [
        {
            "name": name,
            "shape": ["batch", "sequence"],
            "dtype": "int64",
            "range": ranges.get(name, [0, 2]),
        }
        for name in tokenizer.model_input_names
    ]


def _pooling(path: Path, pooling: str) -> tuple[str, bool]:
    """(mode, normalize) for feature extraction."""
    if pooling != "auto":
        return pooling, False
    pool_cfg = path / "1_Pooling" / "config.json"
    if not pool_cfg.is_file():
        return "none", False
    data = json.loads(pool_cfg.read_text(encoding="utf-8"))
    mode = "cls" if data.get("pooling_mode_cls_token") else "mean"
    modules = path / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text(encoding="utf-8")
    return mode, normalize


def output_names(path: Path, task: str, pooling: str) -> list[str]:
    """Names of the exported outputs."""
    if task != "feature-extraction":
        return ["logits"]
    mode, _ = _pooling(path, pooling)
    return ["last_hidden_state"] if mode == "none" else ["sentence_embedding"]


def build(
    path: Path, task: str, pooling: str = "auto", *, input_names: list[str] | None = None
) -> Any:
    """The folder's model, loaded offline, wrapped for export (eval mode, float32).

    ``input_names`` (in order) default to the tokenizer's or image processor's.
    """
    require("transformers", "hf")
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    _check_folder(path)
    classes = {
        "feature-extraction": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "image-classification": transformers.AutoModelForImageClassification,
    }
    try:
        model = classes[task].from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32, attn_implementation="eager"
        )
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"{path}: cannot load a {task} model offline ({first_line(err, 200)})",
            hint="check the folder's files and the task",
        ) from None
    model.eval()
    names = input_names or [s["name"] for s in input_specs(path, task)]
    mode, normalize = _pooling(path, pooling) if task == "feature-extraction" else ("none", False)

    class Wrapped(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            kwargs = dict(zip(names, args, strict=True))
            out = self.model(**kwargs, return_dict=True)
            if task != "feature-extraction":
                return out.logits
            hidden = out.last_hidden_state
            if mode == "none":
                return hidden
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = kwargs.get("attention_mask")
                weights = (
                    torch.ones_like(hidden[..., :1])
                    if mask is None
                    else mask.unsqueeze(-1).to(hidden.dtype)
                )
                pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return pooled

    wrapped = Wrapped().eval()
    wrapped.__dict__["onnxopt_output_names"] = output_names(path, task, pooling)
    return wrapped


def folder_digest_parts(path: Path) -> list[tuple[str, int, float]]:
    """Cheap identity of a folder for cache keys: (relative name, size, mtime) of each file."""
    if not path.is_dir():
        return []
    return [
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    ]
