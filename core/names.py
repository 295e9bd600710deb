"""Validation of the names an artist chooses: project names and trigger words.

A project name becomes a folder under ``grimoire/training/`` and a trigger word is written into
every caption and config, so both are kept to a small, safe alphabet. Errors are plain sentences.
"""

from __future__ import annotations

import re

from core.errors import UserError

_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]*")
_TRIGGER = re.compile(r"[a-z0-9][a-z0-9_]*")
_RESERVED = {"con", "prn", "aux", "nul", "training"}


def check_project_name(name: str) -> str:
    """Return the name if it can safely be a folder name, else raise with a plain explanation."""
    if not name or not name.strip():
        raise UserError("Please give the project a name, for example 'mira-style'.")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise UserError(f"The project name {name!r} contains a slash or '..'. Use only letters, digits, '-' and '_'.")
    if not 2 <= len(name) <= 48:
        raise UserError(f"The project name should be 2 to 48 characters long; {name!r} has {len(name)}.")
    if not _PROJECT.fullmatch(name) or name.lower() in _RESERVED:
        raise UserError(
            f"The project name {name!r} can't be used. Use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit (for example 'mira-style')."
        )
    return name


def check_trigger_word(word: str) -> str:
    """Return the trigger word if usable: one lowercase token the base model hasn't seen as a word."""
    if not word or not word.strip():
        raise UserError("Please choose a trigger word, for example 'mirastyle'.")
    if not 3 <= len(word) <= 32:
        raise UserError(f"A trigger word works best at 3 to 32 characters; {word!r} has {len(word)}.")
    if not _TRIGGER.fullmatch(word):
        raise UserError(
            f"The trigger word {word!r} can't be used. Use one word of lowercase letters, digits and '_' "
            "(no spaces or commas, because captions are comma-separated), for example 'mirastyle'."
        )
    return word


def suggest_trigger_word(name: str) -> str:
    """A trigger word derived from the project name: unusual enough not to clash with real words."""
    base = re.sub(r"[^a-z0-9]", "", name.lower()) or "lora"
    word = base if base.endswith(("style", "char", "obj")) else base + "_lt"
    return word[:32]
