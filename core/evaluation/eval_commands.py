"""The ``eval`` and ``register`` subcommands: the strength grid and its evidence, then the weight the
artist chooses recorded in studio.md."""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import UserError
from core.evaluation.prompts import SEED
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store


async def cmd_eval(settings: Settings, args: argparse.Namespace) -> None:
    from core.evaluation.evaluate import evaluate, register  # torch and diffusers load only when used

    project = Project.existing(settings, args.name)
    print(f"Drawing {project.name} at weights 0.3–1.0 with one seed ({args.seed}), beside the base model alone…")
    async with open_store(settings.database_path) as store:
        result = await evaluate(settings, project, store, checkpoints=args.checkpoint, own_prompts=args.prompt,
                                compare=args.compare, seed=args.seed, steps=args.steps or settings.eval_steps,
                                resolution=args.resolution)  # fmt: skip
        if args.json:
            print(json.dumps(result.model_dump(mode="json")))
            return
        if result.note:
            print(result.note)
        if result.grid is None:
            return
        print(f"Grid: {result.grid}")
        if result.checkpoints:
            print(f"Checkpoints side by side: {result.checkpoints}")
        print("\n".join(result.comparison))
        for line in result.suggestions:
            print(f"⚠️ {line}")
        weight = _chosen(result.suggested) if not args.no_register else None
        if weight is None:
            print(f"When you have chosen: loratrain register {project.name} --weight W")
            return
        studio = await register(settings, project, store, weight)
    print(f"Registered {project.name} in {studio} at weight {weight:g}.")


def _chosen(suggested: float | None) -> float | None:
    """The artist's weight from the terminal (Enter takes the suggestion); None when there is no one to ask."""
    if not sys.stdin.isatty() or suggested is None:
        return None
    answer = input(f"Which weight should I record as recommended? [Enter: {suggested:g}, a number, or 'no'] ").strip()
    if answer.lower() in ("no", "n", "later"):
        return None
    try:
        return float(answer) if answer else suggested
    except ValueError as err:
        raise UserError(f"{answer!r} is not a weight; give a number such as 0.6.") from err


async def cmd_register(settings: Settings, args: argparse.Namespace) -> None:
    from core.evaluation.evaluate import register

    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        studio = await register(settings, project, store, args.weight, args.good_for)
    print(f"Registered {project.name} in {studio} at weight {args.weight:g}; eval.md and status.md say so.")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="strength grid of the finished LoRA (0.3–1.0, one seed) with its evidence")
    p.add_argument("name", help="project name")
    p.add_argument("--checkpoint", action="append", default=[], help="a checkpoint file to draw (repeatable)")
    p.add_argument("--prompt", action="append", default=[], help="your own test prompt (repeatable)")
    p.add_argument("--seed", type=int, default=SEED, help=f"the one seed every picture uses (default {SEED})")
    p.add_argument("--steps", type=int, help="sampling steps per picture (default: LORATRAIN_EVAL_STEPS, 25)")
    p.add_argument("--resolution", type=int, help="picture size (default: the training resolution)")
    p.add_argument("--compare", action="store_true", help="also put the kept checkpoints side by side")
    p.add_argument("--no-register", action="store_true", help="don't ask for the weight to register")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (registers nothing)")
    p.set_defaults(run=cmd_eval)
    p = sub.add_parser("register", help="record the LoRA in studio.md at the weight you chose")
    p.add_argument("name", help="project name")
    p.add_argument("--weight", type=float, required=True, help="the recommended weight, e.g. 0.6")
    p.add_argument("--good-for", help="what it does well, in your words (default: the project's description)")
    p.set_defaults(run=cmd_register)
