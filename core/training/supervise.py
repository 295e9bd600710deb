"""One trainer subprocess, watched: its output read as it comes, saved to a log, and turned into
signals by the monitor; stopped cleanly when the artist cancels or the run must end.

The trainer gets its own process group, so stopping it also stops what it started (``accelerate
launch`` runs the training script as a child). A stop is a SIGTERM first — the built-in trainer then
finishes its step and keeps its last checkpoint — and a SIGKILL only if it has not exited after
``GRACE_S``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.training.launch import Launch
from core.training.monitor import Anomaly, Failure, Monitor, Signal

GRACE_S = 30.0  # how long a trainer may take to stop after SIGTERM (a checkpoint may be half-way saved)
POLL_S = 1.0  # how often the wish to stop is looked at while the trainer is quiet

OnSignals = Callable[[list[Signal]], Awaitable[None]]
ShouldStop = Callable[[], Awaitable[bool]]


async def supervise(launch: Launch, monitor: Monitor, log: Path, on_signals: OnSignals, should_stop: ShouldStop,
                    grace_s: float = GRACE_S) -> int:  # fmt: skip
    """Run ``launch`` to its end; returns the exit code (negative: killed by that signal). Output is
    appended to ``log``. A loss that explodes (NaN) stops the run at once: every further step would
    be wasted GPU time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        *launch.argv, cwd=launch.cwd, env={**os.environ, **launch.env}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    stopping = False
    try:
        with log.open("a", encoding="utf-8") as out:
            while True:
                try:
                    chunk = await asyncio.wait_for(process.stdout.read(65536), POLL_S)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    break
                if chunk:
                    text = chunk.decode("utf-8", errors="replace")
                    out.write(text)
                    out.flush()
                    signals = monitor.feed(text)
                    await on_signals(signals)
                    if not stopping and any(_fatal(s) for s in signals):
                        stopping = True
                        _signal(process, signal.SIGTERM)
                if not stopping and await should_stop():
                    stopping = True
                    _signal(process, signal.SIGTERM)
            await on_signals(monitor.close())
        try:
            code = await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            _signal(process, signal.SIGKILL)
            code = await process.wait()
    except BaseException:  # cancelled (arq abort, time limit) or broken: never leave a trainer running
        await stop(process, grace_s)
        raise
    await on_signals(monitor.exited(code))
    return code


def _fatal(item: Signal) -> bool:
    return (isinstance(item, Anomaly) and item.kind == "explosion") or (
        isinstance(item, Failure) and item.kind == "nan_loss"
    )


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # it has already gone


async def stop(process: asyncio.subprocess.Process, grace_s: float = GRACE_S) -> None:
    """SIGTERM the trainer's group, then SIGKILL it if it is still there after ``grace_s``."""
    if process.returncode is not None:
        return
    _signal(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), grace_s)
    except TimeoutError:
        _signal(process, signal.SIGKILL)
        await process.wait()
