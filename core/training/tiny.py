"""A tiny, random-weight diffusers pipeline with the real SD 1.5 or SDXL layout, built from configs.

Tests, the demo and Gate 4 need a model the built-in trainer can load, train and save a LoRA for, and
that diffusers can load back — without a download. The parts are the real classes (UNet with
cross-attention blocks, SDXL's "text_time" conditioning and two text encoders, an 8× VAE, the DDPM
schedule SD was trained with) with small widths, so every code path the trainer uses runs on a CPU in
seconds. The CLIP tokenizer is written by hand: every byte of byte-level BPE as a token (with and
without CLIP's ``</w>`` word ending) and no merges, plus CLIP's two special tokens, last as in CLIP.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Arch = Literal["sd15", "sdxl"]
SEED = 0
MAX_LENGTH = 77  # CLIP's context length; the pipelines pad every prompt to it
TEXT_WIDTH = 32  # hidden size of each tiny text encoder
TIME_EMBED = 8  # SDXL's addition_time_embed_dim, scaled down


@cache
def _byte_chars() -> tuple[str, ...]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes (``bytes_to_unicode``)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt, then load them the way the pipelines do."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [*_byte_chars(), *(c + "</w>" for c in _byte_chars()), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_WIDTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(scaling_factor: float) -> AutoencoderKL:
    """Four blocks like SD's VAE, so latents are 1/8 of the picture with 4 channels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _scheduler() -> DDPMScheduler:
    """SD 1.5's and SDXL's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _sd15(folder: Path) -> StableDiffusionPipeline:
    tokenizer = _tokenizer(folder / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        # Attention only below full size, as in the tiny SDXL: at 512 px the full-size latents have 4,096
        # positions, and attention over all of them made each CPU step take seconds.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=TEXT_WIDTH,
        norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_vae(0.18215),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(folder: Path) -> StableDiffusionXLPipeline:
    tokenizer = _tokenizer(folder / "tokenizer")
    tokenizer_2 = _tokenizer(folder / "tokenizer_2")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        # six time ids (original size, crop corner, target size), each embedded, plus the pooled text
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        norm_num_groups=32,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(0.13025),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_scheduler(),
    )


def build_tiny_model(folder: Path, arch: Arch) -> Path:
    """Write a tiny ``arch`` pipeline (same weights for the same arch every time) to ``folder``."""
    folder = Path(folder)
    torch.manual_seed(SEED)
    pipe = _sd15(folder) if arch == "sd15" else _sdxl(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def folder_size(folder: Path) -> int:
    """Bytes in all files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
