"""Receiving an artist's upload: size cap and magic-byte check at the door, then a safe place in the
inbox until the worker decodes, audits and imports it."""

from __future__ import annotations

import re
from pathlib import Path

from core.dataset.importer import refuse_size, shown_name
from core.dataset.sniff import HEAD_BYTES, sniff
from core.grimoire import inside, write_bytes_atomic
from core.jobs import inbox
from core.settings import Settings


def stage_upload(settings: Settings, session: str, upload_id: str, filename: str, data: bytes) -> Path | str:
    """Save one uploaded file to the session's inbox; returns its path, or a plain sentence saying why
    it was refused (the artist's other files are unaffected)."""
    shown = shown_name(filename)
    if too_big := refuse_size(settings, filename, len(data)):
        return too_big
    kind = sniff(data[:HEAD_BYTES])
    if kind is None:
        return f"{shown}: this isn't a picture (it looks like text or another kind of file)."
    if kind.format is None:
        return f"{shown}: this is {kind.label}, which training tools can't read. Send PNG, JPEG or WebP pictures."
    folder = inbox(settings, session) / re.sub(r"[^A-Za-z0-9_-]", "_", upload_id)
    name = re.sub(r"[\x00-\x1f/]", "_", shown).lstrip(".") or "upload"
    path = inside(settings.grimoire, folder / name)
    write_bytes_atomic(path, data)
    return path
