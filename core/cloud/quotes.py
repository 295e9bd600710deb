"""Which rented cards fit a project, and what the run would cost on each: the facts behind the
confirmation the artist gives before any money is spent."""

from __future__ import annotations

import asyncio
import math

from core import intent as intents
from core.cloud.cost import BASE_DISK_GB, Estimate, estimate
from core.cloud.providers import Need, Provider
from core.environment.probe import VRAM_MARGIN, disk_needs, model_size_gb
from core.grimoire import Project
from core.settings import Settings
from core.training.params import TrainingParams


def need(project: Project, details: dict, gpu: str | None = None) -> Need:
    """The card and disk a run with Gate 2's settings needs: the memory estimate with Gate 3's 20% margin, and
    the run's disk (model, pictures, caches, checkpoints) plus the image and installs."""
    params = TrainingParams.model_validate(details["params"])
    disk = sum(item.gb for item in disk_needs(intents.load(project).family, model_size_gb(details.get("model")),
                                               params.pictures))  # fmt: skip
    return Need(vram_gb=round(details["estimate_gb"] * VRAM_MARGIN, 1), disk_gb=math.ceil(disk + BASE_DISK_GB),
                gpu=gpu)  # fmt: skip


async def quotes(settings: Settings, project: Project, details: dict, providers: list[Provider],
                 gpu: str | None = None) -> list[Estimate]:  # fmt: skip
    """Every fitting offer of these providers with its estimate, cheapest run first."""
    wanted = need(project, details, gpu)
    params = TrainingParams.model_validate(details["params"])
    found = []
    for provider in providers:
        for offer in await asyncio.to_thread(provider.offers, wanted):
            offer = offer.model_copy(update={"disk_gb": wanted.disk_gb})  # what the rental asks for
            found.append(estimate(offer, params.family, params.total_steps, params.batch_size, params.resolution,
                                  settings.cloud_setup_minutes, settings.cloud_max_usd))  # fmt: skip
    return sorted(found, key=lambda e: (e.usd, -(e.offer.reliability or 0)))
