"""Captions as the trainers read them: composed for the base model's family, one UTF-8 line in a ``.txt``
beside each picture (kohya layout), the trigger word first.

The format comes from the table "Formats by model" in resources/dataset/caption-formats.md, the single
source of truth: its Style column says tags or sentences, its Separator column how parts are joined.
The choices the table leaves to us:

- The trigger word comes first, then the separator, always: kohya's ``keep_tokens=1`` keeps the first
  comma-separated part in place, and Gate 1 and the built-in trainer read the same part. One rule says
  when a caption starts with the trigger word, ``starts_with_trigger``; ``with_trigger`` puts a caption
  in that form, and ``write_caption`` writes only captions in it.
- Tags (pony, sdxl, sd15): lowercase booru-style tags with spaces, not underscores (``long hair``); an
  underscore between letters or digits becomes a space, so ``^_^`` keeps its own. A comma inside an item
  splits it into two tags. Duplicates are dropped. Order: trigger, Pony's special tags (``score_``,
  ``source_``, ``rating_``, underscores kept), content, style. No score tags are added: the table says
  loratrain adds them only when the artist asks (by putting them in the content).
- Sentences (flux): the content as one sentence and the style as another, phrases joined by the
  separator, the artist's and Claude's wording and case kept (``mirastyle, a fox in tall grass. Soft
  morning light, muted greens.``). A comma inside a phrase stays; runs of commas become one, and stray
  ones at a phrase's ends go. Underscores become spaces as for tags.
- In both, items lose newlines, runs of spaces and stray separators at their ends, and an item that is
  just the trigger word is dropped (our code places the trigger; a model's copy would repeat it).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

from core import resources
from core.dataset.snapshot import caption_path
from core.errors import UserError
from core.families import Family
from core.grimoire import Project, inside, write_atomic

SEPARATORS = {"comma": ", "}
SPECIAL_TAGS = ("score_", "source_", "rating_")  # Pony's own tags, written with underscores
_WORD_UNDERSCORE = re.compile(r"(?<=[^\W_])_(?=[^\W_])")
_COMMAS = re.compile(r"\s*,[\s,]*")
_STRAY = " ,;.\t"


@cache
def formats() -> dict[Family, tuple[str, str]]:
    """Family → (style, separator) from the table in caption-formats.md."""
    rows = resources.table("dataset/caption-formats.md", "Formats by model")
    return {Family(r["Family"]): (r["Style"], SEPARATORS[r["Separator"]]) for r in rows}


def _flat(text: str) -> str:
    """One line: control characters and every kind of line break become spaces, runs of spaces one."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


def _spaced(item: str) -> str:
    """Underscores between letters or digits become spaces, except in Pony's special tags."""
    return item if item.lower().startswith(SPECIAL_TAGS) else _WORD_UNDERSCORE.sub(" ", item)


def _tags(items: list[str]) -> list[str]:
    parts = (part for item in items for part in _flat(item).split(","))
    return [" ".join(_spaced(part.strip(_STRAY).lower()).split()) for part in parts]


def _phrases(items: list[str]) -> list[str]:
    """Phrases with runs of commas made one and spaced as in writing (``a ,, b`` → ``a, b``)."""
    return [_COMMAS.sub(", ", " ".join(_spaced(_flat(item)).split())).strip(_STRAY) for item in items]


def _unique(items: list[str], trigger: str) -> list[str]:
    """Items in order without empties, repeats (ignoring case) or the trigger word itself."""
    seen, out = {trigger.lower(), ""}, []
    for item in items:
        if item.lower() not in seen:
            seen.add(item.lower())
            out.append(item)
    return out


def compose(family: Family, trigger: str, content: list[str], style: list[str]) -> str:
    """The caption for ``family``: the trigger word, then the content, then the style (module docstring)."""
    kind, sep = formats()[Family(family)]
    if kind == "tags":
        tags = _unique(_tags(content) + _tags(style), trigger)
        special = [t for t in tags if t.startswith(SPECIAL_TAGS)]
        return sep.join([trigger, *special, *(t for t in tags if t not in special)])
    sentences = [sep.join(part) for part in (_unique(_phrases(content), trigger), _unique(_phrases(style), trigger))]
    sentences = [s[:1].upper() + s[1:] if i else s for i, s in enumerate(s for s in sentences if s)]
    return sep.join([trigger, " ".join(f"{s}." for s in sentences)]) if sentences else trigger


def starts_with_trigger(caption: str, trigger: str) -> bool:
    """Whether the caption's first comma-separated part, stripped, is the trigger word (ignoring case): the
    one rule for "starts with the trigger word" that Gate 1, the built-in trainer and kohya's
    ``keep_tokens=1`` count. ``mirastyle painting of a fox`` and ``mirastyles, a fox`` do not."""
    return caption.split(",", 1)[0].strip().lower() == trigger.strip().lower()


def with_trigger(caption: str, trigger: str) -> tuple[str, bool]:
    """The caption on one line in the form ``starts_with_trigger`` counts, and whether the trigger word had
    to be added: ``mirastyle painting of…`` becomes ``mirastyle, painting of…`` (not added); a caption
    without the word gets it in front (added); an empty one is just the word (added)."""
    caption = " ".join(caption.split())
    if not caption:
        return trigger, True
    if starts_with_trigger(caption, trigger):
        return caption, False
    if caption.split(",", 1)[0].lower().startswith(trigger.lower() + " "):
        return f"{trigger}, {caption[len(trigger) :].strip()}", False
    return f"{trigger}, {caption}", True


def image_path(project: Project, file: str) -> Path:
    """The picture ``file`` in the dataset folder, refusing names that lead outside it."""
    path = inside(project.dataset_dir, project.dataset_dir / file)
    if path.suffix.lower() in (".txt", ".caption"):
        raise UserError(f"{file!r} is a caption file, not a picture.")
    return path


def write_caption(project: Project, file: str, caption: str, trigger: str) -> Path:
    """Write ``caption`` on one line beside the picture, atomically; returns the ``.txt`` path. A caption
    that starts with the trigger word and a space is written with a comma after the word (``with_trigger``),
    so what is written always satisfies ``starts_with_trigger``; one without the word is refused."""
    image = image_path(project, file)
    if not image.is_file():
        raise UserError(f"There is no picture called {file!r} in this project's dataset folder.")
    caption = _flat(caption)
    if not caption:
        raise UserError(f"The caption for {file!r} is empty. Write what is in the picture, after '{trigger}'.")
    caption, added = with_trigger(caption, trigger)
    if added:
        raise UserError(
            f"The caption for {file!r} must start with the trigger word '{trigger}' followed by a comma, "
            f"for example '{caption[:60]}': the trigger word is what calls up the LoRA."
        )
    path = caption_path(image)
    write_atomic(path, caption + "\n")
    return path


def read_caption(project: Project, file: str) -> str | None:
    """The caption beside the picture, or None when it has none."""
    path = caption_path(image_path(project, file))
    return path.read_text(encoding="utf-8", errors="replace").strip() if path.is_file() else None
