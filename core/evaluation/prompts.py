"""The rows and columns of a strength grid: the test prompts for the LoRA's type (the table in
resources/evaluation/eval-methodology.md, so the artist reads the same list the code uses), the
artist's own prompts, and the weights every grid is drawn at."""

from __future__ import annotations

from collections.abc import Sequence

from core import resources
from core.captions.formats import with_trigger
from core.intent import LoraType

WEIGHTS = (0.3, 0.5, 0.7, 0.9, 1.0)  # eval-methodology.md "How the grid is made"; the no-LoRA column comes first
SEED = 42  # one fixed seed for every grid, so two grids of the same LoRA can be compared


def weight_label(weight: float) -> str:
    """A weight as the artist reads it in headers, file names and sentences: '0.3', '0.95', '1.0'."""
    text = f"{weight:g}"
    return text if "." in text else f"{text}.0"


def test_prompts(lora_type: LoraType | str, trigger: str, own: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(name, prompt) rows: the type's standard prompts with the trigger word filled in, then the artist's
    own ("yours 1", …), each given the trigger word first when it lacks it, since every cell, the no-LoRA
    column included, must carry it. Blank prompts of the artist's are skipped."""
    rows = resources.table("evaluation/eval-methodology.md", "Test prompts")
    standard = [
        (r["Name"], r["Prompt"].replace("{trigger}", trigger)) for r in rows if r["Type"] == LoraType(lora_type)
    ]
    mine = [with_trigger(p, trigger)[0] for p in own if p.strip()]
    return standard + [(f"yours {i}", p) for i, p in enumerate(mine, 1)]


def between(a: float, b: float) -> float:
    """The weight to draw next when ``a`` is a little weak and ``b`` already too much: their midpoint on
    the 0.05 steps weights are given in (0.5 and 0.7 → 0.6)."""
    return round(round((a + b) / 2 / 0.05) * 0.05, 2)
