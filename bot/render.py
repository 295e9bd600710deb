"""The engine's replies as Discord messages in the artist's thread: text, choices as buttons,
pictures and files, and one progress message per job that is edited in place.

A Discord error on one reply is logged and the others still go out: nothing the artist sent or
decided lives in Discord, so a lost message never loses work.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic

import discord

from bot.buttons import choice_view
from bot.private import Private
from core.engine import Attachment, Choice, Picture, Progress, Reply, Text
from core.store import Store

log = logging.getLogger(__name__)

LIMIT = 2000  # characters in one Discord message
PROGRESS_EVERY = 5.0  # seconds between edits of one progress message: edits are rate limited


def split(text: str, limit: int = LIMIT) -> list[str]:
    """Messages of at most ``limit`` characters, broken between lines (inside a line only when it
    alone is too long); blank pieces are dropped, as Discord refuses empty messages."""
    chunks = [""]
    for line in text.splitlines(keepends=True):
        for start in range(0, len(line), limit):
            piece = line[start : start + limit]
            if len(chunks[-1]) + len(piece) > limit:
                chunks.append("")
            chunks[-1] += piece
    return [chunk.rstrip("\n") for chunk in chunks if chunk.strip()]


def progress_line(progress: Progress) -> str:
    share = min(1.0, progress.done / progress.total) if progress.total > 0 else 0.0
    filled = round(10 * share)
    mark = "✅" if share >= 1 else "⏳"
    line = f"{mark} {progress.text} {'▓' * filled}{'░' * (10 - filled)} {progress.done}/{progress.total}"
    return f"{line}\n{progress.details}" if progress.details else line


class Renderer:
    """Posts replies; remembers (in SQLite) which message shows each progress key, so the same
    message is edited even after a restart."""

    def __init__(self, store: Store, progress_every: float = PROGRESS_EVERY):
        self.store, self.progress_every = store, progress_every
        self._edited: dict[tuple[str, str], float] = {}  # when each progress message was last written
        self._latest: dict[tuple[str, str], tuple[discord.abc.Messageable, int, str]] = {}  # not yet shown
        self._later: dict[tuple[str, str], asyncio.Task] = {}

    async def show(self, thread: discord.Thread, replies: list[Reply], private: Private | None = None) -> None:
        """Post each reply in the thread; private texts go to ``private`` when there is someone to
        answer privately (a relayed event has no one, so they go to the thread)."""
        for reply in replies:
            try:
                await self._show(thread, reply, private)
            except discord.HTTPException as err:
                log.warning("Discord refused a %s reply in thread %s: %s", reply.kind, thread.id, err)

    async def close(self) -> None:
        for task in self._later.values():
            task.cancel()

    async def _show(self, thread: discord.Thread, reply: Reply, private: Private | None) -> None:
        if isinstance(reply, Text):
            send = private if reply.private and private else thread.send
            text = f"{await self._mention(thread)}{reply.text}" if reply.ping else reply.text
            for chunk in split(text):
                await send(chunk)
        elif isinstance(reply, Choice):
            *before, last = split(reply.prompt) or ["…"]
            for chunk in before:
                await thread.send(chunk)
            await thread.send(last, view=choice_view(str(thread.id), reply))
        elif isinstance(reply, Picture | Attachment):
            await self._file(thread, reply)
        else:
            await self._progress(thread, reply)

    async def _mention(self, thread: discord.Thread) -> str:
        """'<@owner> ' for a ping: Discord notifies the artist the session belongs to."""
        session = await self.store.session(str(thread.id))
        return f"<@{session['owner']}> " if session else ""

    async def _file(self, thread: discord.Thread, reply: Picture | Attachment) -> None:
        caption = split(reply.caption)[0] if reply.caption.strip() else None
        try:
            file = discord.File(reply.path)
        except OSError as err:
            log.warning("Cannot attach %s: %s", reply.path, err)
            if caption:
                await thread.send(caption)
            return
        await thread.send(caption, file=file)

    async def _progress(self, thread: discord.Thread, progress: Progress) -> None:
        session = str(thread.id)
        key, text = (session, progress.key), progress_line(progress)
        posted = await self.store.posted_message(session, progress.key)
        if posted is None:
            message = await thread.send(text)
            await self.store.save_posted_message(session, progress.key, str(message.id))
            self._edited[key] = monotonic()
            return
        self._latest[key] = (thread, int(posted), text)
        wait = self._edited.get(key, float("-inf")) + self.progress_every - monotonic()
        if wait <= 0 or progress.done >= progress.total:  # the last word is shown at once
            await self._edit(key)
        elif key not in self._later:
            self._later[key] = asyncio.create_task(self._edit_later(key, wait))

    async def _edit(self, key: tuple[str, str]) -> None:
        """Show the latest text of a progress message (the bot's own edit, not an interaction's:
        those expire after 15 minutes)."""
        task = self._later.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        latest = self._latest.pop(key, None)
        if latest is None:
            return
        thread, message_id, text = latest
        self._edited[key] = monotonic()
        await thread.get_partial_message(message_id).edit(content=text)

    async def _edit_later(self, key: tuple[str, str], wait: float) -> None:
        await asyncio.sleep(wait)
        try:
            await self._edit(key)
        except discord.HTTPException as err:
            log.warning("Could not update progress message %s: %s", key, err)
