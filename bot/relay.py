"""The worker's events into the artists' threads, each posted once.

The stream position is kept in SQLite and every event id is marked before it is shown, so after a
restart the relay catches up from where it stopped and never posts an event twice. A Redis outage
is waited out; a thread that was deleted, or that the bot may no longer see, is logged and skipped.
Asked to stop, the relay stops at once while it waits for events, and otherwise after the batch it is
showing: an event marked but left unshown would be lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from redis.exceptions import RedisError

from core.events import Event, RedisStream

if TYPE_CHECKING:
    from bot.main import LoraBot

log = logging.getLogger(__name__)

RETRY_MAX = 30.0  # seconds between attempts while Redis is unreachable
T = TypeVar("T")


class Relay:
    def __init__(self, bot: LoraBot, stream: RedisStream):
        self.bot, self.stream = bot, stream
        self.last_read: float | None = None  # when the stream last answered (epoch seconds), for the health check
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Follow the stream until ``stop``."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.step()
            except (RedisError, OSError) as err:
                log.warning("Event stream unreachable; trying again", extra={"error": str(err), "retry_in_s": delay})
            except Exception:
                log.exception("Reading the event stream failed; trying again", extra={"retry_in_s": delay})
            else:
                delay = 1.0
                continue
            await self._unless_stopped(asyncio.sleep(delay))
            delay = min(delay * 2, RETRY_MAX)
        log.info("Relay stopped", extra={"stream": self.stream.name})

    def stop(self) -> None:
        """Ask ``run`` to end: the wait for events is broken off, a batch being shown is finished."""
        self._stop.set()

    async def step(self, block_ms: int = 5000) -> int:
        """Relay the events after the stored position (waiting up to ``block_ms`` for one, unless asked to
        stop); returns how many were read."""
        store, name = self.bot.store, self.stream.name
        batch = await self._unless_stopped(self.stream.read(await store.stream_cursor(name), block_ms=block_ms))
        if batch is None:
            return 0
        self.last_read = time.time()
        for stream_id, event in batch:
            try:
                if event is not None:  # unreadable entries were logged by the stream; move past them
                    await self._relay(event)
            except Exception:  # one bad event must not stop the others
                log.exception("Could not relay an event", extra={"event_id": event.id, "session": event.session})
            await store.save_stream_cursor(name, stream_id)
        return len(batch)

    async def _unless_stopped(self, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None if ``stop`` came first (``work`` is then cancelled: nothing was taken)."""
        task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        return None if task.cancelled() else task.result()

    async def _relay(self, event: Event) -> None:
        if not await self.bot.store.mark_relayed(event.id):
            return
        async with self.bot.session_lock(event.session):
            outcome = await self.bot.engine.on_event(event)
            thread = await self.bot.session_thread(event.session)
            if thread is None:
                log.warning("Thread is gone or hidden from the bot; event not shown",
                            extra={"session": event.session, "event_id": event.id})  # fmt: skip
                return
            await self.bot.deliver(thread, outcome)
