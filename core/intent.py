"""Phase 1's record: what the artist wants to teach, written as ``intent.md`` in the seed's format."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel

from core import resources
from core.errors import UserError
from core.families import FAMILIES, Family
from core.grimoire import Project
from core.names import check_project_name, check_trigger_word


class LoraType(StrEnum):
    style = "style"
    character = "character"
    object = "object"


def with_article(word: str) -> str:
    """'a style', 'an object'."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


class SizeTarget(BaseModel):
    low: int
    high: int
    why: str

    def __str__(self) -> str:
        return f"{self.low}–{self.high} images"


def _targets() -> dict[LoraType, SizeTarget]:
    """How many pictures each type needs: the table in resources/dataset/dataset-sizes.md."""
    rows = resources.table("dataset/dataset-sizes.md", "Sizes by type")
    return {LoraType(r["Type"]): SizeTarget(low=int(r["Fewest"]), high=int(r["Most"]), why=r["Why"]) for r in rows}


DATASET_TARGETS: dict[LoraType, SizeTarget] = _targets()

CONTENT_STYLE_NOTES: dict[LoraType, str] = {
    LoraType.style: (
        "The model must learn how you paint, not what you paint. Show many different subjects, and the "
        "captions will name each picture's subject so that only the technique is left for the trigger word."
    ),
    LoraType.character: (
        "The model must learn who this is, not one background or one outfit. Vary poses, clothes and "
        "settings, and the captions will name what changes so the identity is what the trigger word keeps."
    ),
    LoraType.object: (
        "The model must learn the object, not its usual surroundings. Show it in different places and "
        "lights, and the captions will name the surroundings so the object is what the trigger word keeps."
    ),
}


class Intent(BaseModel):
    name: str
    type: LoraType
    family: Family
    trigger: str
    description: str = ""

    @property
    def target(self) -> SizeTarget:
        return DATASET_TARGETS[self.type]

    @property
    def resolution(self) -> int:
        return FAMILIES[self.family].resolution

    def to_markdown(self) -> str:
        description = " ".join(self.description.split()) or f"{with_article(str(self.type)).capitalize()} LoRA."
        return (
            f"# Training Intent: {self.name}\n"
            f"- **Type**: {self.type}\n"
            f"- **Base model**: {FAMILIES[self.family].display} ({self.family})\n"
            f"- **Description**: {description}\n"
            f"- **Dataset target**: {self.target} ({self.target.why})\n"
            f"- **Trigger word**: {self.trigger}\n"
            f"- **Content-style notes**: {CONTENT_STYLE_NOTES[self.type]}\n"
        )

    @classmethod
    def from_markdown(cls, name: str, text: str) -> Intent:
        fields = dict(re.findall(r"^- \*\*(.+?)\*\*: ?(.*)$", text, flags=re.MULTILINE))
        family = re.search(r"\((\w+)\)\s*$", fields.get("Base model", ""))
        try:
            return cls(
                name=name,
                type=fields["Type"].strip(),
                family=family.group(1) if family else "",
                trigger=fields["Trigger word"].strip(),
                description=fields.get("Description", "").strip(),
            )
        except (KeyError, ValueError) as err:
            raise UserError(
                f"intent.md of {name!r} is missing its type, base model or trigger word; "
                f"re-create it with 'loratrain new {name} ...'."
            ) from err


def create(project: Project, type: LoraType, family: Family, trigger: str, description: str = "") -> Intent:
    """Write a new project's intent.md; refuses to overwrite an existing project."""
    check_project_name(project.name)
    intent = Intent(
        name=project.name, type=type, family=family, trigger=check_trigger_word(trigger), description=description
    )
    if project.exists("intent.md"):
        raise UserError(f"A project called {project.name!r} already exists. Pick another name, or keep working on it.")
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    project.write("intent.md", intent.to_markdown())
    return intent


def load(project: Project) -> Intent:
    return Intent.from_markdown(project.name, project.read("intent.md"))
