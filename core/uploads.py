"""Receiving an artist's upload: size cap and magic-byte check at the door, then a safe place in the
inbox until the worker decodes, audits and imports it."""

from __future__ import annotations

import re
from pathlib import Path

from core.dataset.sniff import HEAD_BYTES, sniff
from core.grimoire import inside, write_bytes_atomic
from core.jobs import inbox
from core.settings import Settings


def refuse_size(settings: Settings, filename: str, size: int) -> str | None:
    """The plain refusal for a file over the size limit (None when it is within it); adapters call it
    before downloading, so an oversized file is never fetched."""
    if size <= settings.max_upload_bytes:
        return None
    return (
        f"{_shown(filename)}: this file is {size / 1e6:.1f} MB, over the {settings.max_upload_mb:g} MB limit. "
        "Export a smaller version (a long side of about 2048 px is plenty for training)."
    )


def _shown(filename: str) -> str:
    return Path(filename.replace("\\", "/")).name or "upload"


def stage_upload(settings: Settings, session: str, upload_id: str, filename: str, data: bytes) -> Path | str:
    """Save one uploaded file to the session's inbox; returns its path, or a plain sentence saying why
    it was refused (the artist's other files are unaffected)."""
    shown = _shown(filename)
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
