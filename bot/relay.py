"""The worker's events into the artists' threads, each posted once.

The stream position is kept in SQLite and every event id is marked before it is shown, so after a
restart the relay catches up from where it stopped and never posts an event twice. A Redis outage
is waited out; a thread that was deleted, or that the bot may no longer see, is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from core.events import Event, RedisStream

if TYPE_CHECKING:
    from bot.main import LoraBot

log = logging.getLogger(__name__)

RETRY_MAX = 30.0  # seconds between attempts while Redis is unreachable


class Relay:
    def __init__(self, bot: LoraBot, stream: RedisStream):
        self.bot, self.stream = bot, stream

    async def run(self) -> None:
        """Follow the stream for the bot's whole life."""
        delay = 1.0
        while True:
            try:
                await self.step()
            except (RedisError, OSError) as err:
                log.warning("Event stream unreachable (%s); trying again in %.0f s", err, delay)
            except Exception:
                log.exception("Reading the event stream failed; trying again in %.0f s", delay)
            else:
                delay = 1.0
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def step(self, block_ms: int = 5000) -> int:
        """Relay the events after the stored position (waiting up to ``block_ms`` for one); returns
        how many were read."""
        store, name = self.bot.store, self.stream.name
        batch = await self.stream.read(await store.stream_cursor(name), block_ms=block_ms)
        for stream_id, event in batch:
            try:
                if event is not None:  # unreadable entries were logged by the stream; move past them
                    await self._relay(event)
            except Exception:  # one bad event must not stop the others
                log.exception("Could not relay event %s", event.id)
            await store.save_stream_cursor(name, stream_id)
        return len(batch)

    async def _relay(self, event: Event) -> None:
        if not await self.bot.store.mark_relayed(event.id):
            return
        async with self.bot.session_lock(event.session):
            outcome = await self.bot.engine.on_event(event)
            thread = await self.bot.session_thread(event.session)
            if thread is None:
                log.warning("Thread %s is gone or hidden from the bot; event %s not shown", event.session, event.id)
                return
            await self.bot.deliver(thread, outcome)
