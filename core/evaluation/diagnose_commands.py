"""The ``diagnose`` subcommand: from what the artist sees (a symptom key, or their own words) to the likely
cause, the fix and a next step with this project's numbers; without either, the symptoms to choose from and
what the strength grid's evidence (``eval/evidence.json``) already suggests."""

from __future__ import annotations

import argparse
import dataclasses
import json

from core.errors import UserError
from core.evaluation.diagnose import FAILURE_MODES, Diagnosis, Facts, detect, diagnose, match, symptoms
from core.evaluation.measures import WeightEvidence
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store


async def facts_of(settings: Settings, project: Project) -> Facts:
    """The run's settings as Gate 2 recorded them, and the checkpoints kept in the project (oldest first)."""
    async with open_store(settings.database_path) as store:
        gate = await store.gate(project.name, 2)
    params = gate["details"].get("params", {}) if gate else {}
    files = project.checkpoints()
    return Facts(
        epochs=params.get("epochs"),
        preset=params.get("preset"),
        checkpoints=[p.name for p in files],
        rank=params.get("rank"),
        alpha=params.get("alpha"),
        learning_rate=params.get("learning_rate"),
    )


def evidence_of(project: Project) -> list[WeightEvidence]:
    """The strength grid's measurements, if a grid has been drawn (``eval/evidence.json``)."""
    path = project.root / "eval" / "evidence.json"
    if not path.is_file():
        return []
    try:
        return [WeightEvidence(**row) for row in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, TypeError) as err:
        raise UserError(f"{path} is not a list of grid measurements; draw the grid again to rewrite it.") from err


def _lines(d: Diagnosis) -> list[str]:
    return [
        f"What you see: {d.symptom}",
        *([f"What the grid shows: {d.evidence}"] if d.evidence else []),
        f"Likely cause: {d.cause}",
        f"Fix: {d.fix}",
        f"Next step: {d.next_step}",
        f"(from resources/{FAILURE_MODES})",
    ]


def _menu() -> str:
    return "\n".join(f"  {key}: {label}" for key, label in symptoms())


async def cmd_diagnose(settings: Settings, args: argparse.Namespace) -> None:
    project = Project.existing(settings, args.name)
    facts = await facts_of(settings, project)
    key = args.symptom
    if args.describe:
        key = match(args.describe)
        if key is None:
            raise UserError(f"I couldn't tell which problem that is. Choose the closest with --symptom:\n{_menu()}")
    if key:
        found = diagnose(key, facts)
        if args.json:
            print(json.dumps({"diagnosis": dataclasses.asdict(found)}, ensure_ascii=False))
        else:
            print("\n".join(_lines(found)))
        return
    suggested = detect(evidence_of(project), facts)
    if args.json:
        menu = [{"key": k, "symptom": label} for k, label in symptoms()]
        print(
            json.dumps({"symptoms": menu, "suggested": [dataclasses.asdict(d) for d in suggested]}, ensure_ascii=False)
        )
        return
    print(f"What does {project.name} do wrong? Choose with --symptom KEY, or describe it with --describe TEXT:")
    print(_menu())
    for d in suggested:
        print()
        print("\n".join(["The grid's evidence suggests this, without being told:", *_lines(d)]))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="what went wrong with a LoRA, why, and what to do next")
    p.add_argument("name", help="project name")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--symptom", metavar="KEY", help="what you see, as one of the listed keys (e.g. burnt)")
    how.add_argument("--describe", metavar="TEXT", help="what you see, in your own words (e.g. 'it looks fried')")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=cmd_diagnose)
