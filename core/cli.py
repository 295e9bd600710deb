"""``loratrain``: the terminal adapter. Each subcommand parses its arguments, calls the capability
that does the work, and prints the result in plain words (or JSON with ``--json``). It decides nothing."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from core import intent as intents
from core import logs, status_commands
from core.cloud import commands as cloud_commands
from core.dataset.audit import audit_folder
from core.dataset.curate import curate
from core.dataset.duplicates import find_duplicates
from core.dataset.explain import audit_lines, curation_lines, duplicate_lines
from core.dataset.importer import import_paths
from core.dataset.inspect import Limits
from core.dataset.report import write_report
from core.dataset.snapshot import Snapshot, resolve, take
from core.environment import commands as environment_commands
from core.errors import UserError
from core.evaluation import diagnose_commands, eval_commands
from core.families import FAMILIES, Family
from core.grimoire import Project
from core.intent import LoraType, with_article
from core.settings import Settings, load
from core.store import Store, open_store
from core.training import commands as training_commands
from core.training import config_commands, gate_commands, monitor_commands, train_commands


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def _limits(settings: Settings, family: str) -> Limits:
    return Limits(resolution=FAMILIES[Family(family)].resolution, max_pixels=settings.max_image_pixels)


def cmd_new(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.at(settings, args.name)
    intent = intents.create(project, LoraType(args.type), Family(args.model), args.trigger, args.description)
    print(
        f"Created project {project.name!r}: a {intent.type} LoRA for {FAMILIES[intent.family].display}, "
        f"trigger word `{intent.trigger}`."
    )
    print(f"For {with_article(intent.type)}, aim for {intent.target} — {intent.target.why}.")
    print(f"Record: {project.path('intent.md')}")


async def cmd_add(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    intent = intents.load(project)
    async with open_store(settings.database_path) as store:
        results = await import_paths(project, [Path(p) for p in args.paths], settings, store, intent.resolution)
    marks = {"added": "✅", "already_there": "↩️", "refused": "❌"}
    for r in results:
        print(f"{marks[r.status]} {r.original}: {r.message}")
    added = sum(r.status == "added" for r in results)
    print(f"Added {added} of {len(results)} file(s) to {project.dataset_dir}.")


def cmd_audit(settings: Settings, args: argparse.Namespace) -> None:
    report, _ = audit_folder(Path(args.dir), _limits(settings, args.model_family), settings.workers)
    if args.json:
        print(json.dumps(report.model_dump(), ensure_ascii=False))
    else:
        _print(audit_lines(report, FAMILIES[Family(args.model_family)].resolution))


def cmd_dupes(settings: Settings, args: argparse.Namespace) -> None:
    # Duplicates don't depend on the model family; any family's limits serve for the inspection.
    _, inspections = audit_folder(Path(args.dir), _limits(settings, "sdxl"), settings.workers)
    report = find_duplicates(inspections)
    if args.json:
        print(json.dumps(report.model_dump(), ensure_ascii=False))
    else:
        _print(duplicate_lines(report))


@asynccontextmanager
async def _snapshot(settings: Settings, name: str) -> AsyncIterator[tuple[Snapshot, Store]]:
    """The named project's dataset as it stands, with the store open for recording decisions."""
    project = Project.existing(settings, name)
    async with open_store(settings.database_path) as store:
        yield await take(project, intents.load(project), settings, store), store


async def cmd_resolve(settings: Settings, args: argparse.Namespace) -> None:
    async with _snapshot(settings, args.name) as (snapshot, store):
        print(await resolve(snapshot, store, args.a, args.b, args.keep))


async def cmd_curate(settings: Settings, args: argparse.Namespace) -> None:
    async with _snapshot(settings, args.name) as (snapshot, _):
        result = curate(snapshot)
    if args.json:
        print(json.dumps(result.model_dump(), ensure_ascii=False))
    else:
        _print(curation_lines(result))


async def cmd_report(settings: Settings, args: argparse.Namespace) -> None:
    async with _snapshot(settings, args.name) as (snapshot, store):
        gate, path = await write_report(snapshot, curate(snapshot), store)
    if gate.passed:
        print("Gate 1 (dataset): GO — the dataset is ready for training settings.")
    else:
        print("Gate 1 (dataset): NO-GO — " + "; ".join(gate.reasons) + ".")
        _print([f"  {i}. {fix}" for i, fix in enumerate(gate.fixes, 1)])
    print(f"Report: {path}")


async def cmd_chat(settings: Settings, args: argparse.Namespace) -> None:
    from core.chat import chat  # the conversation (and the Claude SDK) loads only when it is used

    user = args.user or getpass.getuser()
    print("loratrain chat — type a number to pick an option, paths to add pictures, 'quit' to leave.")
    await chat(settings, args.session or f"terminal-{user}", user, _input_lines(), print)


async def cmd_caption(settings: Settings, args: argparse.Namespace) -> None:
    from core.chat import caption_review

    project = Project.existing(settings, args.name)
    print("Caption review — type a number to pick an option, 'quit' to stop (you can come back later).")
    await caption_review(settings, project, getpass.getuser(), args.offline, _input_lines(), print)


def _input_lines() -> Iterator[str]:
    while True:
        try:
            yield input("> ")
        except EOFError:
            return


def _adapter(module: str):
    """A subcommand served by another process's adapter (``worker``, ``bot``): imported by name only
    when it runs, so ``core`` never depends on arq or discord.py."""

    def run(settings: Settings, args: argparse.Namespace):
        return importlib.import_module(module).run(settings, args)

    return run


def cmd_demo(settings: Settings, args: argparse.Namespace) -> None:
    from core.demo import run_demo

    run_demo(settings)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="loratrain", description="A LoRA Training Specialist for artists.")
    top.add_argument("--grimoire", type=Path, help="grimoire folder (default: LORATRAIN_GRIMOIRE or ./grimoire)")
    top.add_argument("--verbose", action="store_true", help="log every detail (DEBUG), the libraries' too")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    families, types = [f.value for f in Family], [t.value for t in LoraType]

    p = sub.add_parser("new", help="start a training project (writes intent.md)")
    p.add_argument("name", help="project name: lowercase letters, digits, '-' and '_'")
    p.add_argument("--type", required=True, choices=types, help="what the LoRA teaches")
    p.add_argument("--model", required=True, choices=families, help="base model family")
    p.add_argument("--trigger", required=True, help="the word that switches the LoRA on in prompts")
    p.add_argument("--description", default="", help="what you want to train, in your words")
    p.set_defaults(run=cmd_new)

    p = sub.add_parser("add", help="import image files or folders into a project's dataset")
    p.add_argument("name", help="project name")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.set_defaults(run=cmd_add)

    p = sub.add_parser("audit", help="check every file in a folder for problems")
    p.add_argument("dir", help="folder of images")
    p.add_argument("--model-family", default="sdxl", choices=families, help="sets the size pictures should reach")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_audit)

    p = sub.add_parser("dupes", help="find exact and near duplicates in a folder")
    p.add_argument("dir", help="folder of images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_dupes)

    p = sub.add_parser("resolve", help="decide about a duplicate pair in a project")
    p.add_argument("name", help="project name")
    p.add_argument("a", help="first picture of the pair (file name in the dataset folder)")
    p.add_argument("b", help="second picture of the pair")
    p.add_argument("--keep", required=True, choices=["a", "b", "both"], help="which to keep")
    p.set_defaults(run=cmd_resolve)

    p = sub.add_parser("curate", help="judge the dataset's variety and suggest a subset")
    p.add_argument("name", help="project name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_curate)

    p = sub.add_parser("report", help="write dataset-report.md and decide Gate 1")
    p.add_argument("name", help="project name")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("caption", help="write captions: review 5 samples, then the rest are captioned")
    p.add_argument("name", help="project name")
    p.add_argument("--offline", action="store_true", help="use the local picture analyzer only (no Claude)")
    p.set_defaults(run=cmd_caption)

    p = sub.add_parser("chat", help="talk to the Training Specialist in this terminal (no Discord needed)")
    p.add_argument("--session", help="conversation to resume (default: terminal-USER)")
    p.add_argument("--user", help="your name (default: your login name)")
    p.set_defaults(run=cmd_chat)

    for more in (
        training_commands,
        config_commands,
        environment_commands,
        gate_commands,
        train_commands,
        monitor_commands,
        eval_commands,
        diagnose_commands,
        cloud_commands,
        status_commands,
    ):
        more.add_parsers(sub)

    p = sub.add_parser("worker", help="run an arq worker for the quick, the GPU or the cloud queue")
    p.add_argument("--queue", choices=["quick", "gpu", "cloud"], default="quick", help="which queue to serve")
    p.add_argument("--burst", action="store_true", help="stop when the queue is empty (for scripts and tests)")
    p.add_argument("--check", action="store_true", help="exit 0 if this machine's worker for the queue is running")
    p.set_defaults(run=_adapter("worker.main"))

    p = sub.add_parser("bot", help="run the Discord bot (needs LORATRAIN_DISCORD_TOKEN)")
    p.add_argument("--check", action="store_true", help="exit 0 if the bot is connected to Discord and relaying")
    p.set_defaults(run=_adapter("bot.main"))

    p = sub.add_parser("demo", help="run the whole pipeline on generated sample pictures and a tiny model")
    p.set_defaults(run=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status: what it returned when that is a number (a health check's 0 or 1),
    2 for a problem it explained, else 0."""
    args = parser().parse_args(argv)
    try:
        settings = load()
        if args.grimoire:
            settings = settings.model_copy(update={"grimoire": args.grimoire})
        logs.setup(args.verbose, settings)
        result = args.run(settings, args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except UserError as err:
        print(f"loratrain: {err}", file=sys.stderr)
        return 2
    return result if type(result) is int else 0


if __name__ == "__main__":
    sys.exit(main())
