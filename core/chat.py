"""``loratrain chat``: the Training Specialist in a terminal, on the same engine as the Discord bot.

Buttons become numbered options (type the number); pictures are added by typing ``add`` and paths
(files or folders), or by typing a path alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

from core.assistant import make_assistant
from core.engine import Attachment as FileReply
from core.engine import Choice, Decide, Engine, Picture, Progress, Reply, Say, Text, Upload
from core.grimoire import Project
from core.runner import InProcessRunner
from core.settings import Settings
from core.store import open_store
from core.uploads import stage_upload

QUIT = ("quit", "exit", "bye")


def _files(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        found += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return found


def _paths(text: str) -> list[Path]:
    """The paths in a line: the whole line (after an optional 'add') if it names one, since folder
    names often have spaces; else each word."""
    rest = text[4:].strip() if text.lower().startswith("add ") else text
    whole = Path(rest).expanduser()
    return [whole] if whole.exists() else [Path(w).expanduser() for w in rest.split()]


async def chat(
    settings: Settings,
    session: str,
    user: str,
    lines: Iterator[str],
    out: Callable[[str], None],
    first: Decide | None = None,
) -> None:
    """Talk until the lines run out (or 'quit'); ``first`` is a button pressed before anything is typed."""
    options: dict[str, tuple[str, str]] = {}  # number typed → (choice ref, option value)
    numbers = itertools.count(1)
    uploads = 0

    async def show(reply: Reply) -> None:
        if isinstance(reply, Text):
            out(reply.text)
        elif isinstance(reply, Choice):
            out(reply.prompt)
            for option in reply.options:
                number = str(next(numbers))
                options[number] = (reply.ref, option.value)
                out(f"  [{number}] {option.label}")
        elif isinstance(reply, Picture):
            out(f"(picture: {reply.path}) {reply.caption}")
        elif isinstance(reply, FileReply):
            out(f"(file: {reply.path}) {reply.caption}")
        elif isinstance(reply, Progress):
            out(f"⏳ {reply.text} ({reply.done}/{reply.total})" + (f"\n  {reply.details}" if reply.details else ""))

    async with open_store(settings.database_path) as store:
        engine = Engine(settings, store, make_assistant(settings))
        runner = InProcessRunner(settings, engine, show)
        await runner.deliver(await engine.start(session, user, user))
        if first is not None:
            await runner.deliver(await engine.handle(session, user, first))
        for line in lines:
            text = line.strip()
            if text.lower() in QUIT:
                break
            if not text:
                continue
            paths = _paths(text)
            if text in options:
                ref, value = options.pop(text)
                typed = None
                if value == "adjust":  # the terminal's version of Discord's Adjust box
                    out("Type the caption as you'd like it:")
                    typed = next(lines, "")
                action: Say | Upload | Decide = Decide(ref=ref, value=value, text=typed)
            elif paths and all(p.exists() for p in paths):
                uploads += 1
                staged, refused = [], []
                for file in _files(paths):
                    with file.open("rb") as f:  # a byte past the limit is enough to refuse it
                        data = f.read(settings.max_upload_bytes + 1)
                    result = stage_upload(settings, session, f"terminal-{uploads}", file.name, data)
                    (staged if isinstance(result, Path) else refused).append(result)
                action = Upload(staged=staged, refused=refused)
            else:
                action = Say(text=text)
            await runner.deliver(await engine.handle(session, user, action))


async def caption_review(settings: Settings, project: Project, user: str, offline: bool, lines: Iterator[str],
                         out: Callable[[str], None]) -> None:  # fmt: skip
    """``loratrain caption NAME``: the sample review and batch captioning of a project made with
    ``loratrain new``, as a terminal conversation of its own (``--offline``: the local analyzer only)."""
    session = f"terminal-captions-{project.name}"
    async with open_store(settings.database_path) as store:
        state = await store.session(session)
        data = (state or {}).get("data") or {"step": "done", "owner_name": user}
        await store.save_session(session, user, project.name, "collect", {**data, "offline": offline})
        await store.offer_choice(session, "captions", {})
    await chat(settings, session, user, lines, out, first=Decide(ref="captions", value="start"))
