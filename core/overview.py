"""A project at a glance: what it is, its pictures and captions, the four gates, its latest training run,
its registered LoRA and rented GPUs, and the one thing to do next, in plain words.

It only reads: the gates are judged as ``loratrain gates`` judges them (``readiness``), the run comes from
the store, the LoRA from studio.md. The next step follows the seed's order: pictures, captions, Gates 1–4,
training, then the strength grid and the weight.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from core import intent as intents
from core.cloud.ledger import line as instance_line
from core.dataset.audit import list_files
from core.dataset.snapshot import caption_path
from core.evaluation.records import registered
from core.families import FAMILIES
from core.gates import GateState
from core.grimoire import Project
from core.intent import Intent, with_article
from core.settings import Settings
from core.store import Store
from core.training.configs import default_backend
from core.training.execute import alive
from core.training.progress import ProgressState
from core.training.readiness import readiness

_FIELD = re.compile(r"^- \*\*(.+?)\*\*: ?(.*)$", re.MULTILINE)


class Run(BaseModel):
    status: str  # running, interrupted (its process is gone), finished, failed or cancelled
    started: str
    updated: str
    worker: str  # "host:pid"
    message: str | None  # how it ended, in plain words
    progress: str | None  # the headline of progress.md while it runs


class Overview(BaseModel):
    name: str
    type: str
    model: str
    trigger: str
    target: str  # how many pictures the type needs
    pictures: int
    captioned: int
    gates: list[GateState]
    run: Run | None
    lora: dict[str, str] | None  # its fields in studio.md, when registered
    cloud: list[str]  # the rented GPUs of this project still running, one line each
    next: str


async def overview(settings: Settings, project: Project, store: Store) -> Overview:
    intent = intents.load(project)
    pictures = list_files(project.dataset_dir) if project.dataset_dir.is_dir() else []
    captioned = sum(caption_path(path).is_file() for path, _ in pictures)
    states = await readiness(settings, project, store)
    latest = await store.latest_run(project.name)
    run = _run(latest, project) if latest else None
    lora = registered(settings.grimoire).get(project.name)
    rented = [instance_line(i) for i in await store.instances("RUNNING") if i["project"] == project.name]
    step = next_step(project.name, intent, len(pictures), captioned, states, run, lora, project.exists("eval.md"))
    return Overview(name=project.name, type=str(intent.type), model=FAMILIES[intent.family].display,
                    trigger=intent.trigger, target=str(intent.target), pictures=len(pictures), captioned=captioned,
                    gates=states, run=run, lora=lora, cloud=rented, next=step)  # fmt: skip


def _run(run: dict, project: Project) -> Run:
    interrupted = run["status"] == "running" and not alive(run)
    running = run["status"] == "running" and not interrupted
    return Run(status="interrupted" if interrupted else run["status"], started=_when(run["started_at"]),
               updated=_when(run["updated_at"]), worker=run["worker"], message=run["details"].get("message"),
               progress=_headline(project) if running else None)  # fmt: skip


def _when(stamp: str) -> str:
    """'2026-11-29T19:40:12+00:00' → '2026-11-29 19:40 UTC'."""
    return stamp.replace("T", " ")[:16] + " UTC"


def _headline(project: Project) -> str | None:
    """progress.md's state as the trainer last wrote it: 'Training pots — epoch 3/6 ▓▓▓▓░░ 50% · ~2 min left'."""
    if not project.exists("progress.md"):
        return None
    fields = dict(_FIELD.findall(project.read("progress.md")))
    epoch, epochs = _of(fields.get("Epoch", ""))
    step, steps = _of(fields.get("Step", ""))
    state = ProgressState(name=project.name, backend=fields.get("Trainer", ""), epoch=epoch or 0, epochs=epochs,
                          step=step or 0, total_steps=steps)  # fmt: skip
    left = fields.get("Remaining", "unknown")
    return state.headline() + ("" if left == "unknown" else f" · ~{left} left")


def _of(text: str) -> tuple[int | None, int | None]:
    """'3 of 6' → (3, 6); '3 of ?' → (3, None)."""
    found = re.fullmatch(r"(\d+) of (\d+|\?)", text.strip())
    if not found:
        return None, None
    return int(found[1]), int(found[2]) if found[2].isdigit() else None


def next_step(name: str, intent: Intent, pictures: int, captioned: int, states: list[GateState], run: Run | None,
              lora: dict[str, str] | None, evaluated: bool) -> str:  # fmt: skip
    """The one thing to do next, with its command; ``evaluated``: the strength grid has been drawn."""
    if run and run.status == "running":
        return f"Wait: {name} is training. `loratrain cancel {name}` stops it and keeps its last checkpoint."
    if run and run.status == "finished":
        if lora:
            weight = lora.get("Recommended weight", "?")
            return f"Done: {name} is in studio.md at weight {weight}; put `{intent.trigger}` in a prompt to use it."
        if evaluated:
            return ("Choose a weight from the strength grid (eval.md), then record it: "
                    f"`loratrain register {name} --weight W`.")  # fmt: skip
        return (f"Choose a weight: `loratrain eval {name}` draws the strength grid, then "
                f"`loratrain register {name} --weight W` records the weight you pick.")  # fmt: skip
    blocking = next((s for s in states if s.state != "passed"), None)
    if blocking is None:
        if run:  # failed, cancelled or interrupted
            return f"Train again: `loratrain train {name}` (it picks up from the last checkpoint, if one was saved)."
        return f"Train: `loratrain train {name}` (it shows the plan and asks before it starts)."
    if blocking.number == 1 and pictures < intent.target.low:
        have = f"{pictures} so far; " if pictures else ""
        return (
            f"Add pictures: {have}{with_article(intent.type)} needs {intent.target} (`loratrain add {name} PATH...`)."
        )
    if blocking.number == 1 and captioned < pictures:
        return f"Write captions: `loratrain caption {name}` ({captioned} of {pictures} pictures have one)."
    what, command = {
        1: ("check the dataset", f"loratrain report {name}"),
        2: ("choose the training settings", f"loratrain config {name} --backend {default_backend(intent.family)}"),
        3: ("check this machine", f"loratrain env {name}"),
        4: ("run a few real training steps", f"loratrain dryrun {name}"),
    }[blocking.number]
    step = f"Gate {blocking.number} ({blocking.name}): {what}: `{command}`"
    if blocking.state == "failed":
        step += f" — last time it found: {blocking.why.rstrip('.')}"
    elif blocking.state == "stale":
        step += f" — {blocking.why}"
    if blocking.number == 3:
        step += f". No GPU here? Rent one: `loratrain cloud offers {name}`"
    return step + "."
