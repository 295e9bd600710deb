"""A trainer run that recovers from running out of memory, and what its failures mean.

Shared by the dry run (Gate 4) and real training: on out of memory — CUDA's error text, ai-toolkit's
give-up after three skipped batches, or the host's memory killer (exit 137 / signal 9) — the batch
size is halved (the trainer keeps the amount of training comparable) and the run tried again, up to
three times, each change said in plain words.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.families import Family
from core.grimoire import Project
from core.training.configs import Backend
from core.training.launch import Run, batch_size, prepare
from core.training.monitor import Failure, Monitor, OutOfMemory, Signal
from core.training.supervise import OnSignals, ShouldStop, supervise

RETRIES_ON_OOM = 3
DIAGNOSIS = {  # what each failure means, and what to do (resources/training/failure-modes.md)
    "model_not_found": "The base model wasn't found where the config points. Check the path given with "
    "'loratrain config NAME --model PATH' (a diffusers folder or a .safetensors checkpoint).",
    "model_load_failed": "The base model is there but couldn't be loaded: the file may be incomplete or for "
    "another architecture. Download it again, or check it matches the base model family.",
    "caption_missing": "A picture has no caption. Finish the captions ('loratrain caption NAME') first.",
    "captions_missing": "The trainer found pictures without captions: check that every picture has its .txt "
    "caption beside it (the config says caption_extension '.txt').",
    "trigger_missing": "A caption doesn't start with the trigger word. Edit it so the trigger comes first.",
    "no_data": "The trainer found no pictures to train on: check the dataset folder in the config.",
    "out_of_memory": "The graphics card ran out of memory even at batch size 1. Turn on gradient checkpointing, "
    "use the 8-bit optimizer or a lower resolution (resources/environment/vram-calculator.md).",
    "killed": "The trainer was killed without a word, which usually means the computer's own memory (RAM) ran "
    "out. Close other programs, or use a machine with more memory.",
    "nan_loss": "The training loss became NaN (not a number): the learning rate is too high or fp16 overflowed. "
    "Lower the learning rate or use bf16 (resources/training/failure-modes.md).",
    "bad_config": "The training settings file is not usable. Write it again with 'loratrain config NAME'.",
}


@dataclass
class Attempt:
    """How the last try ended."""

    code: int
    monitor: Monitor
    run: Run  # as last tried (the batch size it came down to)
    adjustments: list[str] = field(default_factory=list)  # each memory recovery, in plain words
    out_of_memory: bool = False  # the last try ran out of memory too
    stopped: bool = False  # it was stopped on request


Adjusted = Callable[[str], Awaitable[None]]


async def _ignore(_: object) -> None:
    return None


async def _never() -> bool:
    return False


async def with_memory_retries(
    backend: Backend, files: list[Path], project: Project, family: Family, run: Run, log: Path,
    new_monitor: Callable[[], Monitor], on_signals: OnSignals = _ignore, should_stop: ShouldStop = _never,
    adjusted: Adjusted = _ignore,
) -> Attempt:  # fmt: skip
    """Run the trainer, halving the batch after each out-of-memory failure (up to three times)."""
    run.batch_size = run.batch_size or batch_size(backend, files)
    adjustments: list[str] = []
    while True:
        attempt = await _once(backend, files, project, family, run, log, new_monitor(), on_signals, should_stop)
        attempt.adjustments = adjustments
        if not attempt.out_of_memory or run.batch_size <= 1 or len(adjustments) == RETRIES_ON_OOM:
            return attempt
        smaller = run.batch_size // 2
        message = f"Hit the memory limit — reducing batch size from {run.batch_size} to {smaller} and retrying."
        adjustments.append(message)
        await adjusted(message)
        run.batch_size = smaller
        run.resume = run.resume or not run.steps  # keep whatever a real run saved before it ran out


async def _once(backend: Backend, files: list[Path], project: Project, family: Family, run: Run, log: Path,
                monitor: Monitor, on_signals: OnSignals, should_stop: ShouldStop) -> Attempt:  # fmt: skip
    seen: list[Signal] = []
    stop_asked = False

    async def collect(signals: list[Signal]) -> None:
        seen.extend(signals)
        await on_signals(signals)

    async def asked() -> bool:
        nonlocal stop_asked
        stop_asked = stop_asked or await should_stop()
        return stop_asked

    code = await supervise(prepare(backend, files, project, family, run), monitor, log, collect, asked)
    oom = not stop_asked and (
        any(isinstance(s, OutOfMemory) and not s.skipped for s in seen)
        or any(isinstance(s, Failure) and s.kind in ("out_of_memory", "killed") for s in seen)
    )
    return Attempt(code, monitor, run, out_of_memory=oom, stopped=stop_asked)


def diagnosis(attempt: Attempt) -> str | None:
    """Why the run failed, in plain words with what to do; None when it did not fail."""
    monitor = attempt.monitor
    if attempt.out_of_memory:
        return f"It ran out of memory at batch size {attempt.run.batch_size}. {DIAGNOSIS['out_of_memory']}"
    failure = monitor.failure
    if failure is not None:
        return f"{failure.message} {DIAGNOSIS.get(failure.kind, '')}".strip()
    if attempt.code != 0:
        return f"The trainer stopped after {monitor.step or 0} step(s) without saying why (exit code {attempt.code})."
    return None
