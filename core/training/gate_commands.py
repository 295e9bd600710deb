"""The ``dryrun`` and ``gates`` subcommands: Gate 4, and all four gates at a glance."""

from __future__ import annotations

import argparse
import json

from core.gates import MARK, at_a_glance
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store
from core.training.dryrun import dry_run
from core.training.readiness import readiness


async def cmd_dryrun(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    print(f"Running {args.name}'s training for a few steps to check that everything connects…")
    async with open_store(settings.database_path) as store:
        gate = await dry_run(project, store)
    for adjustment in gate.adjustments:
        print(adjustment)
    print(f"Gate 4 (dry run): {gate.summary}")
    print(f"Record: {project.path('status.md')}")


async def cmd_gates(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        states = await readiness(settings, project, store)
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in states]))
        return
    print(at_a_glance(states))
    for s in states:
        print(f"  {MARK[s.state]} Gate {s.number} ({s.name}): {s.state} — {s.why}")
    if all(s.state == "passed" for s in states):
        print("All four gates pass: training may start.")
    else:
        print("Training can't start until all four gates pass; no setting or button overrides this.")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dryrun", help="run 2–5 real training steps to check everything connects; Gate 4")
    p.add_argument("name", help="project name")
    p.set_defaults(run=cmd_dryrun)
    p = sub.add_parser("gates", help="the four gates at a glance (stale when what they checked has changed)")
    p.add_argument("name", help="project name")
    p.add_argument("--json", action="store_true", help="print the four gates as JSON")
    p.set_defaults(run=cmd_gates)
