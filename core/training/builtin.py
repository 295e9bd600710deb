"""The built-in LoRA trainer: SD 1.5 or SDXL, diffusers + peft, one script from data to safetensors.

Run it as ``python -m core.training.builtin --config CONFIG.json`` (the worker does, so a crash or an
out-of-memory kill never takes the worker down) or call ``train(config)`` in-process (tests). It reads
the way kohya does — pictures with a ``.txt`` caption beside each, trigger word first, aspect-ratio
buckets from ``core.dataset.buckets`` — and trains the way diffusers' ``train_text_to_image_lora``
examples do: frozen model, LoRA on the UNet's attention projections, noise-prediction MSE on latents
cached once. The result is saved with kohya's key names (``lora_unet_…``) so diffusers, ComfyUI and
A1111 all load it.

Progress is one JSON object per line on stdout (``start``, ``step``, ``epoch``, ``checkpoint``, ``done``,
``log``); a failure is one ``error`` line with a ``kind`` the worker can act on and a plain ``message`` for
the artist. With each epoch checkpoint the full training state is saved to ``{output}/state/``, so a run
with ``resume`` continues after a crash, a killed worker or a reboot exactly where that checkpoint was.
SIGTERM (the worker's Cancel) stops the run after the step in progress, with a ``stopped`` line.

Exit codes: 0 done, 1 failed (the ``error`` line says why), 3 stopped on request (``EXIT_STOPPED``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file, save_file

from core.captions.formats import starts_with_trigger
from core.dataset.buckets import bucket_for
from core.dataset.snapshot import caption_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
PIPELINES = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}  # kohya's ss_base_model_version
EXIT_STOPPED = 3  # stopped on request: the last checkpoint and saved state are kept
STOPPED_MESSAGE = "Training was stopped at your request; the last checkpoint is kept."
SPEED_WINDOW = 10  # seconds_per_step is the mean of this many latest steps

Emit = Callable[..., None]


class TrainConfig(BaseModel):
    """One training run. ``max_steps``, when set, wins over ``epochs`` (a dry run uses 2–5)."""

    model_config = ConfigDict(extra="forbid")

    model: Path  # a diffusers folder or a single-file .safetensors/.ckpt checkpoint
    arch: Literal["sd15", "sdxl"]
    dataset: Path  # pictures with a .txt caption beside each
    output: Path
    name: str = "lora"
    trigger: str
    resolution: int = Field(1024, ge=64)
    batch_size: int = Field(1, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    rank: int = Field(16, ge=1)
    alpha: float = Field(8, gt=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = "adamw"
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    shuffle_captions: bool = False
    caption_dropout: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    save_every_n_epochs: int = Field(0, ge=0)  # 0: only the final file
    keep_last: int = Field(3, ge=1)
    resume: bool = False  # continue from the state saved in {output}/state/ when its settings match


@dataclass
class TrainResult:
    steps: int
    path: Path
    losses: list[float]


class TrainingError(Exception):
    """A failure the worker reports as it is: ``kind`` to act on, ``message`` in plain words."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind, self.message = kind, message


class TrainingStopped(Exception):
    """The run was asked to stop (SIGTERM) and did, after a whole step; ``stopped`` was emitted."""


def print_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, ensure_ascii=False), flush=True)


# --- data -----------------------------------------------------------------------------------------


@dataclass
class Example:
    file: str
    caption: str
    latents: torch.Tensor  # (4, h/8, w/8), already multiplied by the VAE's scaling factor
    time_ids: torch.Tensor  # SDXL: original (h, w), crop top-left, target (h, w)


def read_dataset(config: TrainConfig) -> list[tuple[Path, str]]:
    """(picture, caption) pairs; every picture needs a caption that starts with the trigger word."""
    if not config.dataset.is_dir():
        raise TrainingError("dataset_not_found", f"The dataset folder {config.dataset} does not exist.")
    images = sorted(p for p in config.dataset.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise TrainingError("no_images", f"There are no pictures in {config.dataset} to train on.")
    missing = [p.name for p in images if not caption_path(p).is_file()]
    if missing:
        raise TrainingError(
            "caption_missing",
            f"{len(missing)} picture(s) have no caption: {', '.join(missing[:5])}. "
            "Every picture needs a .txt caption beside it, starting with the trigger word.",
        )
    pairs = [(p, caption_path(p).read_text(encoding="utf-8", errors="replace").strip()) for p in images]
    wrong = [p.name for p, c in pairs if not starts_with_trigger(c, config.trigger)]
    if wrong:
        raise TrainingError(
            "trigger_missing",
            f"The caption of {', '.join(wrong[:5])} does not start with the trigger word "
            f"'{config.trigger}' followed by a comma; the trigger word is what calls up the LoRA.",
        )
    return pairs


def load_picture(path: Path) -> Image.Image:
    """RGB, turned upright by its EXIF orientation, transparency laid on white."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, img).convert("RGB")
        return img.convert("RGB")


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover the bucket, then crop its centre; returns the crop and its (top, left)."""
    width, height = bucket
    scale = max(width / img.width, height / img.height)
    resized = img.resize(
        (max(width, round(img.width * scale)), max(height, round(img.height * scale))), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height)), (top, left)


@torch.no_grad()
def cache_latents(pipe, pairs: list[tuple[Path, str]], config: TrainConfig, device) -> list[Example]:
    """Encode every picture once: the VAE is frozen, so its output never changes during training."""
    vae = pipe.vae
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    examples = []
    for path, caption in pairs:
        img = load_picture(path)
        bucket = bucket_for(img.width, img.height, config.resolution)
        crop, (top, left) = fit_to_bucket(img, bucket)
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(device, vae.dtype)
        latents = (dist.mean + dist.std * noise) * vae.config.scaling_factor
        time_ids = torch.tensor([img.height, img.width, top, left, bucket[1], bucket[0]], dtype=torch.float32)
        examples.append(Example(path.name, caption, latents[0].float().cpu(), time_ids))
    return examples


def batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """One epoch: pictures of one bucket per batch (their latents must stack), in random order."""
    by_bucket: dict[tuple[int, ...], list[Example]] = defaultdict(list)
    for example in examples:
        by_bucket[tuple(example.latents.shape)].append(example)
    out = []
    for group in by_bucket.values():
        group = rng.sample(group, len(group))
        out += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(out)
    return out


def training_caption(caption: str, config: TrainConfig, rng: random.Random) -> str:
    """kohya's ``keep_tokens=1`` shuffle (the trigger stays first) and whole-caption dropout."""
    if rng.random() < config.caption_dropout:
        return ""
    first, *rest = [part.strip() for part in caption.split(",")]
    if config.shuffle_captions:
        rng.shuffle(rest)
    return ", ".join([first, *rest])


# --- model ----------------------------------------------------------------------------------------


def load_pipeline(model: Path, arch: Literal["sd15", "sdxl"], dtype: torch.dtype):
    if not model.exists():
        raise TrainingError(
            "model_not_found",
            f"The base model {model} was not found. Check the path, or download the model first.",
        )
    cls = PIPELINES[arch]
    extra = {"dtype": dtype}
    if arch == "sd15":
        extra |= {"safety_checker": None, "requires_safety_checker": False}
    try:
        if model.is_dir():
            return cls.from_pretrained(model, **extra)
        return cls.from_single_file(model, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise TrainingError(
            "model_load_failed",
            f"The base model {model} could not be loaded as {arch.upper()}: {err}",
        ) from err


def encode_prompts(pipe, arch: str, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text embeddings as the pipelines make them; for SDXL also the pooled embedding of encoder 2."""
    if arch == "sd15":
        ids = pipe.tokenizer(
            captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True
        ).input_ids
        return pipe.text_encoder(torch.tensor(ids, device=device))[0], None
    hidden, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
        out = encoder(torch.tensor(ids.input_ids, device=device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
        pooled = out[0]  # text_embeds of the projection encoder (the second one)
    return torch.cat(hidden, dim=-1), pooled


def make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], device, emit: Emit):
    if config.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError as err:
            raise TrainingError(
                "optimizer_missing",
                "The Prodigy optimizer needs the 'prodigyopt' package, which is not installed here. "
                "Install it, or choose AdamW.",
            ) from err
        return Prodigy(params, lr=config.learning_rate, weight_decay=1e-2)
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes

            if device.type == "cuda":
                return bitsandbytes.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=1e-2)
            emit("log", message="The 8-bit optimizer needs a graphics card; using plain AdamW.")
        except ImportError:
            emit("log", message="bitsandbytes is not installed, so using plain AdamW (a little more memory).")
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)


def kohya_state_dict(unet, alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """peft's ``down_blocks.0…to_q.lora_A.weight`` → kohya's ``lora_unet_down_blocks_0…to_q.lora_down.weight``,
    plus one ``….alpha`` scalar per module (kohya scales by alpha / rank when it loads)."""
    out = {}
    for key, tensor in get_peft_model_state_dict(unet).items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor.detach().to("cpu", dtype)
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return {k: v.contiguous() for k, v in out.items()}


def save_lora(unet, config: TrainConfig, path: Path, dtype: torch.dtype) -> Path:
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha),
        "ss_base_model_version": BASE_MODEL_VERSION[config.arch],
        "ss_output_name": config.name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(kohya_state_dict(unet, config.alpha, dtype), str(tmp), metadata=metadata)
    tmp.replace(path)  # a reader never sees half a file
    return path


def prune_checkpoints(config: TrainConfig) -> None:
    """Keep only the newest ``keep_last`` epoch checkpoints (their names sort by epoch)."""
    for old in sorted(config.output.glob(f"{config.name}-epoch*.safetensors"))[: -config.keep_last]:
        old.unlink()


# --- saved state (resume) -------------------------------------------------------------------------

STATE_VERSION = 1
SETTINGS = {  # the settings a saved state is only valid for, with their plain names
    "arch": "model type",
    "model": "base model",
    "rank": "rank",
    "alpha": "alpha",
    "resolution": "resolution",
    "optimizer": "optimizer",
    "dataset": "dataset folder",
    "trigger": "trigger word",
    "learning_rate": "learning rate",
    "seed": "seed",
}  # not the batch size: an out-of-memory retry halves it and resumes at the epoch boundary


class StateMismatch(Exception):
    """The saved state was made with other settings; the message names them in plain words."""


@dataclass
class Training:
    """The live objects of a run: what each step changes, and so what a saved state holds."""

    pipe: Any
    params: dict[str, torch.nn.Parameter]  # the LoRA weights by their peft names, in the optimizer's order
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    rng: random.Random  # batch order, caption shuffles and dropout
    device: torch.device
    dtype: torch.dtype


@dataclass
class SavedState:
    epoch: int  # epochs finished
    batch_size: int
    weights: dict[str, torch.Tensor]
    training: dict[str, Any]  # optimizer, lr_scheduler, python_rng, torch_rng, cuda_rng


def fingerprint(config: TrainConfig) -> dict[str, Any]:
    """``SETTINGS`` as JSON values, with absolute paths (the same run may start from another folder)."""
    values = config.model_dump(mode="json", include=set(SETTINGS))
    return values | {"model": str(config.model.absolute()), "dataset": str(config.dataset.absolute())}


def save_state(folder: Path, config: TrainConfig, run: Training, epoch: int, step: int) -> None:
    """Everything that continues the run after ``epoch``, written beside ``folder`` and then swapped in,
    so a crash while saving leaves the previous state whole, never a half one that gets loaded."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({name: p.detach().cpu().contiguous() for name, p in run.params.items()}, str(tmp / "lora.safetensors"))
    rngs = {"python_rng": run.rng.getstate(), "torch_rng": torch.get_rng_state(), "cuda_rng": None}
    if run.device.type == "cuda":
        rngs["cuda_rng"] = torch.cuda.get_rng_state(run.device)
    training = {"optimizer": run.optimizer.state_dict(), "lr_scheduler": run.lr_scheduler.state_dict(), **rngs}
    torch.save(training, tmp / "training.pt")
    info = {"version": STATE_VERSION, "epoch": epoch, "step": step, "batch_size": config.batch_size}
    info["settings"] = fingerprint(config)
    (tmp / "state.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    for file in tmp.iterdir():  # on disk before the rename makes them the state (a reboot may follow)
        with file.open("rb") as f:
            os.fsync(f.fileno())
    _swap_in(tmp, folder)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by ``tmp`` with renames only. At every moment a whole state is at ``folder``, or,
    between the two renames, at ``.state.old``, where ``latest_state`` looks too."""
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def latest_state(folder: Path) -> Path | None:
    """The saved state, or the previous one when a crash came between ``_swap_in``'s renames."""
    for candidate in (folder, folder.with_name(f".{folder.name}.old")):
        if candidate.is_dir():
            return candidate
    return None


def read_state(folder: Path, config: TrainConfig, run: Training, epochs: int) -> SavedState:
    """Read and check a whole state before anything is restored from it. Raises ``StateMismatch`` when it
    was made with other settings; any other exception means it cannot be read."""
    info = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if info["version"] != STATE_VERSION:
        raise ValueError(f"it is in format {info['version']}, this trainer reads format {STATE_VERSION}")
    saved, now = info["settings"], fingerprint(config)
    changed = [
        f"{name} was {saved.get(key)}, now {now[key]}" for key, name in SETTINGS.items() if saved.get(key) != now[key]
    ]
    if info["epoch"] >= epochs:
        changed.append(f"it was saved after epoch {info['epoch']}, and this run has only {epochs}")
    if changed:
        raise StateMismatch("; ".join(changed))
    weights = load_file(str(folder / "lora.safetensors"))
    if {k: v.shape for k, v in weights.items()} != {k: p.shape for k, p in run.params.items()}:
        raise ValueError("its LoRA weights do not fit this model")
    training = torch.load(folder / "training.pt", map_location="cpu", weights_only=True)
    if set(training["lr_scheduler"]) != set(run.lr_scheduler.state_dict()):
        raise ValueError("its learning-rate schedule is not this trainer's")
    random.Random().setstate(training["python_rng"])  # spare generators: a bad RNG state fails here
    torch.Generator().set_state(training["torch_rng"])
    if run.device.type == "cuda" and training["cuda_rng"] is not None:
        torch.Generator(run.device).set_state(training["cuda_rng"])
    return SavedState(int(info["epoch"]), int(info["batch_size"]), weights, training)


def resume(config: TrainConfig, run: Training, epochs: int, steps_per_epoch: int, emit: Emit) -> int:
    """Restore the saved state when it fits this run; returns the epochs it had finished (0: start over).
    A missing, different or damaged state never stops the training: it starts over, and says why."""
    folder = latest_state(config.output / "state")
    if folder is None:
        emit("log", message="There is no saved progress to resume from, so training starts from the beginning.")
        return 0
    try:
        saved = read_state(folder, config, run, epochs)
        run.optimizer.load_state_dict(saved.training["optimizer"])  # torch checks it all before changing anything
    except StateMismatch as err:
        emit("log", message=f"The saved progress was made with different settings ({err}), so training starts over.")
        return 0
    except Exception as err:  # a damaged file fails in many ways; none of them may stop the training
        emit("log", message=f"The saved progress could not be read ({err}), so training starts over.")
        return 0
    _restore(saved, run)
    if saved.batch_size != config.batch_size:
        step = saved.epoch * steps_per_epoch
        emit(
            "log",
            message=f"The batch size changed from {saved.batch_size} to {config.batch_size} since the progress was "
            f"saved, so training resumes at the start of epoch {saved.epoch + 1} (step {step}).",
        )
        run.lr_scheduler.last_epoch = step - 1  # the schedule counts steps, and there are more or fewer now
        run.lr_scheduler.step()
    return saved.epoch


def _restore(saved: SavedState, run: Training) -> None:
    """Weights, schedule and random generators as they were; the RNGs last, as nothing may draw after."""
    with torch.no_grad():
        for name, param in run.params.items():
            param.copy_(saved.weights[name])
    run.lr_scheduler.load_state_dict(saved.training["lr_scheduler"])
    run.rng.setstate(saved.training["python_rng"])
    torch.set_rng_state(saved.training["torch_rng"])
    if run.device.type == "cuda" and saved.training["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved.training["cuda_rng"], run.device)


# --- training -------------------------------------------------------------------------------------


def train(config: TrainConfig, emit: Emit = print_event, stop: threading.Event | None = None) -> TrainResult:
    """Train and save the LoRA; raises ``TrainingError`` for anything the artist or worker must fix, and
    ``TrainingStopped`` when ``stop`` was set (checked between steps)."""
    try:
        return _train(config, emit, stop or threading.Event())
    except torch.OutOfMemoryError as err:
        raise TrainingError(
            "out_of_memory",
            "The graphics card ran out of memory. Lower the batch size or the resolution, "
            "or turn on gradient checkpointing.",
        ) from err


def _train(config: TrainConfig, emit: Emit, stop: threading.Event) -> TrainResult:
    started = time.monotonic()
    pairs = read_dataset(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    weight_dtype = torch.float32
    if config.mixed_precision != "no":
        if device.type == "cuda":
            weight_dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
        else:
            emit("log", message=f"No graphics card: training in full precision instead of {config.mixed_precision}.")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    pipe = load_pipeline(config.model, config.arch, weight_dtype)
    examples = _prepare(pipe, pairs, config, device)
    params = {name: p for name, p in pipe.unet.named_parameters() if p.requires_grad}

    steps_per_epoch = len(batches(examples, config.batch_size, random.Random(0)))
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = make_optimizer(config, list(params.values()), device, emit)
    warmup = int(config.warmup_ratio * total_steps)
    name = {"cosine": "cosine", "constant": "constant_with_warmup" if warmup else "constant"}[config.scheduler]
    lr_scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    run = Training(pipe, params, optimizer, lr_scheduler, rng, device, weight_dtype)
    done_epochs = resume(config, run, epochs, steps_per_epoch, emit) if config.resume else 0
    step = done_epochs * steps_per_epoch
    resumed = {"resumed_from_epoch": done_epochs, "resumed_step": step} if done_epochs else {}
    emit("start", total_steps=total_steps, epochs=epochs, images=len(examples), device=device.type, **resumed)

    losses: list[float] = []
    durations: deque[float] = deque(maxlen=SPEED_WINDOW)
    for epoch in range(done_epochs + 1, epochs + 1):
        epoch_losses = []
        for batch in batches(examples, config.batch_size, rng):
            if step == total_steps:
                break
            if stop.is_set():
                emit("stopped", step=step, epoch=epoch, message=STOPPED_MESSAGE)
                raise TrainingStopped
            began = time.monotonic()
            loss = _update(run, config, batch, step)
            durations.append(time.monotonic() - began)
            step += 1
            losses.append(loss)
            epoch_losses.append(loss)
            emit(
                "step",
                step=step,
                total_steps=total_steps,
                epoch=epoch,
                loss=round(loss, 6),
                lr=lr_scheduler.get_last_lr()[0],
                elapsed_s=round(time.monotonic() - started, 2),
                seconds_per_step=round(sum(durations) / len(durations), 3),
                **_memory(device),
            )
        emit("epoch", epoch=epoch, epochs=epochs, loss=round(sum(epoch_losses) / len(epoch_losses), 6))
        if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and epoch < epochs:
            path = save_lora(
                pipe.unet, config, config.output / f"{config.name}-epoch{epoch:03d}.safetensors", weight_dtype
            )
            save_state(config.output / "state", config, run, epoch, step)
            prune_checkpoints(config)
            emit("checkpoint", path=str(path), epoch=epoch, step=step)

    path = save_lora(pipe.unet, config, config.output / f"{config.name}.safetensors", weight_dtype)
    emit("done", steps=step, path=str(path), elapsed_s=round(time.monotonic() - started, 2))
    return TrainResult(step, path, losses)


def _prepare(pipe, pairs: list[tuple[Path, str]], config: TrainConfig, device) -> list[Example]:
    """Freeze the model, cache the latents, and put a trainable LoRA on the UNet."""
    unet = pipe.unet
    for part in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), unet):
        if part is not None:
            part.requires_grad_(False)
    # SDXL's VAE overflows in fp16 (kohya's no_half_vae); latents are cached once, so fp32 costs little.
    pipe.vae.to(device)
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(torch.float32)
    examples = cache_latents(pipe, pairs, config, device)
    pipe.vae.to("cpu")
    for part in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None), unet):
        if part is not None:
            part.to(device)

    unet.add_adapter(
        LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    )
    cast_training_params(unet, dtype=torch.float32)  # LoRA weights learn in fp32 even under fp16/bf16
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return examples


def _update(run: Training, config: TrainConfig, batch: list[Example], step: int) -> float:
    """One optimizer step on ``batch``; returns its loss."""
    loss = _step(run.pipe, config, batch, run.rng, run.device, run.dtype)
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingError(
            "nan_loss",
            f"Training broke down at step {step + 1} (the loss became {value}). "
            "Lower the learning rate, or use bf16 instead of fp16.",
        )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(run.params.values()), 1.0)
    run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return value


def _memory(device: torch.device) -> dict[str, float]:
    """The graphics card's peak reserved memory, for the progress display (nothing on the CPU)."""
    if device.type != "cuda":
        return {}
    return {"vram_gb": round(torch.cuda.max_memory_reserved(device) / 1e9, 2)}


def _step(pipe, config: TrainConfig, batch: list[Example], rng: random.Random, device, dtype) -> torch.Tensor:
    """One noise-prediction loss: noise the latents at random DDPM timesteps, ask the UNet for the noise."""
    scheduler = pipe.scheduler
    latents = torch.stack([e.latents for e in batch]).to(device, dtype)
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), device=device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.no_grad():
        captions = [training_caption(e.caption, config, rng) for e in batch]
        text, pooled = encode_prompts(pipe, config.arch, captions, device)
    added = None
    if config.arch == "sdxl":
        time_ids = torch.stack([e.time_ids for e in batch]).to(device, dtype)
        added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        pred = pipe.unet(noisy, timesteps, text.to(dtype), added_cond_kwargs=added).sample
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:  # v-prediction checkpoints
        target = scheduler.get_velocity(latents, noise, timesteps)
    return F.mse_loss(pred.float(), target.float())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a LoRA with the built-in trainer; JSON lines on stdout.")
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as err:
        print_event("error", kind="bad_config", message=f"The training settings in {args.config} are not usable: {err}")
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # the worker's Cancel: end after this step
    try:
        train(config, stop=stop)
    except TrainingError as err:
        print_event("error", kind=err.kind, message=err.message)
        return 1
    except TrainingStopped:
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
