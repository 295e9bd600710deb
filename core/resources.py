"""The Training Specialist's reference files in ``resources/``: read whole, by section, or by table.

Facts that code needs (dataset sizes, presets, the CUDA/PyTorch matrix, failure modes) live once, as a
Markdown table in the reference file the artist can read; code reads that table instead of keeping a
copy. Each file opens with an "In short" section the conversation quotes, with its path as citation.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent / "resources"


@cache
def read(name: str) -> str:
    """The text of ``resources/<name>`` (e.g. ``dataset/dataset-sizes.md``)."""
    path = (ROOT / name).resolve()
    if not path.is_relative_to(ROOT) or not path.is_file():
        raise UserError(f"The reference file resources/{name} is missing from this installation.")
    return path.read_text(encoding="utf-8")


def section(name: str, heading: str) -> str:
    """The text under ``## heading`` (to the next heading of that level or above), stripped."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^#{{1,2}} |\Z)", read(name), re.MULTILINE | re.DOTALL)
    if match is None:
        raise KeyError(f"resources/{name} has no section '{heading}'")
    return match.group(1).strip()


def table(name: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table under ``## heading``, as one dict per row keyed by column header."""
    rows = [line.strip() for line in section(name, heading).splitlines() if line.strip().startswith("|")]
    if len(rows) < 2:
        raise KeyError(f"resources/{name}, section '{heading}', has no table")
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    header, body = cells[0], [c for c in cells[1:] if not all(set(x) <= set("-: ") for x in c)]
    return [dict(zip(header, row, strict=True)) for row in body]


def quote(name: str, heading: str = "In short") -> str:
    """A short excerpt for the conversation, with its source: '… (from resources/<name>)'."""
    text = " ".join(section(name, heading).split())
    return f"{text} (from resources/{name})"
