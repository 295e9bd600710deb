"""The Training Specialist's reference files: all there, substantial, and every source traceable."""

from __future__ import annotations

import re

import pytest

from core import resources
from core.intent import DATASET_TARGETS, LoraType

FILES = [
    "training/training-concepts.md", "dataset/dataset-sizes.md", "dataset/content-style.md",
    "dataset/captioning-guide.md", "dataset/caption-formats.md", "dataset/curation-guide.md",
    "training/parameters-guide.md", "training/optimizers.md", "training/presets.md",
    "backends/kohya-adapter.md", "backends/simpletuner-adapter.md", "backends/ai-toolkit-adapter.md",
    "environment/cuda-pytorch-matrix.md", "environment/vram-calculator.md",
    "environment/preflight-checklist.md", "evaluation/eval-methodology.md", "evaluation/strength-guide.md",
    "training/failure-modes.md", "persona.md",
]  # fmt: skip
# The tables code reads (or will read): file, heading, columns.
TABLES = [
    ("dataset/dataset-sizes.md", "Sizes by type", ["Type", "Fewest", "Most", "Why"]),
    ("dataset/caption-formats.md", "Formats by model", ["Family", "Style", "Separator", "Notes"]),
    ("training/parameters-guide.md", "Safe ranges", ["Parameter", "Low", "High", "Default", "Why"]),
    ("training/optimizers.md", "Choosing", ["Optimizer", "Learning rate", "Memory per parameter", "Good for"]),
    ("training/presets.md", "Presets", ["Preset", "Epochs", "Purpose"]),
    ("training/failure-modes.md", "Symptoms", ["Symptom", "Likely cause", "Fix"]),
    ("environment/cuda-pytorch-matrix.md", "Matrix", ["PyTorch", "CUDA builds", "Minimum Linux driver"]),
    ("environment/vram-calculator.md", "Model sizes",
     ["Family", "Denoiser parameters (billions)", "Text encoder parameters (billions)", "Native resolution"]),
    ("environment/preflight-checklist.md", "Disk needs", ["Item", "Gigabytes", "Note"]),
    ("evaluation/eval-methodology.md", "Test prompts", ["Type", "Name", "Prompt"]),
    ("evaluation/strength-guide.md", "Typical weights", ["Type", "Low", "High", "Start at"]),
]  # fmt: skip
# A source is traceable when it links somewhere, names a paper (authors and year), or names a
# document inside a project (a path with a file extension).
URL = re.compile(r"https?://[^\s)>\]]+\.[^\s)>\]]+")
PAPER = re.compile(r"[A-Z][a-zA-Z-]+ (et al\.|and [A-Z][a-zA-Z-]+|& [A-Z][a-zA-Z-]+).*(19|20)\d\d")
DOCUMENT = re.compile(r"[\w.-]+/[\w./-]+\.(md|py|rst|txt|toml|json|yaml|yml|mdx|html)\b")


@pytest.mark.parametrize("name", FILES)
def test_each_reference_file_is_substantial_and_opens_with_a_quotable_summary(name):
    text = resources.read(name)
    assert text.startswith("# ") and len(text.splitlines()) >= 40 and len(text) >= 2500
    summary = resources.section(name, "In short")
    assert 40 <= len(summary) <= 600 and "\n-" not in summary
    assert resources.quote(name).endswith(f"(from resources/{name})")


@pytest.mark.parametrize("name", FILES)
def test_every_source_points_somewhere(name):
    items = [line[2:] for line in resources.section(name, "Sources").splitlines() if line.startswith("- ")]
    assert items, f"{name} lists no sources"
    for item in items:
        assert URL.search(item) or PAPER.search(item) or DOCUMENT.search(item), f"{name}: untraceable source {item!r}"


@pytest.mark.parametrize("name,heading,columns", TABLES)
def test_structured_facts_are_tables_code_can_read(name, heading, columns):
    rows = resources.table(name, heading)
    assert rows and list(rows[0]) == columns
    assert all(all(cell for cell in row.values()) for row in rows)


def test_dataset_sizes_come_from_the_reference_file():
    rows = {r["Type"]: r for r in resources.table("dataset/dataset-sizes.md", "Sizes by type")}
    for kind in LoraType:
        assert (DATASET_TARGETS[kind].low, DATASET_TARGETS[kind].high) == (
            int(rows[kind]["Fewest"]),
            int(rows[kind]["Most"]),
        )
    assert (DATASET_TARGETS[LoraType.character].low, DATASET_TARGETS[LoraType.character].high) == (15, 40)


def test_reference_paths_cannot_escape_the_folder():
    from core.errors import UserError

    with pytest.raises(UserError):
        resources.read("../pyproject.toml")
