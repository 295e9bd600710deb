"""How much graphics memory a LoRA run needs, part by part (resources/environment/vram-calculator.md).

The estimate is the six parts that file describes: the frozen base model (parameters × bytes of its
format, sizes read from its table "Model sizes"), the LoRA with its gradients and optimiser state (its
size set by the layers the trainer puts a LoRA on: ``lora_parameters_per_rank``), the working space
that grows with latent cells × batch, the text encoders unless their outputs are cached, the VAE, and
CUDA's own overhead. The working space is the least certain part, so its per-cell cost is calibrated on
the published measurements below (``REFERENCE_POINTS``), which the tests check the estimate against; the
dry run (Gate 4) then measures the real peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from core import resources
from core.families import Family
from core.training.configs import Backend
from core.training.params import Optimizer, optimizers

CALCULATOR_FILE = "environment/vram-calculator.md"
GB = 1e9
MARGIN = 1.2  # vram-calculator.md, "The 20% safety margin": estimate × 1.2 must fit
MAX_BATCH = 8  # the top of the batch-size safe range (training/parameters-guide.md)

WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}  # bytes per frozen parameter, by format
# Per trained LoRA parameter, before the optimiser's state: a 16-bit copy, a 32-bit master and its
# gradient, 2 + 4 + 4 bytes (vram-calculator.md part 2, after HF Transformers "Model training anatomy").
LORA_BYTES = 10.0
VAE_PARAMETERS = 0.084e9  # about 84 million (fast.ai forum thread cited in vram-calculator.md)
OVERHEAD_GB = 1.5  # CUDA kernels and PyTorch "can take up 1-2GB" (HF "Model training anatomy")

# Trained LoRA parameters per unit of rank, by trainer and base model. A LoRA on a layer with ``in`` inputs
# and ``out`` outputs trains rank × (in + out) parameters, so each count is the sum of in + out over the
# layers the trainer puts a LoRA on, counted on the real layer sizes (diffusers' UNet2DConditionModel
# built from SD 1.5's and SDXL 1.0's configs on PyTorch's meta device; tests/test_vram.py counts again).
#
# kohya (networks.lora): every Linear and 1×1 convolution inside the UNet's Transformer2DModel blocks:
# attention q/k/v/out, the feed-forward pair and proj_in/proj_out. SDXL: 2,659,840 a rank, the about 85
# million at rank 32 that kohya-ss/sd-scripts#695's file sizes show. SD 1.5: 423,936 in the UNet, plus
# the text encoder, which loratrain trains for SD 1.5 (text_encoder_lr, parameters-guide.md): kohya puts
# a LoRA on every Linear of CLIP ViT-L's 12 attention and MLP blocks, 165,888 a rank, 589,824 in all (a
# rank-128 file of 144 MiB at 2 bytes a parameter). Flux (networks.lora_flux): every linear layer of
# FLUX.1's 19 double and 38 single blocks, width 3072: 4.8 million.
KOHYA_LORA_PARAMETERS_PER_RANK = {
    Family.sd15: 589_824.0,
    Family.sdxl: 2_659_840.0,
    Family.pony: 2_659_840.0,  # an SDXL fine-tune: SDXL's layers
    Family.flux: 4.8e6,
}
# The built-in trainer (core.training.builtin): peft on the UNet's TARGET_MODULES, the attention
# projections to_q/to_k/to_v/to_out.0 only, and no text encoder. It trains no Flux (Gate 2 refuses the
# pairing), so for Flux the estimate falls back to kohya's count.
BUILTIN_LORA_PARAMETERS_PER_RANK = {Family.sd15: 199_296.0, Family.sdxl: 1_451_520.0, Family.pony: 1_451_520.0}
# SimpleTuner's and ai-toolkit's default LoRA layers are not in our notes (resources/backends/): they are
# taken as kohya-like (attention, feed-forward and projections of the transformer blocks), the larger
# count, so the estimate errs toward more memory until someone counts theirs.
LORA_PARAMETERS_PER_RANK_BY_BACKEND = {
    Backend.kohya: KOHYA_LORA_PARAMETERS_PER_RANK,
    Backend.simpletuner: KOHYA_LORA_PARAMETERS_PER_RANK,
    Backend.ai_toolkit: KOHYA_LORA_PARAMETERS_PER_RANK,
    Backend.builtin: BUILTIN_LORA_PARAMETERS_PER_RANK,
}
LORA_PARAMETERS_PER_RANK = KOHYA_LORA_PARAMETERS_PER_RANK  # the default trainer's, kept for older callers


def lora_parameters_per_rank(family: Family, backend: Backend | str = Backend.kohya) -> float:
    """Trained LoRA parameters per unit of rank when ``backend`` trains ``family`` (the tables above)."""
    table = LORA_PARAMETERS_PER_RANK_BY_BACKEND[Backend(backend)]
    return table.get(Family(family), KOHYA_LORA_PARAMETERS_PER_RANK[Family(family)])


# Working space per latent cell ((resolution ÷ 8)² per picture) without checkpointing, in bytes,
# calibrated so the reference points below land in their ranges. Checkpointing keeps about half
# ("30–50% less", HF docs summary in shared research; kohya's 8 GB SDXL figure needs it).
ACTIVATION_BYTES_PER_CELL = {Family.sd15: 730e3, Family.sdxl: 183e3, Family.pony: 183e3, Family.flux: 260e3}
CHECKPOINTING_KEEPS = 0.5


@dataclass(frozen=True)
class ReferencePoint:
    """A published measurement the estimate must land in, with the settings it was made with."""

    family: Family
    resolution: int
    batch: int
    rank: int
    optimizer: Optimizer
    precision: str
    gradient_checkpointing: bool
    cache_text_encoder: bool
    low_gb: float
    high_gb: float
    source: str


REFERENCE_POINTS = (
    ReferencePoint(
        Family.sdxl,
        1024,
        1,
        8,
        Optimizer.adamw8bit,
        "bf16",
        True,
        True,
        8.0,
        10.0,
        "kohya-ss/sd-scripts docs/train_SDXL-en.md: SDXL LoRA, U-Net only, gradient checkpointing, cached "
        "text-encoder outputs and latents, 8-bit optimiser, dim 4–8: 8 GB possible, 10 GB recommended",
    ),
    ReferencePoint(
        Family.sd15,
        512,
        1,
        16,
        Optimizer.adamw8bit,
        "bf16",
        False,
        False,
        6.0,
        8.0,
        "SD 1.5 LoRA at 512 px fits a 6–8 GB card (dataset-eval research notes §6; the HF blog "
        "https://huggingface.co/blog/lora needs about 11 GB without an 8-bit optimiser)",
    ),
    ReferencePoint(
        Family.sd15,
        512,
        1,
        16,
        Optimizer.adamw,
        "fp16",
        False,
        False,
        0.0,
        11.0,
        "https://huggingface.co/blog/lora: SD 1.5 LoRA, diffusers script, 512 px, no 8-bit optimiser: about 11 GB",
    ),
    ReferencePoint(
        Family.flux,
        640,
        1,
        4,
        Optimizer.adamw8bit,
        "bf16",
        True,
        True,
        24.0,
        28.0,
        "https://huggingface.co/blog/flux-qlora: FLUX.1-dev LoRA in bf16, about 512×768, gradient "
        "checkpointing, cached latents and text embeddings, 8-bit AdamW: about 26 GB peak",
    ),
)


@dataclass(frozen=True)
class ModelSize:
    denoiser: float  # parameters
    text_encoders: float


@cache
def model_sizes() -> dict[Family, ModelSize]:
    """Parameter counts from the table "Model sizes" in vram-calculator.md."""
    return {
        Family(r["Family"]): ModelSize(
            float(r["Denoiser parameters (billions)"]) * 1e9, float(r["Text encoder parameters (billions)"]) * 1e9
        )
        for r in resources.table(CALCULATOR_FILE, "Model sizes")
    }


class Estimate(BaseModel):
    estimate_gb: float
    breakdown: dict[str, float]  # part → GB
    available_gb: float | None
    # With the 20% margin; False when the memory is unknown, since Gate 2 cannot pass on a guess.
    fits: bool
    # Largest batch (up to 8) that fits; 0 when not even 1 does; the asked-for batch when memory is unknown.
    recommended_batch: int
    levers: list[str]  # plain next steps, in order, when not even batch 1 fits

    def required_keys(self) -> dict:
        """The JSON the ``vram`` command prints."""
        return self.model_dump(include={"estimate_gb", "breakdown", "available_gb", "fits", "recommended_batch"})


def _parts(
    family: Family,
    resolution: int,
    batch: int,
    rank: int,
    optimizer: Optimizer,
    precision: str,
    gradient_checkpointing: bool,
    cache_text_encoder: bool,
    backend: Backend = Backend.kohya,
) -> dict[str, float]:
    size, weight = model_sizes()[family], WEIGHT_BYTES[precision]
    per_rank = lora_parameters_per_rank(family, backend)
    lora = per_rank * rank * (LORA_BYTES + optimizers()[optimizer].state_bytes)
    cells = (resolution / 8) ** 2 * batch
    activations = ACTIVATION_BYTES_PER_CELL[family] * cells * (CHECKPOINTING_KEEPS if gradient_checkpointing else 1)
    return {
        "base_model": size.denoiser * weight / GB,
        "lora_training": lora / GB,
        "activations": activations / GB,
        "text_encoders": 0.0 if cache_text_encoder else size.text_encoders * weight / GB,
        "vae": VAE_PARAMETERS * weight / GB,
        "overhead": OVERHEAD_GB,
    }


def total(**settings) -> float:
    return sum(_parts(**settings).values())


def _fits(gb: float, available_gb: float | None) -> bool:
    return available_gb is not None and gb * MARGIN <= available_gb


def _levers(settings: dict, available_gb: float) -> list[str]:
    """What to change, in the order vram-calculator.md gives (speed or shuffling first, picture detail
    last), each applied on top of the ones before, with the estimate it leads to."""
    levers, current = [], dict(settings)
    steps = []
    if not current["gradient_checkpointing"]:
        steps.append(
            (
                "gradient_checkpointing",
                True,
                "Turn on gradient checkpointing: it recomputes working results "
                "instead of keeping them, so steps are about 20% slower but quality is unchanged",
            )
        )
    if current["optimizer"] is not Optimizer.adamw8bit:
        steps.append(
            (
                "optimizer",
                Optimizer.adamw8bit,
                "Use the 8-bit AdamW optimiser: it learns like AdamW but keeps "
                "its bookkeeping in a quarter of the memory",
            )
        )
    if not current["cache_text_encoder"]:
        steps.append(
            (
                "cache_text_encoder",
                True,
                "Cache the text encoders' outputs: each caption is read once and the "
                "encoders leave the card, but caption shuffling and dropout stop working",
            )
        )
    for resolution in (768, 512):
        if resolution < current["resolution"]:
            steps.append(
                (
                    "resolution",
                    resolution,
                    f"Train at {resolution} pixels: the working space shrinks with the "
                    "picture's area, at the cost of some fine detail",
                )
            )
    for key, value, why in steps:
        current[key] = value
        gb = total(**current)
        verdict = "fits" if _fits(gb, available_gb) else "still too much"
        levers.append(f"{why} (estimate {gb:.1f} GB; {verdict}).")
        if _fits(gb, available_gb):
            break
    if not _fits(total(**current), available_gb):
        quantised = (
            " or load the base model in 8 or 4 bits (kohya's fp8_base, SimpleTuner's int8/NF4), which this "
            "estimate does not cover"
            if current["family"] is Family.flux
            else ""
        )
        levers.append(
            f"Use a GPU with more memory, such as a rented cloud card, since this card is too small even with "
            f"every saving above{quantised}."
        )
    return levers


def estimate(
    family: Family,
    resolution: int,
    batch: int,
    rank: int,
    optimizer: Optimizer = Optimizer.adamw8bit,
    precision: str = "bf16",
    gradient_checkpointing: bool = True,
    cache_text_encoder: bool = False,
    available_gb: float | None = None,
    backend: Backend | str = Backend.kohya,
) -> Estimate:
    """The memory a run needs, part by part. ``backend`` is the trainer, which decides the LoRA's layers
    (``lora_parameters_per_rank``); without it the estimate is kohya's, as it always was."""
    settings = {
        "family": Family(family),
        "resolution": resolution,
        "rank": rank,
        "optimizer": Optimizer(optimizer),
        "precision": precision,
        "gradient_checkpointing": gradient_checkpointing,
        "cache_text_encoder": cache_text_encoder,
        "backend": Backend(backend),
    }
    parts = _parts(batch=batch, **settings)
    gb = sum(parts.values())
    if available_gb is None:
        recommended, levers = batch, []
    else:
        recommended = max(
            (b for b in range(1, MAX_BATCH + 1) if _fits(total(batch=b, **settings), available_gb)), default=0
        )
        levers = [] if recommended else _levers(settings | {"batch": 1}, available_gb)
    return Estimate(
        estimate_gb=round(gb, 2),
        breakdown={k: round(v, 2) for k, v in parts.items()},
        available_gb=available_gb,
        fits=_fits(gb, available_gb),
        recommended_batch=recommended,
        levers=levers,
    )


def detect_available_gb() -> float | None:
    """Free memory on this machine's first CUDA GPU, or None without one (or without PyTorch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(0)
    return round(free / GB, 2)
