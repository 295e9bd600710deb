"""``loratrain env``: the environment check from the terminal, and Gate 3 for a named project.

Kept beside the capability (``add_parsers`` is called by the CLI's parser) so the terminal adapter stays a
list of subcommands; like every command here it only translates: the probe finds, Gate 3 decides.
"""

from __future__ import annotations

import argparse
import json

from core import intent as intents
from core.environment.gate3 import decide, fact_lines, probe_project, problem_lines
from core.environment.probe import BACKENDS, probe
from core.families import Family
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store


async def cmd_env(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name) if args.name else None
    family = intents.load(project).family if project else Family.sdxl
    if project:  # the project's settings say which trainer, model and memory to check for
        async with open_store(settings.database_path) as store:
            env = await probe_project(settings, project, store, args.backend)
            gate = await decide(env, project, store)
    else:
        env = probe(args.backend or "builtin", args.model_size, args.dataset_size, settings.grimoire, family=family,
                    vram_needed_gb=args.vram)  # fmt: skip
        gate = await decide(env, None)
    if args.json:
        print(json.dumps({**env.model_dump(), "gate": gate.model_dump()}, ensure_ascii=False))
        return
    print("\n".join(["Environment", *fact_lines(env), "", "Problems and fixes", *problem_lines(env), ""]))
    print(f"Gate 3 (environment): {gate.summary}")
    if project:
        print(f"Record: {project.path('environment.md')}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``env`` to the CLI's subcommands."""
    p = sub.add_parser("env", help="check this machine for training (GPU, driver, PyTorch, disk, trainer); Gate 3")
    p.add_argument("name", nargs="?", help="project name: write its environment.md and record Gate 3")
    p.add_argument("--backend", choices=BACKENDS, help="the trainer to check (default: the project's, else builtin)")
    p.add_argument("--model-size", type=float, metavar="GB", help="base model size on disk (default: by model family)")
    p.add_argument("--dataset-size", type=int, metavar="N", help="number of pictures (default: the project's, or 100)")
    p.add_argument("--vram", type=float, metavar="GB", help="Gate 2's GPU memory estimate for the run, if known")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_env)
