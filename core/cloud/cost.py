"""What a cloud run will cost before any money is spent, and what it has cost so far.

Rough on purpose and said so: the estimate is the steps × a time per step for the base model on the rented
card, plus a fixed set-up time (start-up, upload, install, the dry run), × the hourly price. The time per
step is scaled from an RTX 4090 by the card's relative speed; the references are public figures
(resources/training/presets.md: Flux, 700 steps in ~41 minutes; kohya's own bar, ~1.3 steps/s for SDXL).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from core.cloud.providers import Offer
from core.families import FAMILIES, Family
from core.training.progress import duration

# Seconds per step at batch 1 on an RTX 4090, at the family's own resolution.
SECONDS_PER_STEP_4090 = {Family.sd15: 0.3, Family.sdxl: 0.8, Family.pony: 0.8, Family.flux: 3.5}
# Training speed relative to an RTX 4090 (the first name found in the card's name counts; unknown: 0.5,
# so an unknown card is never assumed fast).
RELATIVE_SPEED = {
    "H200": 2.0, "H100": 1.9, "B200": 2.5, "5090": 1.3, "A100": 1.15, "L40S": 1.0, "4090": 1.0, "L40": 0.85,
    "4080": 0.75, "6000 Ada": 0.95, "A6000": 0.6, "3090": 0.55, "A40": 0.55, "A5000": 0.45, "4070": 0.5,
    "3080": 0.45, "A10": 0.4, "V100": 0.4, "L4": 0.3, "A4000": 0.3, "T4": 0.15,
}  # fmt: skip
UNKNOWN_SPEED = 0.5
# Disk a rented GPU needs besides the run's own (probe.disk_needs): the image, pip's downloads, the trainers.
BASE_DISK_GB = 30.0


def about(usd: float) -> str:
    """A cost as the artist reads it: "about $0.52", or "under $0.01" for a run too small to price."""
    return f"about ${usd:.2f}" if usd >= 0.01 else "under $0.01"


def relative_speed(gpu: str) -> float:
    return next((speed for name, speed in RELATIVE_SPEED.items() if name.lower() in gpu.lower()), UNKNOWN_SPEED)


class Estimate(BaseModel):
    """The price of one run on one offer, and whether it stays under the spending cap."""

    offer: Offer
    training_s: float
    setup_s: float
    usd: float
    cap_usd: float

    @property
    def within_cap(self) -> bool:
        return self.usd <= self.cap_usd

    def text(self) -> str:
        time = duration(self.training_s + self.setup_s)
        return (f"{self.offer.line()}: about {time} in all (training ~{duration(self.training_s)} plus "
                f"~{duration(self.setup_s)} to set up), so {about(self.usd)}. Your cap per run is "
                f"${self.cap_usd:.2f}.")  # fmt: skip


def estimate(offer: Offer, family: Family, steps: int, batch: int, resolution: int, setup_minutes: float,
             cap_usd: float) -> Estimate:  # fmt: skip
    """Hourly price × (training time + set-up time). Time per step grows with the pixels and the batch."""
    pixels = (resolution / FAMILIES[family].resolution) ** 2
    per_step = SECONDS_PER_STEP_4090[family] * pixels * max(batch, 1) / relative_speed(offer.gpu)
    training, setup = steps * per_step, setup_minutes * 60
    usd = offer.usd_per_hour * (training + setup) / 3600
    return Estimate(offer=offer, training_s=training, setup_s=setup, usd=round(usd, 2), cap_usd=cap_usd)


def spent(usd_per_hour: float, started_at: str, ended_at: str | None = None) -> float:
    """What an instance has cost from its start to its end (or now), at its hourly price."""
    end = datetime.fromisoformat(ended_at) if ended_at else datetime.now(UTC)
    hours = max((end - datetime.fromisoformat(started_at)).total_seconds(), 0) / 3600
    return round(usd_per_hour * hours, 2)
