"""The ``dryrun`` and ``gates`` subcommands: Gate 4, and all four gates at a glance."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from core import intent as intents
from core.dataset.audit import list_files
from core.dataset.snapshot import take
from core.environment import gate3
from core.environment.probe import probe
from core.gates import MARK, at_a_glance, ledger
from core.grimoire import Project
from core.settings import Settings
from core.store import Store, open_store
from core.training import gate2
from core.training.dryrun import dry_run, inputs_fingerprint


async def current_fingerprints(settings: Settings, project: Project, store: Store) -> dict[int, str | None]:
    """The inputs of the four gates as they are now: the dataset and captions, the config files, this
    machine (probed again, as the settings' trainer and memory need it), and the dry run's inputs."""
    intent = intents.load(project)
    current: dict[int, str | None] = {1: (await take(project, intent, settings, store)).fingerprint()}
    config = (await store.gate(project.name, 2) or {}).get("details", {})
    files = [Path(f) for f in config.get("files", [])]
    current[2] = gate2.fingerprint(files) if files and all(f.is_file() for f in files) else None
    pictures = len(list_files(project.dataset_dir))
    env = await asyncio.to_thread(probe, config.get("backend", "builtin"), None, pictures, settings.grimoire,
                                  family=intent.family, vram_needed_gb=config.get("estimate_gb"))  # fmt: skip
    current[3] = gate3.fingerprint(env)
    dry = project.root / "config" / "dryrun.json"
    if dry.is_file():
        gates = {n: await store.gate(project.name, n) for n in (1, 2, 3)}
        current[4] = inputs_fingerprint(gates, json.loads(dry.read_text(encoding="utf-8")))
    return current


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
        states = await ledger(project.name, store, await current_fingerprints(settings, project, store))
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
    p.set_defaults(run=cmd_gates)
