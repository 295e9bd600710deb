"""The ``train`` and ``cancel`` subcommands: training in this process, behind the four gates and a
final confirmation, and a stop request that reaches a run from any process."""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import UserError
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store
from core.training.execute import Note, plan, train
from core.training.progress import ProgressState
from core.training.readiness import readiness


async def print_report(item: ProgressState | Note) -> None:
    if isinstance(item, Note):
        print(item.text + (f" (picture: {item.picture})" if item.picture else ""), flush=True)
    else:
        print(f"{item.headline()}\n  {item.details().replace(chr(10), chr(10) + '  ')}", flush=True)


async def _print_json(item: ProgressState | Note) -> None:
    """One JSON object per line, for a program following the run (a cloud run follows this from home)."""
    print(json.dumps({"note" if isinstance(item, Note) else "progress": item.model_dump(mode="json")}), flush=True)


def confirmed(question: str, why: str) -> bool:
    """The artist's yes in the terminal; with no one to ask (a script), ``why`` it asks, and how to say yes."""
    if not sys.stdin.isatty():
        raise UserError(f"{why}, so it asks first; add --yes to go ahead from a script.")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


async def cmd_train(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        ready = await plan(project, store, await readiness(settings, project, store))
        print(json.dumps({"plan": ready.model_dump(mode="json")}) if args.json else ready.text(), flush=True)
        if not args.yes and not confirmed("Start training?", "Training spends hours of GPU time"):
            print("Not started. Nothing was changed.")
            return
        result = await train(settings, project, store, _print_json if args.json else print_report, fresh=args.fresh)
    if args.json:
        print(json.dumps({"result": result.model_dump(mode="json")}), flush=True)
        return
    print(result.message)
    print(f"Record: {result.progress}")
    if result.status == "failed":
        raise UserError("Training did not finish; the reason and what to do are above.")


async def cmd_cancel(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        run = await store.request_cancel(project.name)
    if run is None:
        print(f"No training of {project.name} is running; nothing to stop.")
    else:
        print(f"Asked {project.name}'s training to stop: it finishes its current step and keeps its last checkpoint.")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the LoRA (only when all four gates pass); asks before it starts")
    p.add_argument("name", help="project name")
    p.add_argument("--yes", action="store_true", help="start without asking (for scripts)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming a stopped run")
    p.add_argument("--json", action="store_true", help="print the plan, each progress update and the result as JSON")
    p.set_defaults(run=cmd_train)
    p = sub.add_parser("cancel", help="stop a project's running training (its last checkpoint is kept)")
    p.add_argument("name", help="project name")
    p.set_defaults(run=cmd_cancel)
