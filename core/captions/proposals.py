"""Proposed captions for a list of pictures: Claude vision with the analyzer's measurements as hints
when there is a key and we are online, else the analyzer alone. A picture Claude can't caption still
gets the analyzer's caption and a plain sentence saying why, so one refusal never blocks a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from core.captions.analyzer import analyse
from core.captions.claude import Captioner, CaptionProblem
from core.captions.formats import compose, image_path
from core.errors import UserError
from core.grimoire import Project
from core.intent import Intent
from core.settings import Settings
from core.store import Store

CLAUDE_AT_ONCE = 4  # calls in flight: quick batches without tripping the API's rate limits


class Proposal(BaseModel):
    file: str  # name in the project's dataset folder
    caption: str  # the full caption, trigger word first, formatted for the family
    content: list[str]  # what is in the picture (empty from the analyzer: the artist adds it)
    style: list[str]  # how it is made
    source: Literal["claude", "analyzer"]
    problem: str | None = None  # why Claude could not caption it, in a plain sentence


async def propose(
    settings: Settings,
    store: Store,
    project: Project,
    intent: Intent,
    files: list[str],
    examples: list[str],
    offline: bool = False,
    progress: Callable[[int, int], Awaitable[None]] | None = None,
) -> list[Proposal]:
    """One proposal per file, in order; ``progress(done, total)`` as each finishes."""
    paths = [image_path(project, f) for f in files]  # refuses names outside the dataset folder up front
    key = settings.anthropic_api_key
    online = bool(key and key.get_secret_value().strip()) and not offline
    claude = Captioner(settings, store, project.name, intent, examples) if online else None
    at_once = asyncio.Semaphore(CLAUDE_AT_ONCE if claude else settings.workers)
    done = 0

    async def one(file: str, path: Path) -> Proposal:
        nonlocal done
        async with at_once:
            try:
                style = await asyncio.to_thread(analyse, path)
            except OSError as err:
                raise UserError(
                    f"I couldn't open {file!r} in the dataset folder; check the dataset again, then caption."
                ) from err
            proposal = Proposal(
                file=file, caption=compose(intent.family, intent.trigger, [], style), content=[], style=style,
                source="analyzer",
            )  # fmt: skip
            if claude:
                try:
                    answer = await claude.describe(path, style)
                    proposal = Proposal(
                        file=file, caption=compose(intent.family, intent.trigger, answer.content, answer.style),
                        content=answer.content, style=answer.style, source="claude",
                    )  # fmt: skip
                except CaptionProblem as problem:
                    proposal.problem = str(problem)
        done += 1
        if progress:
            await progress(done, len(files))
        return proposal

    tasks = [asyncio.ensure_future(one(f, p)) for f, p in zip(files, paths, strict=True)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # on a failure, stop the other pictures before the client closes
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if claude:
            await claude.close()
