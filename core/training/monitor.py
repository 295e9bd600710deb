"""Watching a training run: any backend's console output becomes typed signals, and ``Monitor`` keeps
the run's state (epoch, losses, checkpoints, failures, anomalies).

kohya, SimpleTuner and ai-toolkit only report through what they print, and the built-in trainer prints
one JSON object a line, so reading the output is the one way to follow all four the same way. The line
formats are those in ``resources/backends/*-adapter.md``. The module stays light (no torch) because the
bot, the worker and the CLI all import it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from statistics import fmean
from typing import Literal

BACKENDS = ("builtin", "kohya", "simpletuner", "ai-toolkit")


@dataclass(frozen=True, slots=True)
class Header:
    """How long the run will be, as the backend announces it."""

    total_steps: int | None
    epochs: int | None


@dataclass(frozen=True, slots=True)
class Step:
    step: int
    total_steps: int | None
    epoch: int | None
    loss: float | None
    seconds_per_step: float | None
    vram_gb: float | None = None


@dataclass(frozen=True, slots=True)
class EpochEnd:
    """An epoch finished; ``loss`` is the mean of its step losses."""

    epoch: int
    epochs: int | None
    loss: float | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    path: str
    epoch: int | None
    step: int | None


@dataclass(frozen=True, slots=True)
class OutOfMemory:
    """The GPU ran out of memory: ``skipped`` when the backend dropped the batch and carried on."""

    text: str
    skipped: bool


@dataclass(frozen=True, slots=True)
class Failure:
    """The run failed or is useless; ``message`` is written for the artist."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Finished:
    path: str | None


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: Literal["plateau", "divergence", "explosion"]
    message: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The trainer stopped on request (the artist's Cancel), after finishing its step."""

    message: str


Signal = Header | Step | EpochEnd | Checkpoint | OutOfMemory | Failure | Finished | Anomaly | Stopped

PLATEAU = "Loss hasn't changed in 5 epochs — the model may have stopped learning"
DIVERGENCE = "Loss is increasing — something may be wrong"
EXPLOSION = "The loss became NaN (not a number) — training broke down; stopping to diagnose"

OUT_OF_MEMORY = (
    "The graphics card ran out of memory. Lower the batch size or the resolution, or turn on gradient checkpointing."
)
NAN_LOSS = (
    "The loss became NaN (not a number): training broke down. "
    "A lower learning rate, or bf16 instead of fp16, usually fixes it."
)
NAN_LATENTS = (
    "The picture encoder produced NaN (not a number) for a picture, as SDXL's encoder does in fp16. "
    "Use bf16, or turn on no_half_vae."
)
NO_DATA = (
    "The trainer found no pictures to learn from. Check that the dataset folder holds the pictures "
    "and that the settings point to it."
)
KILLED = (
    "The training process was stopped from outside: usually the computer ran out of memory (RAM), "
    "or someone stopped it. When that happens the log just stops, without an error message."
)

# Plateau: the last six epoch means (five epochs of change) lie within 1% of their mean. Deliberately
# strict: SD LoRA loss is noisy, and a false "stopped learning" costs more than a late one.
PLATEAU_EPOCHS = 6
PLATEAU_TOLERANCE = 0.01
# Divergence: three rises in a row, ending more than 10% above the lowest epoch mean so far.
DIVERGENCE_RISES = 3
DIVERGENCE_MARGIN = 0.10


def detect_anomalies(epoch_losses: list[float]) -> list[Anomaly]:
    """Anomalies in a series of per-epoch mean losses, oldest first.

    - explosion: any value is NaN or infinite (nothing else is judged then);
    - plateau: the last 6 values vary by less than 1% of their mean (max - min < 0.01 x mean);
    - divergence: the loss rose 3 epochs in a row and the last value is more than 10% above the lowest.

    Ordinary noisy-but-falling SD LoRA loss (about 0.05-0.15, wobbling a few percent) triggers neither:
    its range over six epochs is wider than 1%, and it never ends far above its lowest point.
    """
    if not all(math.isfinite(x) for x in epoch_losses):
        return [Anomaly("explosion", EXPLOSION)]
    found = []
    last = epoch_losses[-PLATEAU_EPOCHS:]
    if len(last) == PLATEAU_EPOCHS and max(last) - min(last) < PLATEAU_TOLERANCE * abs(fmean(last)):
        found.append(Anomaly("plateau", PLATEAU))
    rising = epoch_losses[-DIVERGENCE_RISES - 1 :]
    if (
        len(rising) == DIVERGENCE_RISES + 1
        and all(a < b for a, b in pairwise(rising))
        and rising[-1] > (1 + DIVERGENCE_MARGIN) * min(epoch_losses)
    ):
        found.append(Anomaly("divergence", DIVERGENCE))
    return found


# --- parsing one line ------------------------------------------------------------------------------

# A tqdm frame after its description: "  12%|█▏  | 240/2000 [05:12<38:10,  1.30s/it, postfix]".
_BAR = (
    r"\s*\d+%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s*\[[^<\]]*<[^,\]]*,"
    r"\s*(?P<rate>[\d.]+)\s*(?P<unit>it/s|s/it)(?P<rest>.*)$"
)
KOHYA_BAR = re.compile(r"^\s*steps:" + _BAR)
SIMPLETUNER_BAR = re.compile(r"^\s*(?:Epoch (?P<epoch>\d+)/(?P<epochs>\d+),?\s*)?Steps:" + _BAR)
AI_TOOLKIT_BAR = re.compile(r"^\s*[^|:]+:" + _BAR)  # the description is the job's name

TOTAL_STEPS = re.compile(r"(?i)total optimization steps[^:=\d]*[:=]\s*(\d+)")
NUM_EPOCHS = re.compile(r"(?i)num epochs[^:=\d]*[:=]\s*(\d+)")
OOM_SKIP = re.compile(r"# OOM during training step, skipping batch")
FATAL_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|OOM during training step \d+ times in a row")

KOHYA_EPOCH = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")
KOHYA_SAVE = re.compile(r"saving checkpoint: (.+?)\s*$")
KOHYA_EPOCH_FILE = re.compile(r"-(\d{6})\.(?:safetensors|ckpt|pt)$")
KOHYA_STEP_FILE = re.compile(r"-step(\d{8})\.(?:safetensors|ckpt|pt)$")
KOHYA_NO_CAPTIONS = re.compile(r"No caption file found for (\d+) images")
SIMPLETUNER_SAVE = re.compile(r"(?i)\bsav(?:e|es|ed|ing)\b.*?(?P<path>[^\s'\"]*checkpoint-(?P<step>\d+))")
SIMPLETUNER_DONE = re.compile(r"(?i)\btraining[_ ](?:is |has )?(?:complete|completed|finished)\b")
AI_TOOLKIT_SAVE = re.compile(r"Saved checkpoint to (.+?)\s*$")
AI_TOOLKIT_STEP_FILE = re.compile(r"_(\d{9})\.safetensors$")
AI_TOOLKIT_DONE = re.compile(r"^\s*-\s*[1-9]\d* completed jobs?\s*$")


def _number(value: object) -> float | None:
    try:
        return float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    except ValueError:
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bar(match: re.Match[str], loss_key: str, epoch: int | None = None) -> Step:
    rate = float(match["rate"])
    seconds = rate if match["unit"] == "s/it" else (1 / rate if rate else None)
    loss = re.search(loss_key + r"\s*([^\s,\]]+)", match["rest"])
    return Step(int(match["step"]), int(match["total"]), epoch, _number(loss[1]) if loss else None, seconds)


def _common(line: str) -> list[Signal]:
    """Lines every text backend can print: out-of-memory, NaN latents."""
    if OOM_SKIP.search(line):
        return [OutOfMemory(line.strip(), skipped=True)]
    if FATAL_OOM.search(line):
        return [OutOfMemory(line.strip(), skipped=False), Failure("out_of_memory", OUT_OF_MEMORY)]
    if "NaN detected in latents" in line:
        return [Failure("nan_loss", NAN_LATENTS)]
    return []


def _header(line: str) -> list[Signal]:
    if total := TOTAL_STEPS.search(line):
        return [Header(int(total[1]), None)]
    if epochs := NUM_EPOCHS.search(line):
        return [Header(None, int(epochs[1]))]
    return []


def _kohya(line: str) -> list[Signal]:
    if bar := KOHYA_BAR.match(line):
        return [_bar(bar, "avr_loss=")]
    if found := _common(line) or _header(line):
        return found
    if epoch := KOHYA_EPOCH.match(line):
        # kohya prints "epoch E/N" as epoch E begins, so it means epoch E-1 has ended.
        number, epochs = int(epoch[1]), int(epoch[2])
        return [EpochEnd(number - 1, epochs, None)] if number > 1 else [Header(None, epochs)]
    if save := KOHYA_SAVE.search(line):
        path = save[1]
        by_epoch, by_step = KOHYA_EPOCH_FILE.search(path), KOHYA_STEP_FILE.search(path)
        return [Checkpoint(path, int(by_epoch[1]) if by_epoch else None, int(by_step[1]) if by_step else None)]
    if line.strip() == "model saved.":
        return [Finished(None)]
    if "No data found" in line:
        return [Failure("no_data", NO_DATA)]
    if (captions := KOHYA_NO_CAPTIONS.search(line)) or "neither caption file nor class tokens are found" in line:
        pictures = f"{captions[1]} pictures" if captions else "some pictures"
        return [
            Failure(
                "captions_missing",
                f"The trainer found no caption files for {pictures} and is training without captions. "
                "The caption file ending is probably wrong (it should be .txt).",
            )
        ]
    return []


def _simpletuner(line: str) -> list[Signal]:
    if bar := SIMPLETUNER_BAR.match(line):
        epoch = int(bar["epoch"]) if bar["epoch"] else None
        step = _bar(bar, "step_loss=", epoch)
        return [Header(None, int(bar["epochs"])), step] if bar["epochs"] else [step]
    if found := _common(line) or _header(line):
        return found
    if save := SIMPLETUNER_SAVE.search(line):
        return [Checkpoint(save["path"], None, int(save["step"]))]
    if SIMPLETUNER_DONE.search(line):
        return [Finished(None)]
    if "No images were discovered by the bucket manager" in line:
        return [Failure("no_data", NO_DATA)]
    return []


def _ai_toolkit(line: str) -> list[Signal]:
    # Only the bar with the loss in its postfix is training; model loading and sampling draw bars too.
    if (bar := AI_TOOLKIT_BAR.match(line)) and "loss:" in bar["rest"]:
        return [_bar(bar, r"\bloss:")]
    if found := _common(line):
        return found
    if save := AI_TOOLKIT_SAVE.search(line):
        path = save[1]
        if step := AI_TOOLKIT_STEP_FILE.search(path):
            return [Checkpoint(path, None, int(step[1]))]
        return [Checkpoint(path, None, None), Finished(path)]  # the final save has no step in its name
    if AI_TOOLKIT_DONE.match(line):
        return [Finished(None)]
    if "Error running job:" in line:
        detail = line.split("Error running job:", 1)[1].strip()
        return [Failure("crashed", f"The trainer stopped with an error: {detail}")]
    return []


def _builtin(line: str) -> list[Signal]:
    if not line.lstrip().startswith("{"):
        return []
    try:
        event = json.loads(line)
    except ValueError:
        return []
    if not isinstance(event, dict):
        return []
    kind, epoch, epochs = event.get("event"), _int(event.get("epoch")), _int(event.get("epochs"))
    if kind == "start":
        header: list[Signal] = [Header(_int(event.get("total_steps")), epochs)]
        resumed = _int(event.get("resumed_from_epoch"))
        return header + [EpochEnd(resumed, epochs, None)] if resumed else header
    if kind == "step" and (step := _int(event.get("step"))) is not None:
        seconds = _number(event.get("seconds_per_step"))
        elapsed = _number(event.get("elapsed_s"))
        if seconds is None and elapsed is not None and step:
            seconds = elapsed / step  # the average so far: includes loading, so it errs long
        loss = _number(event.get("loss"))
        return [Step(step, _int(event.get("total_steps")), epoch, loss, seconds, _number(event.get("vram_gb")))]
    if kind == "epoch" and epoch is not None:
        return [EpochEnd(epoch, epochs, _number(event.get("loss")))]
    if kind == "checkpoint" and event.get("path"):
        return [Checkpoint(str(event["path"]), epoch, _int(event.get("step")))]
    if kind == "done":
        return [Finished(str(event["path"]) if event.get("path") else None)]
    if kind == "stopped":
        return [Stopped(str(event.get("message") or "Training was stopped at your request."))]
    if kind == "error":
        error, message = str(event.get("kind") or "crashed"), str(event.get("message") or "Training failed.")
        oom: list[Signal] = [OutOfMemory(message, skipped=False)] if error == "out_of_memory" else []
        return oom + [Failure(error, message)]
    return []


_PARSERS: dict[str, Callable[[str], list[Signal]]] = {
    "builtin": _builtin,
    "kohya": _kohya,
    "simpletuner": _simpletuner,
    "ai-toolkit": _ai_toolkit,
}


def parse_line(backend: str, line: str) -> list[Signal]:
    """The signals in one line of ``backend``'s output (one line: no ``\\r`` or ``\\n`` inside).

    A step whose loss is NaN or infinite also yields a ``nan_loss`` failure, whatever the backend.
    """
    if backend not in _PARSERS:
        raise ValueError(f"Unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    signals = _PARSERS[backend](line)
    if any(isinstance(s, Step) and s.loss is not None and not math.isfinite(s.loss) for s in signals):
        signals.append(Failure("nan_loss", NAN_LOSS))
    return signals


# --- the run's state -------------------------------------------------------------------------------

LINE_BREAK = re.compile(r"[\r\n]")  # tqdm redraws its bar with "\r", so both end a line
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TRACEBACK = "Traceback (most recent call last)"
EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")
KILLED_CODES = (-9, 137)  # SIGKILL, as Python reports it and as a shell does: usually the kernel's OOM killer


class Monitor:
    """The state of one run, fed with its output as it arrives.

    ``feed`` returns the signals found, with what the monitor knows filled in (a kohya step's epoch, a
    checkpoint's step, an epoch's mean loss), plus any anomaly; a signal that changes nothing (a repeated
    failure, a header saying what was known) is not returned again. The first failure is kept as the
    cause: what follows it (the launcher's own error, a second traceback) is its consequence.
    """

    def __init__(self, backend: str, epochs: int | None = None, total_steps: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown training backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
        self.backend = backend
        self.epochs = epochs
        self.total_steps = total_steps
        self.epoch: int | None = None
        self.step = 0
        self.losses: list[float] = []
        self.epoch_losses: dict[int, float] = {}
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.seconds_per_step: float | None = None
        self.vram_gb: float | None = None
        self.checkpoints: list[Checkpoint] = []
        self.oom_skips = 0
        self.failure: Failure | None = None
        self.finished: Finished | None = None
        self.anomalies: list[Anomaly] = []
        self.stopped: Stopped | None = None
        self._buffer = ""
        self._open_epoch = 1  # the epoch whose step losses are being collected
        self._pending: list[float] = []  # ... and those losses
        self._loss_step = 0  # the step the last recorded loss belongs to
        self._in_traceback = False
        self._crash: str | None = None  # a traceback's last line that no progress came after

    @property
    def status(self) -> Literal["running", "finished", "failed"]:
        return "failed" if self.failure else "finished" if self.finished else "running"

    def remaining_s(self) -> float | None:
        """Seconds left at the current pace, if the pace and the length of the run are known."""
        if self.seconds_per_step is None or not self.total_steps:
            return None
        return max(0, self.total_steps - self.step) * self.seconds_per_step

    def feed(self, chunk: str) -> list[Signal]:
        """Read more output; a line cut off at the end of ``chunk`` waits for the rest."""
        *lines, self._buffer = LINE_BREAK.split(self._buffer + chunk)
        return [signal for line in lines for signal in self._line(line)]

    def close(self) -> list[Signal]:
        """The output has ended: read what is left, and a traceback nothing came after is the crash."""
        line, self._buffer = self._buffer, ""
        signals = self._line(line)
        if self._crash and not self.finished:
            signals += self._fail(Failure("crashed", f"The trainer stopped with an error: {self._crash}"))
        return signals

    def exited(self, code: int) -> list[Signal]:
        """The process ended with ``code``. A killed process leaves no message, so the code is the only clue."""
        line, self._buffer = self._buffer, ""
        signals = self._line(line)
        if code in KILLED_CODES:
            signals += self._fail(Failure("killed", KILLED))
        signals += self.close()
        if code != 0:
            if not self.stopped:
                signals += self._fail(
                    Failure("crashed", f"The trainer stopped with error code {code}; the end of its log may say why.")
                )
        elif not self.failure:
            signals += self._finish(Finished(None))
        return signals

    # --- one line, one signal ---

    def _line(self, line: str) -> list[Signal]:
        line = ANSI.sub("", line)
        if not line.strip():
            return []
        if line.startswith(TRACEBACK):
            self._in_traceback = True
        elif self._in_traceback and not line[0].isspace() and EXCEPTION.match(line.strip()):
            self._in_traceback, self._crash = False, line.strip()
        return [out for signal in parse_line(self.backend, line) for out in self._apply(signal)]

    def _apply(self, signal: Signal) -> list[Signal]:
        match signal:
            case Header():
                return self._header(signal)
            case Step():
                return self._step(signal)
            case EpochEnd():
                return self._epoch_end(signal)
            case Checkpoint():
                return self._checkpoint(signal)
            case OutOfMemory(skipped=True):
                self.oom_skips += 1
                return [signal]
            case OutOfMemory():
                return [] if self.failure else [signal]
            case Failure():
                return self._fail(signal)
            case Finished():
                return self._finish(signal)
            case Anomaly():
                return self._anomaly(signal)
            case Stopped():
                self.stopped = signal
                return [signal]

    def _header(self, header: Header) -> list[Signal]:
        new = Header(header.total_steps or self.total_steps, header.epochs or self.epochs)
        if (new.total_steps, new.epochs) == (self.total_steps, self.epochs):
            return []
        self.total_steps, self.epochs = new.total_steps, new.epochs
        return [new]

    def _step(self, step: Step) -> list[Signal]:
        if step.step < self.step:
            return []  # an old frame redrawn: nothing new
        signals: list[Signal] = []
        self.total_steps = step.total_steps or self.total_steps
        self.seconds_per_step = step.seconds_per_step if step.seconds_per_step is not None else self.seconds_per_step
        self.vram_gb = step.vram_gb if step.vram_gb is not None else self.vram_gb
        epoch = step.epoch or self._epoch_of(step.step) or self._open_epoch
        if epoch > self._open_epoch:  # SimpleTuner renames its bar, ai-toolkit has no epochs: a new one began
            if self._pending:
                signals += self._epoch_end(EpochEnd(self._open_epoch, self.epochs, None))
            self._open_epoch = epoch
        self.epoch = max(self.epoch or 0, epoch)
        self.step, self._crash = step.step, None  # progress after a traceback: it was not fatal
        signals.append(replace(step, epoch=epoch, total_steps=self.total_steps))
        if step.loss is None:
            return signals
        if step.step == self._loss_step and self.losses:  # the same step redrawn, now with its own loss
            self.losses[-1] = step.loss
            if self._pending:
                self._pending[-1] = step.loss
        else:
            self.losses.append(step.loss)
            self._pending.append(step.loss)
            self._loss_step = step.step
        self.first_loss = self.losses[0]
        self.last_loss = step.loss
        if not math.isfinite(step.loss):
            signals += self._anomaly(Anomaly("explosion", EXPLOSION))
        return signals

    def _epoch_of(self, step: int) -> int | None:
        """ai-toolkit counts steps only: its epochs are equal slices of the run, when both sizes are known."""
        if self.backend != "ai-toolkit" or not self.epochs or not self.total_steps:
            return None
        return min(self.epochs, max(1, math.ceil(step * self.epochs / self.total_steps)))

    def _epoch_end(self, end: EpochEnd) -> list[Signal]:
        if end.epoch in self.epoch_losses:
            return []
        loss = end.loss if end.loss is not None else fmean(self._pending) if self._pending else None
        self._pending = []
        self._open_epoch = max(self._open_epoch, end.epoch + 1)
        self.epoch = max(self.epoch or 0, end.epoch)
        self.epochs = end.epochs or self.epochs
        signals: list[Signal] = [EpochEnd(end.epoch, self.epochs, loss)]
        if loss is not None:
            self.epoch_losses[end.epoch] = loss
            for anomaly in detect_anomalies([self.epoch_losses[e] for e in sorted(self.epoch_losses)]):
                signals += self._anomaly(anomaly)
        return signals

    def _checkpoint(self, checkpoint: Checkpoint) -> list[Signal]:
        if any(c.path == checkpoint.path for c in self.checkpoints):
            return []
        epoch = checkpoint.epoch if checkpoint.epoch is not None else self.epoch
        step = checkpoint.step if checkpoint.step is not None else self.step or None
        self.checkpoints.append(Checkpoint(checkpoint.path, epoch, step))
        return [self.checkpoints[-1]]

    def _fail(self, failure: Failure) -> list[Signal]:
        if self.failure:
            return []
        self.failure = failure
        return [failure]

    def _finish(self, finished: Finished) -> list[Signal]:
        if self.finished:
            return []
        signals: list[Signal] = []
        if self._pending:  # the last epoch has no "next epoch" line to close it
            signals += self._epoch_end(EpochEnd(self._open_epoch, self.epochs, None))
        self.finished = Finished(finished.path or (self.checkpoints[-1].path if self.checkpoints else None))
        return signals + [self.finished]

    def _anomaly(self, anomaly: Anomaly) -> list[Signal]:
        if any(a.kind == anomaly.kind for a in self.anomalies):
            return []
        self.anomalies.append(anomaly)
        return [anomaly]
