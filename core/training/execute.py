"""Training, the phase where GPU time is spent: refused unless all four gates pass on today's inputs,
run as a subprocess with out-of-memory recovery, followed live, recorded as it goes.

What the artist sees comes out through ``report``: a ``ProgressState`` (one message edited in place,
throttled by the adapter) and ``Note``s for the moments that matter — a checkpoint with its loss
curve, a warning about the loss, a memory recovery, the end. The grimoire gets ``progress.md``
(rewritten atomically, at most every few seconds and at every checkpoint), ``status.md``, the trainer's
log under ``logs/``, the loss curve under ``eval/``; SQLite gets the run, so a Cancel from any process
reaches it and a run whose worker died is resumed from its last checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from core import intent as intents
from core.errors import UserError
from core.families import FAMILIES, Family
from core.gates import GateState
from core.grimoire import Project, copy_atomic
from core.settings import Settings
from core.store import RunStatus, Store
from core.training import gate2, losscurve
from core.training.configs import Backend
from core.training.launch import Run, read_config
from core.training.monitor import Anomaly, Checkpoint, EpochEnd, Finished, Monitor, OutOfMemory, Signal
from core.training.progress import ProgressState, duration
from core.training.readiness import readiness, refusal
from core.training.retries import diagnosis, with_memory_retries

WRITE_EVERY_S = 5.0  # progress.md and the progress message: often enough to watch, not a write per step
CANCEL_POLL_S = 1.0  # how often a running trainer looks for the artist's Cancel


class Note(BaseModel):
    """Something worth telling the artist during a run; ``ping`` when it should reach them."""

    text: str
    ping: bool = False
    picture: str | None = None


class Result(BaseModel):
    status: RunStatus
    message: str
    lora: str | None = None
    checkpoints: list[str] = []
    curve: str | None = None
    progress: str  # the progress.md path


Report = Callable[[ProgressState | Note], Awaitable[None]]


class Plan(BaseModel):
    """What is about to be trained, for the artist's confirmation."""

    pictures: int
    model: str
    backend: str
    preset: str
    total_steps: int
    seconds: float | None  # the dry run's measured time per step × the steps; None when not measured
    gpu: str | None

    def text(self) -> str:
        time_part = f"about {duration(self.seconds)}" if self.seconds else "time unknown (the dry run measured none)"
        where = f" on your {self.gpu}" if self.gpu else ""
        return (f"Ready to train: {self.pictures} pictures, {self.model}, {self.backend}, {self.preset.capitalize()} "
                f"({self.total_steps} steps) — {time_part}{where}.")  # fmt: skip


async def plan(project: Project, store: Store, states: list[GateState]) -> Plan:
    """The confirmation's facts, from the gates' records; raises ``UserError`` naming the gate in the way
    when ``states`` (the ledger, judged where the caller can judge it) do not all pass."""
    blocked = refusal(states)
    if blocked:
        raise UserError(blocked)
    config = (await store.gate(project.name, 2))["details"]
    dry = (await store.gate(project.name, 4))["details"]
    env = (await store.gate(project.name, 3))["details"]
    params = config["params"]
    steps = _total_steps(params, dry["config"]["batch_size"])
    per_step = dry.get("seconds_per_step")
    return Plan(pictures=params["pictures"], model=FAMILIES[Family(params["family"])].display,
                backend=config["backend"], preset=params["preset"], total_steps=steps,
                seconds=per_step * steps if per_step else None, gpu=env.get("gpu"))  # fmt: skip


def _total_steps(params: dict, batch: int) -> int:
    """Pictures × repeats × epochs ÷ batch, at the batch size the dry run could afford."""
    per_epoch = -(-params["pictures"] * params["repeats"] // batch)
    return per_epoch * params["epochs"]


async def train(settings: Settings, project: Project, store: Store, report: Report, fresh: bool = False) -> Result:
    """Train ``project`` to its LoRA, or to a clear failure. The gates are checked again first."""
    blocked = refusal(await readiness(settings, project, store))
    if blocked:
        raise UserError(blocked)
    config = (await store.gate(project.name, 2))["details"]
    backend, files = Backend(config["backend"]), [Path(f) for f in config["files"]]
    fingerprint = gate2.fingerprint(files)
    family = intents.load(project).family
    batch = (await store.gate(project.name, 4))["details"]["config"]["batch_size"]
    previous = await store.latest_run(project.name)
    resume = not fresh and _resumable(previous, fingerprint, project)
    if resume:
        await report(Note(text=f"Picking up where the last run stopped: {_saved(project)}"))
        run_id = previous["id"]
    else:
        _archive(project)
        run_id = f"{project.name}:{datetime.now(UTC):%Y%m%dT%H%M%S}"
    await store.start_run(run_id, project.name, str(backend), fingerprint)

    state = ProgressState(name=project.name, backend=str(backend), epochs=config["params"]["epochs"],
                          vram_total_gb=(await store.gate(project.name, 3))["details"].get("vram_gb"))  # fmt: skip
    started, written, monitor_of = time.monotonic(), [0.0], {}
    log = project.root / "logs" / "train.log"
    curve_path = project.root / "eval" / "loss-curve.png"

    def new_monitor() -> Monitor:
        monitor_of["now"] = Monitor(str(backend), epochs=_epochs(backend, files))
        return monitor_of["now"]

    async def on_signals(signals: list[Signal]) -> None:
        monitor = monitor_of["now"]
        state.follow(monitor, started)
        important = False
        for signal in signals:
            if isinstance(signal, Checkpoint):
                important = True
                state.checkpoints = _checkpoint_names(project)
                curve = _curve(monitor, curve_path, project.name)
                await report(Note(text=f"Checkpoint saved{_at(signal)} (loss curve attached).", ping=True,
                                  picture=curve))  # fmt: skip
            elif isinstance(signal, Anomaly):
                important = True
                await report(Note(text=f"⚠️ {signal.message}", ping=True))
            elif isinstance(signal, OutOfMemory) and signal.skipped:
                important = True
            elif isinstance(signal, EpochEnd | Finished):
                important = True
        if important or time.monotonic() - written[0] >= WRITE_EVERY_S:
            written[0] = time.monotonic()
            state.write(project)
            await report(state)

    async def adjusted(message: str) -> None:
        state.memory_recoveries.append(message)
        await report(Note(text=message))

    last_poll, cancel = [0.0], [False]

    async def should_stop() -> bool:
        if not cancel[0] and time.monotonic() - last_poll[0] >= CANCEL_POLL_S:
            last_poll[0] = time.monotonic()
            cancel[0] = await store.cancel_requested(run_id)
        return cancel[0]

    state.write(project)
    await report(state)
    attempt = await with_memory_retries(backend, files, project, family, Run(batch_size=batch, resume=resume), log,
                                        new_monitor, on_signals, should_stop, adjusted)  # fmt: skip
    monitor = attempt.monitor
    state.follow(monitor, started)
    state.checkpoints = _checkpoint_names(project)
    lora = _final_lora(project, backend, monitor)
    problem = diagnosis(attempt)
    if attempt.stopped and monitor.finished is None:  # a Cancel that came after the end changes nothing
        status: RunStatus = "cancelled"
        message = f"Training was stopped at your request. {_saved(project)}"
    elif problem or lora is None:
        status, message = "failed", f"Training failed — {problem or 'the trainer finished without a LoRA file.'}"
        message += f" {_saved(project)} The trainer's output: {log}"
    else:
        status, message = "finished", f"Training finished: {lora.name} is saved in {lora.parent}."
    state.status, state.message = status, message
    curve = _curve(monitor, curve_path, project.name)
    state.write(project)
    project.write("status.md", _status(project, state, lora))
    await store.end_run(run_id, status, {"message": message, "lora": str(lora) if lora else None,
                                         "checkpoints": state.checkpoints, "batch_size": attempt.run.batch_size,
                                         "memory_recoveries": state.memory_recoveries})  # fmt: skip
    await report(state)
    return Result(status=status, message=message, lora=str(lora) if lora else None, checkpoints=state.checkpoints,
                  curve=curve, progress=str(project.path("progress.md")))  # fmt: skip


def _resumable(previous: dict | None, fingerprint: str, project: Project) -> bool:
    """A run that did not finish (its worker died, it failed or was stopped) with the same settings,
    and something saved to continue from."""
    return (
        previous is not None
        and previous["status"] != "finished"
        and previous["config"] == fingerprint
        and any((project.root / "checkpoints").glob("*"))
    )


def _archive(project: Project) -> None:
    """A fresh start moves the earlier run's files aside: a finished LoRA or checkpoint is never lost."""
    folder = project.root / "checkpoints"
    if folder.is_dir() and any(folder.iterdir()):
        earlier = project.root / "earlier-runs"
        earlier.mkdir(exist_ok=True)
        folder.rename(earlier / datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))


def _saved(project: Project) -> str:
    """Exactly what is kept, in plain words."""
    names = [p.name for p in sorted((project.root / "checkpoints").rglob("*.safetensors"))]
    if not names:
        return "No checkpoint had been saved yet."
    return f"Saved and kept in {project.root / 'checkpoints'}: {', '.join(names)}."


def _epochs(backend: Backend, files: list[Path]) -> int | None:
    """The run's epochs as the trainer counts them (the built-in one counts repeats as epochs)."""
    config = read_config(files[0])
    match backend:
        case Backend.builtin:
            return config["epochs"]
        case Backend.kohya:
            return config.get("max_train_epochs")
        case Backend.simpletuner:
            return config.get("num_train_epochs") or None
        case Backend.ai_toolkit:
            return None  # it counts steps


def _checkpoint_names(project: Project) -> list[str]:
    folder = project.root / "checkpoints"
    return [p.name for p in sorted(folder.rglob("*.safetensors"), key=lambda p: p.stat().st_mtime)]


def _final_lora(project: Project, backend: Backend, monitor: Monitor) -> Path | None:
    """The finished LoRA, at ``checkpoints/{name}.safetensors`` whatever the trainer called it."""
    folder, name = project.root / "checkpoints", project.name
    target = folder / f"{name}.safetensors"
    made = {
        Backend.builtin: target,
        Backend.kohya: target,
        Backend.ai_toolkit: folder / name / f"{name}.safetensors",
        Backend.simpletuner: folder / "pytorch_lora_weights.safetensors",
    }[backend]
    if monitor.finished is None or not made.is_file():
        return None
    if made != target:
        copy_atomic(made, target)
    return target


def _curve(monitor: Monitor, path: Path, name: str) -> str | None:
    if not monitor.losses:
        return None
    marks = [c.step for c in monitor.checkpoints if c.step]
    return str(losscurve.draw(monitor.losses, path, f"Loss while training {name}", marks))


def _at(signal: Checkpoint) -> str:
    return f" at epoch {signal.epoch}" if signal.epoch else f" at step {signal.step}" if signal.step else ""


def _status(project: Project, state: ProgressState, lora: Path | None) -> str:
    word = {"finished": "TRAINED", "failed": "FAILED", "cancelled": "CANCELLED"}.get(state.status, "TRAINING")
    lines = [f"# Status: {project.name}", f"- **Phase**: training — {word}", f"- **Result**: {state.message}"]
    if lora:
        lines.append(f"- **LoRA**: {lora}")
    lines += [f"- **Memory recovery**: {r}" for r in state.memory_recoveries]
    lines.append(f"- **Progress**: {project.path('progress.md')}")
    return "\n".join(lines) + "\n"
