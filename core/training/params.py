"""Training settings: the three presets, the optimisers, and every parameter with its safe range.

The numbers live once, in the reference files the artist can read: epochs per preset in
``resources/training/presets.md``, safe ranges and defaults in ``resources/training/parameters-guide.md``,
starting learning rates and optimiser memory in ``resources/training/optimizers.md``. This module reads
those tables, so changing a file changes what loratrain does and says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from pydantic import BaseModel, Field

from core import resources
from core.captions.formats import formats
from core.families import FAMILIES, Family
from core.intent import DATASET_TARGETS, LoraType

PRESETS_FILE = "training/presets.md"
GUIDE_FILE = "training/parameters-guide.md"
OPTIMIZERS_FILE = "training/optimizers.md"

# presets.md, "How repeats are chosen": each pass shows the model about this many pictures.
VIEWS_PER_EPOCH = 100


class Preset(StrEnum):
    quick = "quick"
    standard = "standard"
    thorough = "thorough"


class Optimizer(StrEnum):
    adamw8bit = "adamw8bit"
    adamw = "adamw"
    prodigy = "prodigy"
    lion = "lion"


class Scheduler(StrEnum):
    constant = "constant"
    cosine = "cosine"


class Precision(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass(frozen=True)
class SafeRange:
    low: float
    high: float
    default: float
    why: str

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@cache
def preset_epochs() -> dict[Preset, int]:
    """Preset → epochs, from the table "Presets" in presets.md."""
    return {Preset(r["Preset"]): int(r["Epochs"]) for r in resources.table(PRESETS_FILE, "Presets")}


@cache
def safe_ranges() -> dict[str, SafeRange]:
    """Parameter → its safe range, from the table "Safe ranges" in parameters-guide.md."""
    return {
        r["Parameter"]: SafeRange(float(r["Low"]), float(r["High"]), float(r["Default"]), r["Why"])
        for r in resources.table(GUIDE_FILE, "Safe ranges")
    }


@dataclass(frozen=True)
class OptimizerFacts:
    learning_rate: float
    state_bytes: float  # extra memory per trained LoRA parameter
    good_for: str


@cache
def optimizers() -> dict[Optimizer, OptimizerFacts]:
    """Starting learning rate and state memory of each optimiser, from "Choosing" in optimizers.md."""
    rows = {r["Optimizer"].lower(): r for r in resources.table(OPTIMIZERS_FILE, "Choosing")}
    return {
        o: OptimizerFacts(float(rows[o]["Learning rate"]), float(rows[o]["Memory per parameter"]), rows[o]["Good for"])
        for o in Optimizer
    }


def repeats_for(pictures: int) -> int:
    """presets.md: repeats = 100 ÷ pictures, rounded, at least 1 and at most 20, so every set gets about
    the same amount of training per epoch whatever its size."""
    cap = int(safe_ranges()["repeats"].high)
    return max(1, min(cap, round(VIEWS_PER_EPOCH / max(pictures, 1))))


class TrainingParams(BaseModel):
    """One run's settings. Each field's description is the plain-language explanation shown to the
    artist; ``validate`` checks the values against the safe ranges."""

    family: Family
    preset: Preset
    pictures: int = Field(description="How many pictures the LoRA learns from.")
    learning_rate: float = Field(
        description="How big each correction is: too high burns colours and breaks details, too low "
        "learns nothing in the time given."
    )
    text_encoder_lr: float = Field(
        description="How fast the part that reads your prompt learns. It overfits faster than the image "
        "part, so it learns slower, or not at all for SDXL, Pony and Flux."
    )
    epochs: int = Field(description="How many full passes over your pictures; chosen by the preset.")
    repeats: int = Field(
        description="How often each picture appears per pass, chosen from your picture count so every "
        "pass shows about 100 pictures."
    )
    batch_size: int = Field(
        description="How many pictures each step looks at. 1 fits every card; larger needs more memory."
    )
    resolution: int = Field(description="The size pictures are trained at: the size the base model was made for.")
    rank: int = Field(
        description="How much the LoRA can hold. Higher captures more detail but makes a larger file and "
        "can learn unwanted detail."
    )
    alpha: float = Field(description="Scales each change by alpha ÷ rank; half the rank is kohya's recommendation.")
    optimizer: Optimizer = Field(description="The rule that turns each step's feedback into a change.")
    scheduler: Scheduler = Field(
        description="How the learning rate changes over the run: cosine glides down so the last passes "
        "make fine adjustments."
    )
    warmup_ratio: float = Field(
        description="Share of the steps over which the learning rate climbs from zero, so the first "
        "clumsy corrections are small."
    )
    precision: Precision = Field(
        description="16-bit numbers halve memory; bf16 rarely overflows and needs an RTX 30-series card "
        "or newer, fp16 is for older cards."
    )
    gradient_checkpointing: bool = Field(
        description="Recomputes intermediate results instead of keeping them: much less memory for "
        "somewhat slower steps, with no effect on quality."
    )
    caption_dropout: float = Field(
        description="Share of steps that see an empty caption, so the LoRA keeps working with short prompts."
    )
    shuffle_captions: bool = Field(
        description="Reorders the parts of each tag caption every time, keeping the trigger word first."
    )
    keep_tokens: int = Field(1, description="The trigger word stays first when tags are shuffled.")
    seed: int = Field(42, description="Fixes the random choices, so a run can be repeated exactly.")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.pictures * self.repeats / self.batch_size)

    @property
    def total_steps(self) -> int:
        """Pictures × repeats × epochs ÷ batch size (training/training-concepts.md)."""
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return round(self.total_steps * self.warmup_ratio)

    def explain(self, field: str) -> str:
        return type(self).model_fields[field].description or ""

    def with_overrides(self, **changes: object) -> TrainingParams:
        """Apply the artist's overrides (``None`` = keep). A new rank brings alpha along at half of it,
        and a new optimiser its own starting learning rate, unless those were given too."""
        given = {k: v for k, v in changes.items() if v is not None}
        if "rank" in given and "alpha" not in given:
            given["alpha"] = max(1, int(given["rank"]) // 2)
        if "optimizer" in given and "learning_rate" not in given:
            given["learning_rate"] = optimizers()[Optimizer(given["optimizer"])].learning_rate
        return self.model_validate(self.model_dump() | given)


def defaults(
    family: Family,
    lora_type: LoraType,
    pictures: int,
    preset: Preset = Preset.standard,
    optimizer: Optimizer = Optimizer.adamw8bit,
) -> TrainingParams:
    """The settings loratrain starts from, per parameters-guide.md: the family sets resolution,
    text-encoder training and caption shuffling; the picture count sets repeats (with no pictures yet,
    the smallest count the LoRA type needs stands in)."""
    ranges = safe_ranges()
    pictures = pictures or DATASET_TARGETS[lora_type].low
    rank = int(ranges["rank"].default)
    trains_text_encoder = family is Family.sd15
    if optimizer is Optimizer.prodigy:  # Prodigy sizes its own steps: both rates are 1.0 (optimizers.md)
        text_encoder_lr = 1.0 if trains_text_encoder else 0.0
    else:
        text_encoder_lr = ranges["text_encoder_lr"].default if trains_text_encoder else 0.0
    return TrainingParams(
        family=family,
        preset=preset,
        pictures=pictures,
        learning_rate=optimizers()[optimizer].learning_rate,
        text_encoder_lr=text_encoder_lr,
        epochs=preset_epochs()[preset],
        repeats=repeats_for(pictures),
        batch_size=int(ranges["batch_size"].default),
        resolution=FAMILIES[family].resolution,
        rank=rank,
        alpha=max(1, rank // 2),
        optimizer=optimizer,
        scheduler=Scheduler.cosine,
        warmup_ratio=ranges["warmup_ratio"].default,
        precision=Precision.bf16,
        # kohya recommends checkpointing for SDXL (docs/sdxl_train_network.md); SD 1.5 fits without it.
        gradient_checkpointing=family is not Family.sd15,
        caption_dropout=ranges["caption_dropout"].default,
        shuffle_captions=formats()[family][0] == "tags",
    )


def _number(value: float) -> str:
    return f"{value:g}"


def validate(params: TrainingParams) -> list[str]:
    """Every setting outside its safe range, as a plain sentence that says what is safe and why."""
    ranges = safe_ranges()
    problems = []
    values = {
        "learning_rate": params.learning_rate,
        "text_encoder_lr": params.text_encoder_lr,
        "epochs": params.epochs,
        "repeats": params.repeats,
        "batch_size": params.batch_size,
        "resolution": params.resolution,
        "rank": params.rank,
        "alpha": params.alpha,
        "warmup_ratio": params.warmup_ratio,
        "caption_dropout": params.caption_dropout,
    }
    if params.optimizer is Optimizer.prodigy:  # the learning-rate rows are for AdamW-type optimisers
        for name in ("learning_rate", "text_encoder_lr"):
            value = values.pop(name)
            if value not in (0.0, 1.0) or (name == "learning_rate" and value != 1.0):
                problems.append(
                    f"{name.replace('_', ' ')} is {_number(value)}, but Prodigy sets its own step size and "
                    f"needs 1.0 (resources/{OPTIMIZERS_FILE})"
                )
    for name, value in values.items():
        safe = ranges[name]
        if value not in safe:
            problems.append(
                f"{name.replace('_', ' ')} is {_number(value)}, outside the safe range "
                f"{_number(safe.low)}–{_number(safe.high)}: {safe.why} (resources/{GUIDE_FILE})"
            )
    if params.alpha > params.rank:
        problems.append(
            f"alpha ({_number(params.alpha)}) is above the rank ({params.rank}), which magnifies every step; "
            f"use half the rank (resources/{GUIDE_FILE})"
        )
    if params.resolution % 64:
        problems.append(
            f"resolution {params.resolution} is not a multiple of 64, which picture buckets need "
            "(resources/backends/kohya-adapter.md)"
        )
    if params.batch_size > params.pictures:
        problems.append(
            f"batch size {params.batch_size} is larger than your {params.pictures} pictures, so some trainers "
            f"find nothing to train on (resources/{GUIDE_FILE})"
        )
    return problems
