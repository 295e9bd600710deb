"""Graphics memory of SDXL LoRA training, measured, beside ``core.training.vram.estimate``. Needs an NVIDIA GPU.

Run from the repository root on a machine with CUDA: ``.venv/bin/python -m benchmarks.bench_vram_gpu``
(``--help`` for options). Without CUDA it says so and exits 0, having measured nothing.

No download: the UNet is built from SDXL 1.0's own configuration (``SDXL_UNET`` below, the values of
``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json``) with random weights, checked against
SDXL's parameter count (2,567,463,684), and stored in bf16. Each run then trains as the built-in
trainer does (``core.training.builtin``): LoRA from peft on ``to_q``/``to_k``/``to_v``/``to_out.0``,
LoRA weights in fp32 under bf16 autocast, noise-prediction MSE on 1024 px latents (128 × 128) with
random text embeddings (batch × 77 × 2048, pooled 1280, six time ids), gradient clipping, AdamW —
8-bit from bitsandbytes when it is installed. The model is rebuilt for every run, and the peak counter
reset once it sits on the card, so each peak is one run's weights, LoRA, optimiser state, gradients and
working memory. A run that runs out of memory is recorded as such.

The peak is ``torch.cuda.max_memory_allocated()``: the tensors PyTorch held at the worst moment. It does
not see the CUDA context and kernels or the allocator's unused reserve, which the estimate's 1.5 GB
"overhead" part stands for, nor the VAE and text encoders, which a run with cached latents and text
outputs keeps off the card (the estimate still counts the VAE's 0.17 GB). ``max_memory_reserved()``
and the card's used memory right after the steps (``mem_get_info``, the figure nvidia-smi shows,
other processes included) are printed beside it.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import sys
import time
from pathlib import Path

import diffusers
import peft
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from peft import LoraConfig

from core.families import Family
from core.training.builtin import TARGET_MODULES
from core.training.params import Optimizer
from core.training.vram import estimate, lora_parameters_per_rank

GB = 1e9
RESOLUTION = 1024
TEXT_TOKENS = 77
TARGET_ERROR = 0.15  # the estimate should land within ±15% of the measured peak
SEED = 0
COMMAND = ".venv/bin/python -m benchmarks.bench_vram_gpu"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (diffusers' UNet2DConditionModel arguments;
# the keys it leaves at their defaults are written out too, so nothing depends on diffusers' defaults).
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 2048,  # CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280) hidden states, concatenated
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),  # SDXL's config names the head count so; each head is 64 wide
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids × 256 + the pooled text embedding (1280)
}
SDXL_UNET_PARAMETERS = 2_567_463_684
TIME_IDS = 6  # original height and width, crop top and left, target height and width


def text_widths(config: dict) -> tuple[int, int]:
    """(hidden width, pooled width) of the text conditioning a UNet with ``config`` takes."""
    pooled = config["projection_class_embeddings_input_dim"] - TIME_IDS * config["addition_time_embed_dim"]
    return config["cross_attention_dim"], pooled


def build_unet(config: dict, device: torch.device, dtype: torch.dtype) -> UNet2DConditionModel:
    """Random weights (diffusers' own initialisation, fixed seed), built on ``device``, stored in ``dtype``."""
    torch.manual_seed(SEED)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype=dtype)


def make_optimizer(name: Optimizer, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if name is Optimizer.adamw8bit:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=1e-4, weight_decay=1e-2)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)


def default_optimizer() -> Optimizer:
    """8-bit AdamW when bitsandbytes is installed (what loratrain recommends), else AdamW."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return Optimizer.adamw
    return Optimizer.adamw8bit


def train_steps(
    config: dict,
    resolution: int,
    batch: int,
    rank: int,
    checkpointing: bool,
    steps: int,
    optimizer: Optimizer,
    device: torch.device,
) -> dict:
    """Build, add the LoRA, train ``steps`` steps; seconds per step, trained parameters and, on CUDA, memory."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16
    unet = build_unet(config, device, dtype)
    base_parameters = sum(p.numel() for p in unet.parameters())
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank / 2, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    )
    cast_training_params(unet, dtype=torch.float32)  # LoRA weights learn in fp32, as in the built-in trainer
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    width, pooled_width = text_widths(config)
    side = resolution // 8
    time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(SEED)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # the fp32 copy the model was built in is gone: start the count here
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        latents, noise = randn(batch, 4, side, side), randn(batch, 4, side, side)
        timesteps = torch.randint(0, 1000, (batch,), device=device, generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        added = {"text_embeds": randn(batch, pooled_width), "time_ids": time_ids.expand(batch, TIME_IDS)}
        with torch.autocast(device.type, dtype=dtype):
            pred = unet(noisy, timesteps, randn(batch, TEXT_TOKENS, width), added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    result = {
        "base_parameters": base_parameters,
        "lora_parameters": sum(p.numel() for p in params),
        "step_s": seconds,
        "loss": loss.item(),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        result |= {
            "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB,
            "card_used_gb": (total - free) / GB,
        }
    return result


def measure(batch: int, rank: int, checkpointing: bool, steps: int, optimizer: Optimizer) -> dict:
    """One run on the first CUDA device beside its estimate; an out-of-memory run is kept, marked ``oom``."""
    device = torch.device("cuda", 0)
    run = {"batch": batch, "rank": rank, "gradient_checkpointing": checkpointing, "oom": False}
    try:
        run |= train_steps(SDXL_UNET, RESOLUTION, batch, rank, checkpointing, steps, optimizer, device)
    except torch.OutOfMemoryError:
        run |= {"oom": True, "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB}
    gc.collect()
    torch.cuda.empty_cache()
    if run.get("base_parameters", SDXL_UNET_PARAMETERS) != SDXL_UNET_PARAMETERS:
        raise SystemExit(f"the UNet has {run['base_parameters']:,} parameters, not SDXL's {SDXL_UNET_PARAMETERS:,}")
    # The runs train as the built-in trainer does, so the estimate is the built-in trainer's.
    guess = estimate(Family.sdxl, RESOLUTION, batch, rank, optimizer, "bf16", checkpointing, True, backend="builtin")
    run |= {"estimate_gb": guess.estimate_gb, "estimate_breakdown": guess.breakdown}
    if not run["oom"]:
        error = guess.estimate_gb / run["peak_allocated_gb"] - 1
        run |= {"error": error, "within_target": abs(error) <= TARGET_ERROR}
        later = run["step_s"][1:]
        run["mean_step_s"] = sum(later) / len(later)
    return run


def machine() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = None
    return {
        "gpu": props.name,
        "gpu_memory_gb": props.total_memory / GB,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bnb,
        "python": platform.python_version(),
    }


def gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def row(run: dict) -> list[str]:
    """One run as table cells: batch, rank, checkpointing, peak, reserved, card, estimate, error, step."""
    if run["oom"]:
        measured = [f"OOM (> {run['peak_allocated_gb']:.2f})", "–", "–"]
        error, step = "–", "–"
    else:
        measured = [gb(run["peak_allocated_gb"]), gb(run["peak_reserved_gb"]), gb(run["card_used_gb"])]
        error = f"{run['error']:+.1%}" + ("" if run["within_target"] else " !")
        step = f"{run['mean_step_s']:.3f}"
    on = "on" if run["gradient_checkpointing"] else "off"
    return [str(run["batch"]), str(run["rank"]), on, *measured, f"{run['estimate_gb']:.2f}", error, step]


HEADER = ["batch", "rank", "checkpointing", "peak allocated (GB)", "peak reserved (GB)", "card used (GB)"]
HEADER += ["estimate (GB)", "error", "s/step"]
VERDICT = {True: "met", False: "NOT met", None: "not measured (every run ran out of memory)"}


def lora_lines(figures: dict) -> list[str]:
    """Trained LoRA parameters per rank, beside what the estimate assumes for SDXL on the built-in trainer."""
    counted = {run["rank"]: run["lora_parameters"] for run in figures["runs"] if "lora_parameters" in run}
    return [
        f"rank {rank}: {n / 1e6:.1f} M LoRA parameters trained (the estimate assumes "
        f"{lora_parameters_per_rank(Family.sdxl, 'builtin') * rank / 1e6:.1f} M)"
        for rank, n in sorted(counted.items())
    ]


def print_report(figures: dict) -> None:
    m, s = figures["machine"], figures["settings"]
    print(
        f"machine: {m['gpu']} ({m['gpu_memory_gb']:.1f} GB), CUDA {m['cuda']}, torch {m['torch']}, "
        f"diffusers {m['diffusers']}, peft {m['peft']}, bitsandbytes {m['bitsandbytes'] or 'not installed'}"
    )
    print(
        f"\nSDXL UNet ({SDXL_UNET_PARAMETERS:,} parameters, bf16), LoRA on {'/'.join(TARGET_MODULES)}, "
        f"{s['resolution']} px ({s['resolution'] // 8}x{s['resolution'] // 8} latents), {s['optimizer']}, "
        f"{s['steps']} steps a run; estimate with cached text-encoder outputs:"
    )
    widths = [5, 4, 13, 19, 18, 14, 13, 9, 7]
    print("  " + " ".join(h[:w].rjust(w) for h, w in zip(HEADER, widths, strict=True)))
    for run in figures["runs"]:
        print("  " + " ".join(c.rjust(w) for c, w in zip(row(run), widths, strict=True)))
    for line in lora_lines(figures):
        print(f"  {line}")
    print(f"  error = estimate / peak allocated - 1; '!' marks one outside ±{TARGET_ERROR:.0%}")
    verdict = VERDICT[figures["target_met"]]
    print(f"  target: every estimate within ±{TARGET_ERROR:.0%} of the measured peak -> {verdict}")


def markdown(figures: dict, argv: list[str]) -> str:
    m, s = figures["machine"], figures["settings"]
    lines = [
        f"## Measured {figures['date']} on {m['gpu']} ({m['gpu_memory_gb']:.1f} GB)",
        "",
        f"- **Command:** `{' '.join([COMMAND, *argv])}`",
        f"- **Software:** CUDA {m['cuda']}, torch {m['torch']}, diffusers {m['diffusers']}, peft {m['peft']}, "
        f"bitsandbytes {m['bitsandbytes'] or 'not installed'}, Python {m['python']}",
        f"- **Runs:** SDXL UNet in bf16, {s['resolution']} px, {s['optimizer']}, {s['steps']} steps each; "
        f"estimate with cached text-encoder outputs. {'; '.join(lora_lines(figures))}.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---:"] * len(HEADER)) + "|",
        *("| " + " | ".join(row(run)) + " |" for run in figures["runs"]),
        "",
        f"**Target (every estimate within ±{TARGET_ERROR:.0%} of the peak allocated): "
        f"{VERDICT[figures['target_met']]}.**",
        "",
    ]
    return "\n".join(lines)


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Measure SDXL LoRA training memory on an NVIDIA GPU (random-weight full-size UNet, "
        "1024 px) and compare it with core.training.vram.estimate. Without CUDA it exits 0, measuring nothing."
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps per run, at least 2 (default 3)")
    parser.add_argument("--batches", type=numbers, default="1,2,4", help="comma-separated (default 1,2,4)")
    parser.add_argument("--ranks", type=numbers, default="8,32", help="comma-separated LoRA ranks (default 8,32)")
    parser.add_argument(
        "--optimizer",
        choices=["adamw", "adamw8bit"],
        help="default: adamw8bit when bitsandbytes is installed, else adamw",
    )
    parser.add_argument("--out", type=Path, help="append the results as a Markdown table to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the peak comes once the optimiser's state exists")

    if not torch.cuda.is_available():
        message = (
            f"bench_vram_gpu needs an NVIDIA GPU with CUDA, and torch {torch.__version__} finds none on this "
            "machine; nothing was measured. Run it on a machine with a GPU."
        )
        print(json.dumps({"measured": False, "message": message}) if args.json else message)
        return

    diffusers.utils.logging.set_verbosity_error()  # not the note on casting a built model to bf16, every run
    optimizer = Optimizer(args.optimizer) if args.optimizer else default_optimizer()
    runs = [
        measure(batch, rank, checkpointing, args.steps, optimizer)
        for batch in args.batches
        for rank in args.ranks
        for checkpointing in (True, False)
    ]
    measured = [run for run in runs if not run["oom"]]
    figures = {
        "measured": True,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "settings": {"resolution": RESOLUTION, "optimizer": str(optimizer), "steps": args.steps},
        "runs": runs,
        "target_error": TARGET_ERROR,
        "target_met": all(run["within_target"] for run in measured) if measured else None,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_report(figures)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write("\n" + markdown(figures, sys.argv[1:]))


if __name__ == "__main__":
    main()
