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

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from core import intent as intents
from core.environment.probe import gpu_memory_used_gb
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
from core.training.retries import Attempt, diagnosis, with_memory_retries

WRITE_EVERY_S = 5.0  # progress.md and the progress message: often enough to watch, not a write per step
CANCEL_POLL_S = 1.0  # how often a running trainer looks for the artist's Cancel
HEARTBEAT_S = 30.0  # how often a run says it is alive
ALIVE_S = 120.0  # a "running" run not heard from for this long was left behind by a worker that died
THIS_WORKER = f"{socket.gethostname()}:{os.getpid()}"


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


async def train(settings: Settings, project: Project, store: Store, report: Report, fresh: bool = False,
                job: str | None = None) -> Result:  # fmt: skip
    """Train ``project`` to its LoRA, or to a clear failure. The gates are checked again first. ``job`` is
    the queue job running it: a retry of a job whose run already ended returns that run's result, unless
    the run was only interrupted (its worker stopped and put the job back in the queue): that run resumes."""
    previous = await store.latest_run(project.name)
    if previous and previous["status"] != "running" and job and job in previous["jobs"] and not _interrupted(previous):
        return _result_of(previous, project)
    if previous and previous["status"] == "running" and alive(previous):
        raise UserError(f"{project.name} is already training (last heard from at {previous['updated_at']}); "
                        f"stop it first with `loratrain cancel {project.name}` or the Cancel button.")  # fmt: skip
    blocked = refusal(await readiness(settings, project, store))
    if blocked:
        raise UserError(blocked)
    config = (await store.gate(project.name, 2))["details"]
    backend, files = Backend(config["backend"]), [Path(f) for f in config["files"]]
    fingerprint = gate2.fingerprint(files)
    resume = not fresh and _resumable(previous, fingerprint, project)
    if resume:
        await report(Note(text=f"Picking up where the last run stopped: {_saved(project)}"))
        run_id = previous["id"]
    else:
        _archive(project)
        run_id = f"{project.name}:{datetime.now(UTC):%Y%m%dT%H%M%S}"
    await store.start_run(run_id, project.name, str(backend), fingerprint, job, THIS_WORKER)
    state = ProgressState(name=project.name, backend=str(backend), epochs=config["params"]["epochs"],
                          vram_total_gb=(await store.gate(project.name, 3))["details"].get("vram_gb"))  # fmt: skip
    live = _Live(project, store, report, run_id, backend, files, state)
    batch = (await store.gate(project.name, 4))["details"]["config"]["batch_size"]
    state.write(project)
    await report(state)
    try:
        attempt = await with_memory_retries(backend, files, project, intents.load(project).family,
                                            Run(batch_size=batch, resume=resume), live.log, live.new_monitor,
                                            live.on_signals, live.should_stop, live.adjusted)  # fmt: skip
    except asyncio.CancelledError:  # the queue aborted the job: the trainer is stopped, say what is kept
        await live.conclude("cancelled", f"Training was stopped. {_saved(project)}", None, batch)
        raise
    return await live.end(attempt)


class _Live:
    """One run as it happens: what its signals mean for the artist and the record."""

    def __init__(self, project: Project, store: Store, report: Report, run_id: str, backend: Backend,
                 files: list[Path], state: ProgressState) -> None:  # fmt: skip
        self.project, self.store, self.report, self.run_id = project, store, report, run_id
        self.backend, self.files, self.state = backend, files, state
        self.log = project.root / "logs" / "train.log"
        self.curve = project.root / "eval" / "loss-curve.png"
        self.started = time.monotonic()
        self.written = self.polled = self.beat = 0.0
        self.cancel = False
        self.monitor = Monitor(str(backend))

    def new_monitor(self) -> Monitor:
        self.monitor = Monitor(str(self.backend), epochs=_epochs(self.backend, self.files))
        return self.monitor

    async def on_signals(self, signals: list[Signal]) -> None:
        self.state.follow(self.monitor, self.started)
        important = False
        for signal in signals:
            if isinstance(signal, Checkpoint):
                self.state.checkpoints = [p.name for p in self.project.checkpoints()]
                curve = _curve(self.monitor, self.curve, self.project.name)
                await self.report(Note(text=f"Checkpoint saved{_at(signal)} (loss curve attached).", ping=True,
                                       picture=curve))  # fmt: skip
            elif isinstance(signal, Anomaly):
                await self.report(Note(text=f"⚠️ {signal.message}", ping=True))
            important = important or isinstance(signal, Checkpoint | Anomaly | EpochEnd | Finished | OutOfMemory)
        if important or time.monotonic() - self.written >= WRITE_EVERY_S:
            self.written = time.monotonic()
            self.state.vram_gb = self.monitor.vram_gb or gpu_memory_used_gb() or self.state.vram_gb
            self.state.write(self.project)
            await self.report(self.state)

    async def adjusted(self, message: str) -> None:
        self.state.memory_recoveries.append(message)
        await self.report(Note(text=message))

    async def should_stop(self) -> bool:
        """Whether the artist asked to stop (looked up at most every second); also the run's heartbeat."""
        now = time.monotonic()
        if now - self.beat >= HEARTBEAT_S:
            self.beat = now
            await self.store.touch_run(self.run_id)
        if not self.cancel and now - self.polled >= CANCEL_POLL_S:
            self.polled = now
            self.cancel = await self.store.cancel_requested(self.run_id)
        return self.cancel

    async def end(self, attempt: Attempt) -> Result:
        monitor, project = attempt.monitor, self.project
        lora = _final_lora(project, self.backend, monitor)
        problem = diagnosis(attempt)
        if attempt.stopped and monitor.finished is None:  # a Cancel that came after the end changes nothing
            status: RunStatus = "cancelled"
            message = f"Training was stopped at your request. {_saved(project)}"
        elif problem or lora is None:
            status, message = "failed", f"Training failed — {problem or 'the trainer finished without a LoRA file.'}"
            message += f" {_saved(project)} The trainer's output: {self.log}"
        else:
            status, message = "finished", f"Training finished: {lora.name} is saved in {lora.parent}."
        return await self.conclude(status, message, lora, attempt.run.batch_size)

    async def conclude(self, status: RunStatus, message: str, lora: Path | None, batch: int | None) -> Result:
        """Record how the run ended: progress.md, status.md, the loss curve, the run in SQLite."""
        state, project = self.state, self.project
        state.follow(self.monitor, self.started)
        state.checkpoints = [p.name for p in project.checkpoints()]
        state.status, state.message = status, message
        curve = _curve(self.monitor, self.curve, project.name)
        state.write(project)
        project.write("status.md", _status(project, state, lora))
        details = {"message": message, "lora": str(lora) if lora else None, "checkpoints": state.checkpoints,
                   "curve": curve, "batch_size": batch, "memory_recoveries": state.memory_recoveries}  # fmt: skip
        await self.store.end_run(self.run_id, status, details)
        await self.report(state)
        return _result_of({"status": status, "details": details}, project)


def _result_of(run: dict, project: Project) -> Result:
    details = run["details"]
    return Result(status=run["status"], message=details["message"], lora=details.get("lora"),
                  checkpoints=details.get("checkpoints", []), curve=details.get("curve"),
                  progress=str(project.path("progress.md")))  # fmt: skip


def alive(run: dict) -> bool:
    """Whether some process is still on a "running" run: on this machine, whether its process exists;
    elsewhere, whether its heartbeat is recent."""
    host, _, pid = run["worker"].rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, under another user
        return True
    heard = datetime.fromisoformat(run["updated_at"])
    return (datetime.now(UTC) - heard).total_seconds() < ALIVE_S


def _interrupted(run: dict) -> bool:
    """Cancelled, but not at the artist's request: its job was cancelled (a stopping worker, a time limit)."""
    return run["status"] == "cancelled" and not run["cancel_requested"]


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
    names = [p.name for p in project.checkpoints()]
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
