"""Base-model families loratrain knows, and the facts about each that the dataset phase needs."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class Family(StrEnum):
    sdxl = "sdxl"
    pony = "pony"
    flux = "flux"
    sd15 = "sd15"


class FamilyInfo(BaseModel):
    display: str
    # Native training size: images whose short side is smaller get upscaled and look soft.
    # SD 1.5 was trained at 512 px; SDXL, Pony (an SDXL fine-tune) and Flux at 1024 px
    # (kohya-ss/sd-scripts docs/train_SDXL-en.md, docs/flux_train_network.md).
    resolution: int


FAMILIES: dict[Family, FamilyInfo] = {
    Family.sdxl: FamilyInfo(display="SDXL 1.0", resolution=1024),
    Family.pony: FamilyInfo(display="Pony Diffusion V6 XL", resolution=1024),
    Family.flux: FamilyInfo(display="FLUX.1 [dev]", resolution=1024),
    Family.sd15: FamilyInfo(display="Stable Diffusion 1.5", resolution=512),
}
