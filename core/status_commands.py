"""The ``doctor`` and ``status`` subcommands: is this machine set up (``core.doctor``), and where does a
project stand (``core.overview``). They only print what those found."""

from __future__ import annotations

import argparse
import asyncio
import json

from core.doctor import MARK, examine, summary
from core.gates import at_a_glance
from core.grimoire import Project
from core.intent import with_article
from core.overview import Overview, overview
from core.settings import Settings
from core.store import open_store


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    """One line per check, the fix indented below it, then a summary; exit status 1 when something must be
    fixed (warnings don't count), so a script can wait for a healthy setup."""
    findings = asyncio.run(examine(settings))
    if args.json:
        print(json.dumps([f.model_dump() for f in findings], ensure_ascii=False))
    else:
        for f in findings:
            print(f"{MARK[f.state]} {f.name}: {f.found}" + (f"\n     → {f.fix}" if f.fix else ""))
        print(summary(findings))
    return 1 if any(f.state == "problem" for f in findings) else 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        seen = await overview(settings, project, store)
    print(seen.model_dump_json() if args.json else "\n".join(status_lines(seen)))


def status_lines(seen: Overview) -> list[str]:
    lines = [
        f"{seen.name} — {with_article(seen.type)} LoRA for {seen.model}, trigger word `{seen.trigger}`",
        f"Pictures: {seen.pictures} in the dataset, {seen.captioned} with a caption "
        f"({with_article(seen.type)} needs {seen.target})",
        f"Gates: {at_a_glance(seen.gates)}",
    ]
    run = seen.run
    if run is None:
        lines.append("Training: not started yet")
    else:
        lines.append(f"Training: {run.status} — started {run.started}, last heard from {run.updated} ({run.worker})")
        lines += [f"  {text}" for text in (run.progress, run.message) if text]
    if seen.lora:
        lines.append(f"LoRA: registered in studio.md at weight {seen.lora.get('Recommended weight', '?')}")
    lines += [f"Rented GPU still running: {line.removeprefix('- ')}" for line in seen.cloud]
    lines.append(f"Next: {seen.next}")
    return lines


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine's setup (settings, Redis, database, grimoire, workers, GPU)")
    p.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    p.set_defaults(run=cmd_doctor)
    p = sub.add_parser("status", help="a project at a glance: pictures, gates, training, LoRA, and what to do next")
    p.add_argument("name", help="project name")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_status)
