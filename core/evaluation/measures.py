"""The evidence measured at each weight of a strength grid: numbers beside the pictures, never a verdict
on the art. Shared by the grid, the sweet-spot comparison and the diagnosis."""

from __future__ import annotations

from dataclasses import dataclass

from core.dataset.likeness import MIN_REGION_SIMILARITY

# Where the numbers start to mean something; the sentences beside the grid and the diagnosis read the
# same thresholds, so they never tell the artist two different things.
VISIBLE = 0.05  # change below this: at a glance the pictures look like the no-LoRA column
COPY = MIN_REGION_SIMILARITY  # as alike as a duplicate: every region of the picture matches a training picture
NOISE = 0.25  # a quarter more fine texture than the same seed without the LoRA: visible grain or speckle
CLIPPED = 0.10  # one pixel in ten more burnt to a channel's limit than without the LoRA


@dataclass(frozen=True)
class WeightEvidence:
    weight: float
    change: float  # 0–1: how far the pictures moved from the no-LoRA column (mean over prompts)
    copying: float  # 0–1: how close the closest generation came to its nearest training picture
    noise: float  # 0–1: high-frequency speckle, relative to the no-LoRA column (0: no more than it)
    clipped: float  # 0–1: share of pixels burnt to pure black or white in any channel
