"""The ``monitor`` subcommand: read a training log from any backend and say in plain words how the run
stands (status, epoch, loss, checkpoints, memory recoveries, warnings), or print it as JSON."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from core.errors import UserError
from core.settings import Settings
from core.training.losscurve import draw
from core.training.monitor import BACKENDS, Monitor

# What gives each backend away, tried in this order: the loss in its progress bar first, then lines
# only it prints (a log that stopped before the first step has no bar).
GUESSES = (
    ("builtin", re.compile(r'^\s*\{.*"event"\s*:', re.MULTILINE)),
    ("kohya", re.compile(r"avr_loss=|学習ステップ数|No data found|saving checkpoint: ")),
    ("simpletuner", re.compile(r"step_loss=|Total optimization steps =")),
    ("ai-toolkit", re.compile(r"\blr: \S+ loss: |# OOM during training step|Saved checkpoint to |Error running job: ")),
)


def guess_backend(text: str) -> str:
    for backend, sign in GUESSES:
        if sign.search(text):
            return backend
    raise UserError(
        "I can't tell which trainer wrote this log. Say it with --backend (builtin, kohya, simpletuner or ai-toolkit)."
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summary(monitor: Monitor) -> dict:
    """The run's state as plain data (the ``--json`` output); NaN losses become null."""
    return {
        "backend": monitor.backend,
        "status": monitor.status,
        "epoch": monitor.epoch,
        "epochs": monitor.epochs,
        "step": monitor.step,
        "total_steps": monitor.total_steps,
        "loss": _finite(monitor.last_loss),
        "first_loss": _finite(monitor.first_loss),
        "checkpoints": [{"path": c.path, "epoch": c.epoch, "step": c.step} for c in monitor.checkpoints],
        "oom_skips": monitor.oom_skips,
        "anomalies": [{"kind": a.kind, "message": a.message} for a in monitor.anomalies],
        "failure": {"kind": monitor.failure.kind, "message": monitor.failure.message} if monitor.failure else None,
    }


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"about {minutes / 60:.1f} hours"


def _loss(value: float | None) -> str:
    return "not a number (NaN)" if value is not None and not math.isfinite(value) else f"{value:.4g}"


def describe(monitor: Monitor) -> list[str]:
    """The run's state in plain sentences."""
    if monitor.failure:
        status = f"failed — {monitor.failure.message}"
    elif monitor.finished:
        status = f"finished — the LoRA is saved at {monitor.finished.path}" if monitor.finished.path else "finished"
    else:
        status = "running"
        if monitor.total_steps:
            status += f" — step {monitor.step} of {monitor.total_steps}"
        if left := monitor.remaining_s():
            status += f", {_duration(left)} left"
    lines = [f"Status: {status}"]
    if monitor.epoch is None:
        lines.append("Epoch: not started")
    else:
        lines.append(f"Epoch: {monitor.epoch} of {monitor.epochs}" if monitor.epochs else f"Epoch: {monitor.epoch}")
    if monitor.last_loss is None:
        lines.append("Loss: none reported yet")
    else:
        lines.append(f"Loss: {_loss(monitor.last_loss)} now, {_loss(monitor.first_loss)} at the start")
    lines.append(f"Checkpoints: {len(monitor.checkpoints)} saved")
    for c in monitor.checkpoints:
        where = [f"epoch {c.epoch}"] if c.epoch else []
        where += [f"step {c.step}"] if c.step else []
        lines.append(f"  - {c.path}" + (f" ({', '.join(where)})" if where else ""))
    if monitor.oom_skips:
        lines.append(
            f"Memory recoveries: {monitor.oom_skips} batch{'es' if monitor.oom_skips != 1 else ''} skipped because "
            "the graphics card ran out of memory; training carried on, but it is at the edge of the card's memory."
        )
    for anomaly in monitor.anomalies:
        lines.append(f"Warning: {anomaly.message}")
    return lines


def cmd_monitor(settings: Settings, args: argparse.Namespace) -> None:
    path = Path(args.log)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"I can't read the training log {path}: {err.strerror or err}.") from err
    if args.epochs < 1:
        raise UserError("--epochs must be at least 1: the number of epochs the run was set up for.")
    backend = args.backend or guess_backend(text)
    monitor = Monitor(backend, epochs=args.epochs)
    monitor.feed(text)
    monitor.close()
    if args.curve:
        steps = [c.step for c in monitor.checkpoints if c.step]
        draw(monitor.losses, Path(args.curve), f"Training loss — {path.name}", checkpoints=steps)
    if args.json:
        print(json.dumps(summary(monitor), ensure_ascii=False))
        return
    how = "given" if args.backend else "guessed from its content"
    print(f"Log: {path} ({backend}, {how})")
    for line in describe(monitor):
        print(line)
    if args.curve:
        print(f"Loss curve: {args.curve}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="read a training log (any backend) and say how the run stands")
    p.add_argument("--log", required=True, help="the trainer's console log")
    p.add_argument("--epochs", required=True, type=int, help="how many epochs the run was set up for")
    p.add_argument("--backend", choices=BACKENDS, help="which trainer wrote the log (default: guessed from it)")
    p.add_argument("--json", action="store_true", help="print the state as one JSON object")
    p.add_argument("--curve", metavar="PNG", help="also draw the loss curve into this PNG file")
    p.set_defaults(run=cmd_monitor)
