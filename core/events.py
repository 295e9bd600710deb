"""What the worker tells the rest of the system: typed events on a bounded Redis stream.

A worker never talks to Discord. It publishes events; the bot (or the terminal chat) turns them into
replies through the engine. Each event has a stable ``id`` (the job id and the event's step), so a
job that runs twice publishes the same ids and the relay can post each event once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from redis.asyncio import Redis

log = logging.getLogger(__name__)


class _Event(BaseModel):
    id: str
    session: str
    project: str
    job: str  # the job's id: one progress message per run


class JobStarted(_Event):
    kind: Literal["job_started"] = "job_started"
    text: str
    total: int = 3  # steps (or pictures) the job will report progress against


class JobProgress(_Event):
    kind: Literal["job_progress"] = "job_progress"
    text: str
    done: int
    total: int


class JobFailed(_Event):
    kind: Literal["job_failed"] = "job_failed"
    message: str  # plain words for the artist


class PairToDecide(BaseModel):
    a: str
    b: str
    sha_a: str
    sha_b: str
    kind: str
    picture: str  # path of the side-by-side image, inside the project folder


class DatasetChecked(_Event):
    """The result of checking a project's dataset: imports, audit, duplicates and Gate 1."""

    kind: Literal["dataset_checked"] = "dataset_checked"
    imported: list[str]  # one plain line per file that came in (added, skipped or refused)
    audit: list[str]  # the audit in plain words
    pairs: list[PairToDecide]  # duplicate pairs waiting for the artist
    gate_passed: bool
    gate_reasons: list[str]
    gate_fixes: list[str]
    report: str  # path of dataset-report.md
    usable: int
    captioned: int = 0  # usable pictures whose caption starts with the trigger word


class ProposedCaption(BaseModel):
    file: str
    caption: str
    content: list[str]
    style: list[str]
    source: str  # "claude" or "analyzer"
    problem: str | None = None  # why Claude could not caption it, in plain words
    picture: str  # the picture's path, to show beside its caption


class CaptionsProposed(_Event):
    """Sample captions for the artist to approve, adjust or skip before the rest are written."""

    kind: Literal["captions_proposed"] = "captions_proposed"
    samples: list[ProposedCaption]


class CaptionsWritten(_Event):
    """The batch captioning is done."""

    kind: Literal["captions_written"] = "captions_written"
    written: int
    problems: list[str]  # plain sentences for pictures Claude could not caption (the analyzer stood in)


class GateDecided(_Event):
    """Gate 2, 3 or 4 was checked: its decision, in plain words, and the record it wrote."""

    kind: Literal["gate_decided"] = "gate_decided"
    gate: int
    passed: bool
    summary: str
    fixes: list[str]
    record: str | None = None  # config.md, environment.md or status.md


class TrainingProgress(_Event):
    """Where a training run stands: shown as one message edited in place."""

    kind: Literal["training_progress"] = "training_progress"
    headline: str  # "Training mirastyle — epoch 9/15"
    details: str  # loss, memory, time, checkpoints, memory recoveries
    done: int  # epochs (or steps) done
    total: int


class TrainingNote(_Event):
    """A moment in a run worth a message of its own: a checkpoint (with the loss curve), a warning
    about the loss, a memory recovery."""

    kind: Literal["training_note"] = "training_note"
    text: str
    ping: bool = False  # the artist should be notified
    picture: str | None = None


class TrainingFinished(_Event):
    """A run ended: finished with a LoRA, failed with a diagnosis, or stopped at the artist's request."""

    kind: Literal["training_finished"] = "training_finished"
    status: Literal["finished", "failed", "cancelled"]
    message: str
    lora: str | None = None
    curve: str | None = None
    progress: str  # progress.md
    grid_follows: bool = False  # the job that trained also draws the strength grid (a rented GPU does)


class CloudQuote(BaseModel):
    provider: str
    gpu: str
    usd: float  # the whole run's estimate
    text: str  # the offer, the time and the cost in one sentence
    quote: dict  # ``core.cloud.cost.Estimate`` as JSON, what a rental of it starts from


class CloudOffers(_Event):
    """Rented GPUs that fit the run, cheapest run first, each with its estimate; none when nothing fits."""

    kind: Literal["cloud_offers"] = "cloud_offers"
    quotes: list[CloudQuote]
    cap_usd: float
    note: str | None = None  # why there are none, or which provider could not be asked


class InstanceDestroyed(_Event):
    """A rented GPU was destroyed outside its run (the reaper, or a teardown by hand): the artist is told."""

    kind: Literal["instance_destroyed"] = "instance_destroyed"
    text: str


class EvaluationReady(_Event):
    """The strength grid is drawn: the pictures, the evidence beside them, the weights to choose from."""

    kind: Literal["evaluation_ready"] = "evaluation_ready"
    grid: str | None  # None when ComfyUI could not draw it (its workflows were saved; ``note`` says where)
    comparison: list[str]
    suggested: float | None
    options: list[float]
    checkpoints: str | None = None
    can_compare: bool = False
    suggestions: list[str] = []
    note: str | None = None


class LoraRegistered(_Event):
    kind: Literal["lora_registered"] = "lora_registered"
    weight: float
    studio: str


Event = Annotated[
    JobStarted
    | JobProgress
    | JobFailed
    | DatasetChecked
    | CaptionsProposed
    | CaptionsWritten
    | GateDecided
    | TrainingProgress
    | TrainingNote
    | TrainingFinished
    | EvaluationReady
    | LoraRegistered
    | CloudOffers
    | InstanceDestroyed,
    Field(discriminator="kind"),
]
EVENT = TypeAdapter(Event)
Publish = Callable[[Event], Awaitable[None]]


class MemorySink:
    """Events kept in a list: embedded mode and tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)


class RedisStream:
    """Events on one Redis stream, trimmed to about ``maxlen`` entries so it never grows unbounded."""

    def __init__(self, redis: Redis, name: str, maxlen: int = 10_000):
        self.redis, self.name, self.maxlen = redis, name, maxlen

    async def publish(self, event: Event) -> None:
        await self.redis.xadd(self.name, {"event": event.model_dump_json()}, maxlen=self.maxlen, approximate=True)

    async def read(self, after: str, block_ms: int = 5000, count: int = 100) -> list[tuple[str, Event | None]]:
        """Events after stream id ``after`` (waiting up to ``block_ms`` for one), oldest first. An entry
        that is not a valid event (say, a kind from a newer worker) comes back as None, logged, so the
        reader moves past it instead of stalling."""
        found = await self.redis.xread({self.name: after}, count=count, block=block_ms)
        out: list[tuple[str, Event | None]] = []
        for _, entries in found or []:
            for entry_id, fields in entries:
                key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    out.append((key, EVENT.validate_json(fields.get(b"event", fields.get("event", b"")))))
                except ValidationError as err:
                    log.warning("Skipping unreadable event %s on %s: %s", key, self.name, err.errors()[:1])
                    out.append((key, None))
        return out
