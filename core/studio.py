"""Reading ``grimoire/studio.md``: the base models the artist has, and where they keep them."""

from __future__ import annotations

import re
from pathlib import Path

from core.families import FAMILIES, Family

_MODEL_LINE = re.compile(r"^- \*\*(?P<name>.+?)\*\* \((?P<family>\w+)\)(?::\s*(?P<path>\S.*?))?\s*$", re.MULTILINE)


def _section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``, with HTML comments (the template's
    examples) removed."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return match.group(1) if match else ""


def studio_models(grimoire: Path) -> list[tuple[str, Family]]:
    """(display name, family) of each model listed in studio.md; every known family when none is."""
    path = grimoire / "studio.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    found = [
        (m["name"], Family(m["family"]))
        for m in _MODEL_LINE.finditer(_section(text, "Models"))
        if m["family"] in Family.__members__
    ]
    return found or [(info.display, family) for family, info in FAMILIES.items()]


def model_path(grimoire: Path, family: Family) -> str | None:
    """Where the artist keeps their model of this family (the path after the colon in studio.md)."""
    path = grimoire / "studio.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return next((m["path"] for m in _MODEL_LINE.finditer(_section(text, "Models"))
                 if m["family"] == family.value and m["path"]), None)  # fmt: skip


def gpu_memory_gb(grimoire: Path) -> float | None:
    """The training GPU's memory as studio.md states it ('- **Local**: NVIDIA RTX 4090, 24 GB'): the
    settings are worked out on whichever machine runs the job, which need not be the GPU machine."""
    path = grimoire / "studio.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    match = re.search(r"(\d+(?:\.\d+)?)\s*GB", _section(text, "GPU"))
    return float(match.group(1)) if match else None
