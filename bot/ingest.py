"""Artists' files from a Discord message into the session's inbox.

Each file is downloaded as soon as the message arrives (Discord's file links expire), after its
announced size is checked so an oversized file is never fetched, and is then checked at the door
and stored by ``core.uploads``. What happens to the files is the engine's business.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import discord

from core.dataset.importer import refuse_size
from core.engine import Upload
from core.settings import Settings
from core.uploads import stage_upload

log = logging.getLogger(__name__)


async def receive(settings: Settings, session: str, message: discord.Message) -> Upload:
    staged: list[Path] = []
    refused: list[str] = []
    for index, attachment in enumerate(message.attachments):
        result = await _fetch(settings, session, f"{message.id}-{index}", attachment)
        if isinstance(result, Path):
            staged.append(result)
        else:
            refused.append(result)
    return Upload(staged=staged, refused=refused)


async def _fetch(settings: Settings, session: str, upload_id: str, attachment: discord.Attachment) -> Path | str:
    if too_big := refuse_size(settings, attachment.filename, attachment.size):
        return too_big
    try:
        data = await attachment.read()
    except (discord.HTTPException, aiohttp.ClientError) as err:
        log.warning("Could not download attachment %s: %s", upload_id, err)
        return f"{attachment.filename}: I couldn't download this file from Discord just now. Please send it again."
    return await asyncio.to_thread(stage_upload, settings, session, upload_id, attachment.filename, data)
