"""The memory estimate's LoRA part per trainer: the per-rank parameter counts are recounted on the real
layer sizes (full-size UNets and SD 1.5's text encoder built on PyTorch's meta device, so no weights and
no download), the built-in trainer's smaller LoRA shows in the estimate and in Gate 2, and the estimate
grows with resolution, batch and rank whichever trainer runs."""

from __future__ import annotations

import argparse
import json
from functools import cache

import pytest
import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.bench_vram_gpu import SDXL_UNET, SDXL_UNET_PARAMETERS
from core.families import Family
from core.intent import LoraType
from core.training import gate2, params, vram
from core.training.builtin import TARGET_MODULES
from core.training.config_commands import add_parsers
from core.training.configs import Backend

# runwayml/stable-diffusion-v1-5 unet/config.json: diffusers' UNet2DConditionModel defaults but for the
# cross-attention width (CLIP ViT-L's 768) and the latent size.
SD15_UNET = {"sample_size": 64, "cross_attention_dim": 768}
SD15_UNET_PARAMETERS = 859_520_964  # the "860M UNet" of CompVis/stable-diffusion
# CLIP ViT-L/14's text model, SD 1.5's text encoder
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
UNETS = {Family.sd15: (SD15_UNET, SD15_UNET_PARAMETERS), Family.sdxl: (SDXL_UNET, SDXL_UNET_PARAMETERS)}


def lora_size(layer: torch.nn.Module) -> int:
    """in + out of a Linear or a 1×1 convolution: a LoRA of rank r on it trains r × this."""
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features + layer.out_features
    return layer.in_channels + layer.out_channels


@cache
def meta_unet(family: Family) -> UNet2DConditionModel:
    config, parameters = UNETS[family]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    assert sum(p.numel() for p in unet.parameters()) == parameters  # the real model's layout
    return unet


def builtin_count(family: Family) -> int:
    """What peft's LoraConfig(target_modules=TARGET_MODULES) adapts: Linears whose name ends in a target."""
    return sum(
        lora_size(m)
        for name, m in meta_unet(family).named_modules()
        if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith(f".{t}") for t in TARGET_MODULES)
    )


def kohya_unet_count(family: Family) -> int:
    """kohya's networks.lora on the UNet: every Linear and 1×1 conv inside a Transformer2DModel."""
    return sum(
        lora_size(layer)
        for block in meta_unet(family).modules()
        if type(block).__name__ == "Transformer2DModel"
        for layer in block.modules()
        if isinstance(layer, torch.nn.Linear) or (isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1))
    )


def kohya_text_encoder_count() -> int:
    """kohya's networks.lora on CLIP: every Linear of its attention and MLP blocks."""
    with torch.device("meta"):
        encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    return sum(
        lora_size(layer)
        for block in encoder.modules()
        if type(block).__name__ in ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
        for layer in block.modules()
        if isinstance(layer, torch.nn.Linear)
    )


def test_builtin_per_rank_counts_match_its_target_modules_on_the_real_unets():
    counted = {family: builtin_count(family) for family in UNETS}
    assert counted == {Family.sd15: 199_296, Family.sdxl: 1_451_520}
    for family in (Family.sd15, Family.sdxl):
        assert vram.lora_parameters_per_rank(family, Backend.builtin) == counted[family]
    assert vram.lora_parameters_per_rank(Family.pony, Backend.builtin) == counted[Family.sdxl]  # SDXL's layers


def test_kohya_per_rank_counts_match_networks_lora_on_the_real_models():
    # SD 1.5: UNet and text encoder (loratrain trains both for SD 1.5); SDXL and Pony: the UNet only.
    assert vram.lora_parameters_per_rank(Family.sd15, Backend.kohya) == kohya_unet_count(Family.sd15) + (
        kohya_text_encoder_count()
    )
    assert vram.lora_parameters_per_rank(Family.sdxl, Backend.kohya) == kohya_unet_count(Family.sdxl)
    assert vram.lora_parameters_per_rank(Family.pony, Backend.kohya) == kohya_unet_count(Family.sdxl)
    # kohya-ss/sd-scripts#695: an SDXL rank-32 LoRA on the image model has about 85 million parameters
    assert 84e6 < 32 * vram.lora_parameters_per_rank(Family.sdxl) < 86e6


def test_default_is_kohya_and_simpletuner_and_ai_toolkit_are_taken_as_kohya_like():
    for family in Family:
        kohya = vram.lora_parameters_per_rank(family, Backend.kohya)
        assert vram.lora_parameters_per_rank(family) == kohya == vram.LORA_PARAMETERS_PER_RANK[family]
        for backend in (Backend.simpletuner, Backend.ai_toolkit, "ai-toolkit"):
            assert vram.lora_parameters_per_rank(family, backend) == kohya
    assert vram.estimate(Family.sdxl, 1024, 1, 16) == vram.estimate(Family.sdxl, 1024, 1, 16, backend="kohya")
    # the built-in trainer cannot train Flux (Gate 2 says so); its estimate still has a number, kohya's
    assert vram.lora_parameters_per_rank(Family.flux, Backend.builtin) == vram.lora_parameters_per_rank(Family.flux)


@pytest.mark.parametrize("family", [Family.sd15, Family.sdxl, Family.pony])
@pytest.mark.parametrize("rank", [4, 16, 64])
def test_builtin_lora_part_is_smaller_than_kohyas_at_the_same_rank(family, rank):
    builtin = vram.estimate(family, 1024, 1, rank, backend=Backend.builtin)
    kohya = vram.estimate(family, 1024, 1, rank, backend=Backend.kohya)
    assert builtin.breakdown["lora_training"] < kohya.breakdown["lora_training"]
    assert builtin.estimate_gb < kohya.estimate_gb
    assert {k: v for k, v in builtin.breakdown.items() if k != "lora_training"} == {
        k: v for k, v in kohya.breakdown.items() if k != "lora_training"
    }


@pytest.mark.parametrize("backend", list(Backend))
@pytest.mark.parametrize("family", list(Family))
def test_estimate_grows_with_resolution_batch_and_rank_for_each_backend(backend, family):
    def gb(**kw):
        settings = {"resolution": 768, "batch": 2, "rank": 16, "backend": backend} | kw
        return vram.estimate(family, **settings).estimate_gb

    assert gb(resolution=512) < gb(resolution=768) < gb(resolution=1024)
    assert gb(batch=1) < gb(batch=2) < gb(batch=4)
    assert gb(rank=8) < gb(rank=16) < gb(rank=64)


def test_gate2_estimates_for_the_chosen_backend():
    chosen = params.defaults(Family.sdxl, LoraType.style, 20).with_overrides(rank=64)
    on = {b: gate2.decide(chosen, b, 80.0).estimate for b in Backend}
    assert on[Backend.builtin].breakdown["lora_training"] < on[Backend.kohya].breakdown["lora_training"]
    assert on[Backend.simpletuner] == on[Backend.ai_toolkit] == on[Backend.kohya]
    assert gate2.estimate_for(chosen, 80.0) == on[Backend.kohya]  # without a backend: kohya's, as before
    assert gate2.estimate_for(chosen, 80.0, Backend.builtin) == on[Backend.builtin]


def test_levers_and_recommended_batch_keep_the_backend():
    """The batch search and the levers re-estimate with the same trainer's LoRA size."""

    def levers(backend: Backend, available_gb: float) -> vram.Estimate:
        return vram.estimate(Family.sdxl, 1024, 1, 128, gradient_checkpointing=False, available_gb=available_gb,
                             backend=backend)  # fmt: skip

    kohya, builtin = levers(Backend.kohya, 14), levers(Backend.builtin, 14)
    assert kohya.recommended_batch == builtin.recommended_batch == 0
    assert len(builtin.levers) < len(kohya.levers)  # the built-in trainer's smaller LoRA fits sooner
    saved = kohya.breakdown["lora_training"] - builtin.breakdown["lora_training"]
    first = [float(e.levers[0].split("(estimate ")[1].split(" GB")[0]) for e in (kohya, builtin)]
    assert first[0] - first[1] == pytest.approx(saved, abs=0.11)
    roomy = {b: levers(b, 40).recommended_batch for b in (Backend.kohya, Backend.builtin)}
    assert roomy[Backend.builtin] > roomy[Backend.kohya] > 0


def _vram_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="loratrain")
    add_parsers(top.add_subparsers(dest="command", required=True))
    return top


def test_vram_command_takes_the_backend_and_keeps_its_json(settings, capsys):
    def run(*extra: str) -> dict:
        argv = ["vram", "--model", "sdxl", "--resolution", "1024", "--rank", "32", "--available", "24", "--json"]
        args = _vram_parser().parse_args([*argv, *extra])
        args.run(settings, args)
        return json.loads(capsys.readouterr().out)

    default, kohya, builtin = run(), run("--backend", "kohya"), run("--backend", "builtin")
    assert default == kohya
    for data in (kohya, builtin):
        assert set(data) == {"estimate_gb", "breakdown", "available_gb", "fits", "recommended_batch"}
    assert builtin["breakdown"]["lora_training"] < kohya["breakdown"]["lora_training"]
    assert run("--backend", "ai-toolkit") == run("--backend", "simpletuner") == kohya
