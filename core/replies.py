"""What the artist did and what to show them: the engine's input and output, transport-neutral.

The Discord bot and the terminal chat translate these to and from their own messages and buttons; the
engine and its phases speak only these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from core.jobs import Job

# What the artist did ---------------------------------------------------------------------------


class Say(BaseModel):
    kind: Literal["say"] = "say"
    text: str


class Upload(BaseModel):
    kind: Literal["upload"] = "upload"
    staged: list[Path]  # files already in the inbox (``core.uploads.stage_upload``)
    refused: list[str] = []  # plain sentences for files refused at the door


class Decide(BaseModel):
    kind: Literal["decide"] = "decide"
    ref: str  # which offered choice
    value: str  # which option
    text: str | None = None  # what the artist typed with it (an adjusted caption)


# What to show ----------------------------------------------------------------------------------


class Text(BaseModel):
    kind: Literal["text"] = "text"
    text: str
    private: bool = False  # only the person who acted should see it
    ping: bool = False  # notify the artist (a checkpoint, a warning, the end of training)


class Option(BaseModel):
    value: str
    label: str


class Choice(BaseModel):
    kind: Literal["choice"] = "choice"
    ref: str
    prompt: str
    options: list[Option]


class Picture(BaseModel):
    kind: Literal["image"] = "image"
    path: str
    caption: str


class Attachment(BaseModel):
    kind: Literal["file"] = "file"
    path: str
    caption: str


class Progress(BaseModel):
    kind: Literal["progress"] = "progress"
    key: str  # one message per key, edited in place
    text: str
    done: int
    total: int
    details: str | None = None  # further lines under the bar (training: loss, memory, time)


Reply = Text | Choice | Picture | Attachment | Progress


class Outcome(BaseModel):
    replies: list[Reply] = []
    jobs: list[Job] = []
