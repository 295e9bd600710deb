"""A run's progress at a glance: one state, rendered as ``progress.md`` (the record), as the
terminal's line and as the text of the one Discord message that is edited in place."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel

from core.grimoire import Project
from core.training.monitor import Monitor

Status = Literal["starting", "training", "finished", "failed", "cancelled"]


class ProgressState(BaseModel):
    name: str
    backend: str
    status: Status = "starting"
    epoch: int = 0
    epochs: int | None = None
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    first_loss: float | None = None
    vram_gb: float | None = None
    vram_total_gb: float | None = None
    elapsed_s: float = 0.0
    remaining_s: float | None = None
    checkpoints: list[str] = []  # file names, oldest first
    memory_recoveries: list[str] = []  # each out-of-memory adjustment, in plain words
    oom_skips: int = 0  # batches a trainer skipped after running out of memory (ai-toolkit)
    anomalies: list[str] = []
    message: str | None = None  # how it ended, in plain words

    @property
    def share(self) -> float:
        if self.total_steps:
            return min(1.0, self.step / self.total_steps)
        return min(1.0, self.epoch / self.epochs) if self.epochs else 0.0

    def follow(self, monitor: Monitor, started: float) -> None:
        """Take what the monitor has seen so far."""
        self.epoch, self.step = monitor.epoch or 0, monitor.step or 0
        self.epochs = monitor.epochs or self.epochs
        self.total_steps = monitor.total_steps or self.total_steps
        self.loss, self.first_loss = monitor.last_loss, monitor.first_loss
        self.elapsed_s = time.monotonic() - started
        self.remaining_s = monitor.remaining_s()
        self.oom_skips = monitor.oom_skips
        self.anomalies = [a.message for a in monitor.anomalies]
        if self.status == "starting" and self.step:
            self.status = "training"

    def title(self) -> str:
        """'Training mirastyle — epoch 9/15' (an adapter draws its own bar beside it)."""
        where = f"epoch {self.epoch}/{self.epochs}" if self.epochs else f"step {self.step}/{self.total_steps or '?'}"
        return f"Training {self.name} — {where}"

    def headline(self) -> str:
        """'Training mirastyle — epoch 9/15 ▓▓▓▓▓▓▓▓▓▓▓▓░░░░░░░░ 60%'."""
        filled = round(20 * self.share)
        return f"{self.title()} {'▓' * filled}{'░' * (20 - filled)} {round(100 * self.share)}%"

    def details(self) -> str:
        """'loss 0.0712 (started 0.0891) · VRAM 18.2 / 24.0 GB · 27 min elapsed · ~18 min left' and
        'checkpoints: epoch 5 · memory recoveries: 0'."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}" + (f" (started {self.first_loss:.4f})" if self.first_loss else ""))
        if self.vram_gb is not None:
            parts.append(f"VRAM {self.vram_gb:.1f}" + (f" / {self.vram_total_gb:.1f}" if self.vram_total_gb else "")
                         + " GB")  # fmt: skip
        parts.append(f"{duration(self.elapsed_s)} elapsed")
        if self.remaining_s is not None and self.status == "training":
            parts.append(f"~{duration(self.remaining_s)} left")
        saved = ", ".join(self.checkpoints) or "none yet"
        recoveries = len(self.memory_recoveries) + self.oom_skips
        return " · ".join(parts) + f"\ncheckpoints: {saved} · memory recoveries: {recoveries}"

    def markdown(self) -> str:
        lines = [
            f"# Progress: {self.name}",
            "",
            f"- **Status**: {self.status.upper()}" + (f" — {self.message}" if self.message else ""),
            f"- **Trainer**: {self.backend}",
            f"- **Epoch**: {self.epoch} of {self.epochs or '?'}",
            f"- **Step**: {self.step} of {self.total_steps or '?'}",
            f"- **Loss**: {_loss(self.loss)} now, {_loss(self.first_loss)} at the start",
            f"- **Graphics memory**: {_gb(self.vram_gb)} used of {_gb(self.vram_total_gb)}",
            f"- **Elapsed**: {duration(self.elapsed_s)}",
            f"- **Remaining**: {duration(self.remaining_s) if self.remaining_s is not None else 'unknown'}",
            "",
            "## Checkpoints",
            *([f"- {c}" for c in self.checkpoints] or ["- None yet."]),
            "",
            "## Out-of-memory recoveries",
            *([f"- {r}" for r in self.memory_recoveries] or ["- None."]),
            *(
                [f"- {self.oom_skips} batch(es) skipped by the trainer after running out of memory."]
                if self.oom_skips
                else []
            ),  # fmt: skip
            "",
            "## Warnings",
            *([f"- {a}" for a in self.anomalies] or ["- None."]),
            "",
        ]
        return "\n".join(lines)

    def write(self, project: Project) -> None:
        project.write("progress.md", self.markdown())


def duration(seconds: float) -> str:
    """'45 s', '27 min', '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _gb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f} GB"
