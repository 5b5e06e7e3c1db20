"""The docs cannot drift: the key reference is the config classes' own text, and every
relative link in the README and docs/ points at a file that exists."""

from __future__ import annotations

import re

from onnxopt.config.pipeline import PipelineConfig
from onnxopt.config.reference import markdown, spliced
from tests.conftest import REPO, run_cli


def test_the_key_reference_in_docs_is_current() -> None:
    document = (REPO / "docs" / "pipeline.md").read_text(encoding="utf-8")
    assert spliced(document) == document, "docs/pipeline.md is stale: run make docs"


def test_the_reference_names_every_key_with_its_description() -> None:
    text = markdown()
    for name, field in PipelineConfig.model_fields.items():
        if name != "steps":
            assert f"| `{name}` |" in text
            assert (field.description or "").split("\n")[0][:40] in text
    for kind in ("export", "simplify", "quantize", "prune", "distill", "bench", "package"):
        assert f"#### `type: {kind}`" in text
    assert "#### `steps[].quantize.static.calibration`" in text
    proc = run_cli("schema", "--markdown")
    assert proc.returncode == 0 and proc.stdout == text


def test_relative_links_in_the_readme_and_docs_resolve() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
    assert len((REPO / "README.md").read_text().splitlines()) <= 220
