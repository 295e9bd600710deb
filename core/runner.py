"""Embedded mode's runner: jobs run in this process and their events go straight back to the engine,
in the order they happen — the same path the worker and the bot take, without Redis or Discord."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from core.engine import Engine, Outcome, Reply
from core.events import Event
from core.jobs import run_job
from core.settings import Settings

Show = Callable[[Reply], Awaitable[None]]


class InProcessRunner:
    def __init__(self, settings: Settings, engine: Engine, show: Show):
        self.settings, self.engine, self.show = settings, engine, show

    async def deliver(self, outcome: Outcome) -> None:
        """Show an outcome's replies, then run its jobs (and any jobs their events lead to)."""
        for reply in outcome.replies:
            await self.show(reply)
        for job in outcome.jobs:
            later = Outcome()
            try:
                await run_job(self.settings, job, lambda event, later=later: self._relay(event, later))
            except Exception:  # noqa: BLE001 — run_job has told the artist; the conversation goes on
                pass
            await self.deliver(later)

    async def _relay(self, event: Event, later: Outcome) -> None:
        result = await self.engine.on_event(event)
        for reply in result.replies:
            await self.show(reply)
        later.jobs += result.jobs
