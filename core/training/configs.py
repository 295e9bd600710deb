"""The backends' real configuration files, written into ``grimoire/training/NAME/config/``.

Every file is built as a dict and serialised by a library (``tomli_w``, ``json``, ``yaml.safe_dump``),
so a quote or a new line in a trigger word or caption cannot break or inject into a config. Each
backend has a checker that compares key names, types and choices with what that backend accepts
(shared/research/backends.md): kohya's training file and ai-toolkit silently ignore a misspelt key, so
a typo would otherwise only show as a run that quietly trained with the wrong settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import tomli_w
import yaml

from core.families import Family
from core.grimoire import Project, inside, write_atomic
from core.training.params import Optimizer, TrainingParams

SAVE_EVERY_N_EPOCHS = 5  # a checkpoint every 5 passes: early, middle and late versions to compare
KEEP_LAST = 3  # the grimoire keeps the last three checkpoints (shared/DESIGN.md)


class Backend(StrEnum):
    builtin = "builtin"
    kohya = "kohya"
    simpletuner = "simpletuner"
    ai_toolkit = "ai-toolkit"


def default_backend(family: Family) -> Backend:
    """The built-in trainer where it can train the family (SD 1.5, SDXL, Pony), else kohya (Flux)."""
    return Backend.builtin if family is not Family.flux else Backend.kohya


@dataclass(frozen=True)
class Job:
    """What a backend config needs besides the settings: where things are and what to call them."""

    project: Project
    params: TrainingParams
    model: str  # the base model: a file, a diffusers folder or a Hugging Face name
    trigger: str
    parts: dict[str, str] = field(default_factory=dict)  # kohya's Flux files: clip_l, t5xxl, ae

    @property
    def config_dir(self) -> Path:
        return self.project.root / "config"

    @property
    def checkpoints(self) -> Path:
        return self.project.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.project.root / "logs"

    @property
    def cache(self) -> Path:
        return self.project.root / "cache"

    @property
    def save_every_steps(self) -> int:
        """Step-counting trainers (SimpleTuner, ai-toolkit) save at the same points as every 5 epochs."""
        return self.params.steps_per_epoch * SAVE_EVERY_N_EPOCHS


# --- checking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    choices: tuple[object, ...] = ()
    lower: bool = False  # choices matched case-insensitively (kohya's optimizer_type)


STR, INT, BOOL, NUMBER, LIST = Key((str,)), Key((int,)), Key((bool,)), Key((int, float)), Key((list,))


def _one_of(*choices: object, lower: bool = False) -> Key:
    return Key((str,), choices, lower)


def check(config: dict, schema: dict[str, Key], where: str) -> list[str]:
    """Unknown keys, wrong types and values outside a key's choices, as plain problems."""
    problems = []
    for name, value in config.items():
        key = schema.get(name)
        if key is None:
            problems.append(f"{where}: unknown key '{name}' (a misspelt key is ignored or refused by the trainer)")
        elif isinstance(value, bool) and bool not in key.types or not isinstance(value, key.types):
            expected = " or ".join(t.__name__ for t in key.types)
            problems.append(f"{where}: '{name}' must be {expected}, not {type(value).__name__} {value!r}")
        elif key.choices and (value.lower() if key.lower else value) not in key.choices:
            problems.append(f"{where}: '{name}' is {value!r}; it accepts {', '.join(map(str, key.choices))}")
    return problems


# --- kohya sd-scripts -----------------------------------------------------------------------------

# optimizer_type values from the help text of --optimizer_type (library/train_util.py), lower-cased
# because kohya matches them case-insensitively.
KOHYA_OPTIMIZERS = tuple(
    name.lower()
    for name in (
        "AdamW8bit PagedAdamW PagedAdamW8bit PagedAdamW32bit Lion8bit PagedLion8bit SGDNesterov8bit AdamW Lion "
        "SGDNesterov Adafactor DAdaptation DAdaptAdaGrad DAdaptAdam DAdaptAdan DAdaptAdanIP DAdaptLion DAdaptSGD "
        "Prodigy RAdamScheduleFree AdamWScheduleFree SGDScheduleFree"
    ).split()
)
KOHYA_OPTIMIZER_NAMES = {
    Optimizer.adamw8bit: "AdamW8bit",
    Optimizer.adamw: "AdamW",
    Optimizer.prodigy: "Prodigy",
    Optimizer.lion: "Lion",
}
KOHYA_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "adafactor",
)
# Prodigy's authors' settings for diffusion models (resources/training/optimizers.md).
PRODIGY_ARGS = ["safeguard_warmup=True", "use_bias_correction=True", "weight_decay=0.01"]

# The training TOML's keys: argparse destinations of train_network.py and library/train_util.py.
KOHYA_TRAIN_KEYS: dict[str, Key] = {
    "pretrained_model_name_or_path": STR,
    "network_module": _one_of("networks.lora", "networks.lora_flux"),
    "network_dim": INT,
    "network_alpha": NUMBER,
    "network_args": LIST,
    "network_dropout": NUMBER,
    "network_train_unet_only": BOOL,
    "network_train_text_encoder_only": BOOL,
    "learning_rate": NUMBER,
    "unet_lr": NUMBER,
    "text_encoder_lr": Key((int, float, list)),
    "optimizer_type": _one_of(*KOHYA_OPTIMIZERS, lower=True),
    "optimizer_args": LIST,
    "lr_scheduler": _one_of(*KOHYA_SCHEDULERS),
    "lr_warmup_steps": NUMBER,
    "max_train_epochs": INT,
    "max_train_steps": INT,
    "train_batch_size": INT,
    "resolution": STR,  # a string "1024,1024" here; a bare number crashes (backends.md)
    "mixed_precision": _one_of("no", "fp16", "bf16"),
    "save_precision": _one_of("fp16", "bf16", "float"),
    "save_model_as": _one_of("safetensors", "ckpt", "pt"),
    "save_every_n_epochs": INT,
    "save_every_n_steps": INT,
    "save_last_n_epochs": INT,
    "save_last_n_steps": INT,
    "save_state": BOOL,
    "save_state_on_train_end": BOOL,
    "resume": STR,
    "output_dir": STR,
    "output_name": STR,
    "caption_extension": STR,
    "shuffle_caption": BOOL,
    "keep_tokens": INT,
    "caption_dropout_rate": NUMBER,
    "gradient_checkpointing": BOOL,
    "gradient_accumulation_steps": INT,
    "max_grad_norm": NUMBER,
    "cache_latents": BOOL,
    "cache_latents_to_disk": BOOL,
    "cache_text_encoder_outputs": BOOL,
    "cache_text_encoder_outputs_to_disk": BOOL,
    "sdpa": BOOL,
    "xformers": BOOL,
    "mem_eff_attn": BOOL,
    "no_half_vae": BOOL,
    "fp8_base": BOOL,
    "blocks_to_swap": INT,
    "clip_l": STR,
    "t5xxl": STR,
    "ae": STR,
    "model_type": STR,
    "guidance_scale": NUMBER,
    "timestep_sampling": STR,
    "model_prediction_type": STR,
    "seed": INT,
    "logging_dir": STR,
    "log_with": _one_of("tensorboard", "wandb", "all"),
    "log_prefix": STR,
    "console_log_simple": BOOL,
    "console_log_file": STR,
    "console_log_level": STR,
    "sample_prompts": STR,
    "sample_every_n_epochs": INT,
    "sample_every_n_steps": INT,
    "sample_sampler": STR,
    "dataset_config": STR,
}

# The dataset TOML's schema (library/config_util.py ConfigSanitizer), which refuses extra keys.
KOHYA_SUBSET_KEYS: dict[str, Key] = {
    "image_dir": STR,
    "num_repeats": INT,
    "class_tokens": STR,
    "caption_extension": STR,
    "keep_tokens": INT,
    "keep_tokens_separator": STR,
    "shuffle_caption": BOOL,
    "caption_prefix": STR,
    "caption_suffix": STR,
    "flip_aug": BOOL,
    "color_aug": BOOL,
    "random_crop": BOOL,
    "is_reg": BOOL,
    "caption_dropout_rate": NUMBER,
    "caption_tag_dropout_rate": NUMBER,
    "cache_info": BOOL,
    "alpha_mask": BOOL,
    "enable_wildcard": BOOL,
    "secondary_separator": STR,
    "custom_attributes": Key((dict,)),
}
KOHYA_DATASET_KEYS: dict[str, Key] = {
    "resolution": Key((int, list)),
    "batch_size": INT,
    "enable_bucket": BOOL,
    "min_bucket_reso": INT,
    "max_bucket_reso": INT,
    "bucket_reso_steps": INT,
    "bucket_no_upscale": BOOL,
    "network_multiplier": NUMBER,
    "validation_split": NUMBER,
    "validation_seed": INT,
}


def kohya_configs(job: Job) -> tuple[dict, dict]:
    """The training TOML and the dataset TOML (resources/backends/kohya-adapter.md)."""
    p = job.params
    flux, sdxl = p.family is Family.flux, p.family in (Family.sdxl, Family.pony)
    train: dict = {
        "pretrained_model_name_or_path": job.model,
        "network_module": "networks.lora_flux" if flux else "networks.lora",
        "network_dim": p.rank,
        "network_alpha": p.alpha,
        "learning_rate": p.learning_rate,
        "unet_lr": p.learning_rate,
        "optimizer_type": KOHYA_OPTIMIZER_NAMES[p.optimizer],
        "lr_scheduler": str(p.scheduler),
        "lr_warmup_steps": p.warmup_steps,
        "max_train_epochs": p.epochs,
        "train_batch_size": p.batch_size,
        "mixed_precision": str(p.precision),
        "save_precision": "fp16",
        "save_model_as": "safetensors",
        "save_every_n_epochs": SAVE_EVERY_N_EPOCHS,
        "save_last_n_epochs": KEEP_LAST,  # kohya: keep the last N checkpoints saved every N epochs
        "output_dir": str(job.checkpoints),
        "output_name": job.project.name,
        "logging_dir": str(job.logs),
        "console_log_simple": True,  # plain lines loratrain can read, not rich's padded columns
        "caption_extension": ".txt",  # kohya's default is ".caption", which finds none of our captions
        "shuffle_caption": p.shuffle_captions,
        "keep_tokens": p.keep_tokens,
        "caption_dropout_rate": p.caption_dropout,
        "gradient_checkpointing": p.gradient_checkpointing,
        "cache_latents": True,
        "sdpa": True,
        "seed": p.seed,
        "dataset_config": str(job.config_dir / "kohya-dataset.toml"),
    }
    if p.text_encoder_lr:
        train["text_encoder_lr"] = p.text_encoder_lr
    else:  # kohya "highly recommends" the image model only for SDXL (parameters-guide.md)
        train["network_train_unet_only"] = True
    if p.optimizer is Optimizer.prodigy:
        train["optimizer_args"] = PRODIGY_ARGS
    if sdxl and p.precision == "fp16":  # SDXL's VAE makes NaNs in fp16 (docs/sdxl_train_network.md)
        train["no_half_vae"] = True
    if flux:  # docs/flux_train_network.md's example settings, and the files it trains from
        train |= {"guidance_scale": 1.0, "timestep_sampling": "flux_shift", "model_prediction_type": "raw"}
        train |= job.parts
    dataset = {
        "general": {
            "enable_bucket": True,
            "min_bucket_reso": p.resolution // 2,
            "max_bucket_reso": p.resolution * 2,
            "bucket_reso_steps": 64,
            "caption_extension": ".txt",
            "shuffle_caption": p.shuffle_captions,
            "keep_tokens": p.keep_tokens,
            "caption_dropout_rate": p.caption_dropout,
        },
        "datasets": [
            {
                "resolution": p.resolution,
                "batch_size": p.batch_size,
                "subsets": [
                    {"image_dir": str(job.project.dataset_dir), "num_repeats": p.repeats, "keep_tokens": p.keep_tokens}
                ],
            }
        ],
    }
    return train, dataset


def check_kohya(train: dict) -> list[str]:
    return check(train, KOHYA_TRAIN_KEYS, "kohya training file")


def check_kohya_dataset(dataset: dict, family: Family) -> list[str]:
    where = "kohya dataset file"
    unknown = set(dataset) - {"general", "datasets"}
    problems = [f"{where}: unknown section '{name}'" for name in sorted(unknown)]
    problems += check(dataset.get("general", {}), KOHYA_DATASET_KEYS | KOHYA_SUBSET_KEYS, f"{where} [general]")
    for d in dataset.get("datasets", []):
        problems += check({k: v for k, v in d.items() if k != "subsets"}, KOHYA_DATASET_KEYS, f"{where} [[datasets]]")
        for s in d.get("subsets", []):
            problems += check(s, KOHYA_SUBSET_KEYS, f"{where} [[datasets.subsets]]")
            if "image_dir" not in s:
                problems.append(f"{where}: a subset has no image_dir")
    merged = dataset.get("general", {}) | next(iter(dataset.get("datasets", [])), {})
    step = merged.get("bucket_reso_steps", 64)
    for name in ("min_bucket_reso", "max_bucket_reso"):
        if name in merged and merged[name] % step:
            problems.append(f"{where}: {name} {merged[name]} is not divisible by bucket_reso_steps {step}")
    if family in (Family.sdxl, Family.pony) and step % 32:
        problems.append(f"{where}: bucket_reso_steps must be a multiple of 32 for SDXL, not {step}")
    return problems


# --- SimpleTuner ----------------------------------------------------------------------------------

SIMPLETUNER_OPTIMIZERS = {
    Optimizer.adamw8bit: "bnb-adamw8bit",
    Optimizer.adamw: "adamw_bf16",
    Optimizer.prodigy: "prodigy",
    Optimizer.lion: "optimi-lion",
}
SIMPLETUNER_KEYS: dict[str, Key] = {
    "model_type": _one_of("lora", "full"),
    "model_family": _one_of("sdxl", "flux", "sd3", "pixart_sigma", "kolors", "chroma", "flux2"),
    "model_flavour": STR,
    "pretrained_model_name_or_path": STR,
    "lora_type": _one_of("standard", "lycoris"),
    "lora_rank": INT,
    "lora_alpha": NUMBER,
    "data_backend_config": STR,
    "output_dir": STR,
    "resume_from_checkpoint": STR,
    "optimizer": _one_of(
        "adamw_bf16",
        "ao-adamw8bit",
        "ao-adamw4bit",
        "adamw_schedulefree",
        "optimi-lion",
        "optimi-adamw",
        "bnb-adamw8bit",
        "bnb-lion8bit",
        "bnb-lion8bit-paged",
        "soap",
        "prodigy",
    ),
    "optimizer_config": STR,
    "learning_rate": NUMBER,
    "lr_scheduler": _one_of(
        "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "polynomial", "linear"
    ),
    "lr_warmup_steps": INT,
    "train_batch_size": INT,
    "gradient_accumulation_steps": INT,
    "num_train_epochs": INT,
    "max_train_steps": INT,
    "checkpoint_step_interval": INT,
    "checkpoint_epoch_interval": INT,
    "checkpoints_total_limit": INT,
    "gradient_checkpointing": BOOL,
    "mixed_precision": _one_of("bf16", "fp16", "no"),
    "base_model_precision": STR,
    "quantize_via": STR,
    "resolution": NUMBER,
    "resolution_type": _one_of("pixel_area", "area", "pixel"),
    "caption_dropout_probability": NUMBER,
    "seed": INT,
    "validation_prompt": STR,
    "validation_step_interval": INT,
    "validation_resolution": STR,
    "num_validation_images": INT,
    "report_to": _one_of("wandb", "tensorboard", "none"),
}
SIMPLETUNER_BACKEND_KEYS: dict[str, Key] = {
    "id": STR,
    "type": _one_of("local"),
    "dataset_type": _one_of("image", "video", "audio", "text_embeds", "image_embeds", "conditioning"),
    "default": BOOL,
    "instance_data_dir": STR,
    "caption_strategy": _one_of("textfile", "filename", "instanceprompt", "parquet", "huggingface"),
    "instance_prompt": STR,
    "resolution": NUMBER,
    "resolution_type": _one_of("pixel_area", "area", "pixel"),
    "minimum_image_size": NUMBER,
    "maximum_image_size": NUMBER,
    "target_downsample_size": NUMBER,
    "crop": BOOL,
    "repeats": INT,
    "cache_dir_vae": STR,
    "cache_dir": STR,
}


def simpletuner_configs(job: Job) -> tuple[dict, list[dict]]:
    """config.json and multidatabackend.json (resources/backends/simpletuner-adapter.md)."""
    p = job.params
    config = {
        "model_type": "lora",
        "model_family": "flux" if p.family is Family.flux else "sdxl",  # Pony is an SDXL checkpoint
        "pretrained_model_name_or_path": job.model,
        "output_dir": str(job.checkpoints),
        "data_backend_config": str(job.config_dir / "simpletuner-multidatabackend.json"),
        "lora_type": "standard",
        "lora_rank": p.rank,
        "lora_alpha": p.alpha,
        "optimizer": SIMPLETUNER_OPTIMIZERS[p.optimizer],
        "learning_rate": p.learning_rate,
        "lr_scheduler": str(p.scheduler),
        "lr_warmup_steps": p.warmup_steps,
        "train_batch_size": p.batch_size,
        "gradient_accumulation_steps": 1,
        "num_train_epochs": p.epochs,
        "max_train_steps": 0,  # epochs decide the length; the unused one is 0
        # Its default saves every 500 steps, which a short run may never reach (adapter notes, Traps).
        "checkpoint_step_interval": job.save_every_steps,
        "checkpoints_total_limit": KEEP_LAST,
        "gradient_checkpointing": p.gradient_checkpointing,
        "mixed_precision": str(p.precision),
        "resolution": p.resolution,
        "resolution_type": "pixel_area",
        "caption_dropout_probability": p.caption_dropout,
        "seed": p.seed,
        "validation_prompt": job.trigger,
        "validation_step_interval": job.save_every_steps,
        "validation_resolution": f"{p.resolution}x{p.resolution}",
        "num_validation_images": 1,  # validation runs inside training and costs memory
        "report_to": "none",
    }
    backends = [
        {
            "id": job.project.name,
            "type": "local",
            "instance_data_dir": str(job.project.dataset_dir),
            "caption_strategy": "textfile",
            "resolution": p.resolution,
            "resolution_type": "pixel_area",
            "minimum_image_size": p.resolution,
            "crop": False,
            "repeats": p.repeats - 1,  # SimpleTuner counts extra views: kohya's 10 is its 9
            "cache_dir_vae": str(job.cache / "vae"),
        },
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(job.cache / "text"),
        },
    ]
    return config, backends


def check_simpletuner(config: dict) -> list[str]:
    return check(config, SIMPLETUNER_KEYS, "SimpleTuner config.json")


def check_simpletuner_backends(backends: list[dict]) -> list[str]:
    problems = []
    for backend in backends:
        problems += check(backend, SIMPLETUNER_BACKEND_KEYS, f"SimpleTuner data source {backend.get('id')!r}")
    return problems


# --- ai-toolkit -----------------------------------------------------------------------------------

AI_TOOLKIT_SECTIONS: dict[str, dict[str, Key]] = {
    "process": {
        "type": _one_of("sd_trainer"),
        "training_folder": STR,
        "device": STR,
        "trigger_word": STR,
        "network": Key((dict,)),
        "save": Key((dict,)),
        "datasets": LIST,
        "train": Key((dict,)),
        "model": Key((dict,)),
        "sample": Key((dict,)),
    },
    "network": {"type": _one_of("lora", "lokr"), "linear": INT, "linear_alpha": NUMBER},
    "save": {
        "dtype": _one_of("float16", "bf16", "float32"),
        "save_every": INT,
        "max_step_saves_to_keep": INT,
        "push_to_hub": BOOL,
    },
    "dataset": {
        "folder_path": STR,
        "caption_ext": STR,
        "caption_dropout_rate": NUMBER,
        "shuffle_tokens": BOOL,
        "keep_tokens": INT,
        "cache_latents_to_disk": BOOL,
        "resolution": LIST,
    },
    "train": {
        "batch_size": INT,
        "steps": INT,
        "gradient_accumulation_steps": INT,
        "train_unet": BOOL,
        "train_text_encoder": BOOL,
        "gradient_checkpointing": BOOL,
        "noise_scheduler": _one_of("flowmatch", "ddpm"),
        "optimizer": _one_of("adamw8bit", "adamw", "prodigy", "lion", "adafactor"),
        "lr": NUMBER,
        "lr_scheduler": _one_of("constant", "cosine", "linear"),
        "dtype": _one_of("bf16", "fp16", "fp32"),
    },
    "model": {"name_or_path": STR, "is_flux": BOOL, "is_xl": BOOL, "quantize": BOOL},
    "sample": {
        "sampler": _one_of("flowmatch", "ddpm"),
        "sample_every": INT,
        "width": INT,
        "height": INT,
        "prompts": LIST,
        "seed": INT,
        "walk_seed": BOOL,
        "guidance_scale": NUMBER,
        "sample_steps": INT,
    },
}


def ai_toolkit_config(job: Job) -> dict:
    """The YAML job (resources/backends/ai-toolkit-adapter.md). Steps, lr and save_every are always
    written: its defaults (1000 steps, lr 1e-6, a save every 1000 steps) are wrong for an artist's run."""
    p = job.params
    flux = p.family is Family.flux
    scheduler = "flowmatch" if flux else "ddpm"
    model: dict = {"name_or_path": job.model, "quantize": False}
    if flux:
        model["is_flux"] = True
    elif p.family in (Family.sdxl, Family.pony):
        model["is_xl"] = True
    process = {
        "type": "sd_trainer",
        "training_folder": str(job.checkpoints),
        "device": "cuda:0",
        "trigger_word": job.trigger,
        "network": {"type": "lora", "linear": p.rank, "linear_alpha": p.alpha},
        "save": {
            "dtype": "float16",
            "save_every": job.save_every_steps,
            "max_step_saves_to_keep": KEEP_LAST,
            "push_to_hub": False,
        },
        "datasets": [
            {
                "folder_path": str(job.project.dataset_dir),
                "caption_ext": "txt",
                "caption_dropout_rate": p.caption_dropout,
                "shuffle_tokens": p.shuffle_captions,
                "keep_tokens": p.keep_tokens,
                "cache_latents_to_disk": True,
                "resolution": [p.resolution],
            }
        ],
        "train": {
            "batch_size": p.batch_size,
            "steps": p.total_steps,
            "gradient_accumulation_steps": 1,
            "train_unet": True,
            "train_text_encoder": p.text_encoder_lr > 0,
            "gradient_checkpointing": p.gradient_checkpointing,
            "noise_scheduler": scheduler,
            "optimizer": str(p.optimizer),
            "lr": p.learning_rate,
            "lr_scheduler": str(p.scheduler),
            "dtype": str(p.precision),
        },
        "model": model,
        # Few samples at training size: drawing them can run out of memory (ostris/ai-toolkit#992).
        "sample": {
            "sampler": scheduler,
            "sample_every": job.save_every_steps,
            "width": p.resolution,
            "height": p.resolution,
            "prompts": [job.trigger],
            "seed": p.seed,
            "walk_seed": True,
            "guidance_scale": 4 if flux else 6,
            "sample_steps": 20,
        },
    }
    return {
        "job": "extension",
        "config": {"name": job.project.name, "process": [process]},
        "meta": {"name": "[name]", "version": "1.0"},
    }


def check_ai_toolkit(config: dict) -> list[str]:
    where = "ai-toolkit job"
    problems = check(
        config, {"job": _one_of("extension", "train"), "config": Key((dict,)), "meta": Key((dict,))}, where
    )
    body = config.get("config", {})
    problems += check(body, {"name": STR, "process": LIST}, f"{where} config")
    for process in body.get("process", []):
        problems += check(process, AI_TOOLKIT_SECTIONS["process"], f"{where} process")
        for section in ("network", "save", "train", "model", "sample"):
            problems += check(process.get(section, {}), AI_TOOLKIT_SECTIONS[section], f"{where} {section}")
        for dataset in process.get("datasets", []):
            problems += check(dataset, AI_TOOLKIT_SECTIONS["dataset"], f"{where} datasets")
    return problems


# --- the built-in trainer -------------------------------------------------------------------------

BUILTIN_KEYS: dict[str, Key] = {
    "model": STR,
    "arch": _one_of("sd15", "sdxl"),
    "dataset": STR,
    "output": STR,
    "name": STR,
    "trigger": STR,
    "resolution": INT,
    "batch_size": INT,
    "epochs": INT,
    "learning_rate": NUMBER,
    "rank": INT,
    "alpha": NUMBER,
    "optimizer": _one_of("adamw", "adamw8bit", "prodigy"),
    "scheduler": _one_of("constant", "cosine"),
    "warmup_ratio": NUMBER,
    "mixed_precision": _one_of("no", "fp16", "bf16"),
    "gradient_checkpointing": BOOL,
    "shuffle_captions": BOOL,
    "caption_dropout": NUMBER,
    "seed": INT,
    "save_every_n_epochs": INT,
    "keep_last": INT,
    "resume": BOOL,  # set by the run (core.training.launch), not by builtin_config
}


def builtin_config(job: Job) -> dict:
    """The JSON for ``python -m core.training.builtin --config`` (its ``TrainConfig``). The built-in
    trainer has no repeats, so one of its epochs is one pass without them: epochs and the save interval
    are multiplied by the repeats, which keeps the same total views and the same checkpoint points."""
    p = job.params
    return {
        "model": job.model,
        "arch": "sd15" if p.family is Family.sd15 else "sdxl",  # Pony is an SDXL checkpoint
        "dataset": str(job.project.dataset_dir),
        "output": str(job.checkpoints),
        "name": job.project.name,
        "trigger": job.trigger,
        "resolution": p.resolution,
        "batch_size": p.batch_size,
        "epochs": p.epochs * p.repeats,
        "learning_rate": p.learning_rate,
        "rank": p.rank,
        "alpha": p.alpha,
        "optimizer": str(p.optimizer),
        "scheduler": str(p.scheduler),
        "warmup_ratio": p.warmup_ratio,
        "mixed_precision": str(p.precision),
        "gradient_checkpointing": p.gradient_checkpointing,
        "shuffle_captions": p.shuffle_captions,
        "caption_dropout": p.caption_dropout,
        "seed": p.seed,
        "save_every_n_epochs": SAVE_EVERY_N_EPOCHS * p.repeats,
        "keep_last": KEEP_LAST,
    }


def check_builtin(config: dict) -> list[str]:
    return check(config, BUILTIN_KEYS, "built-in trainer config")


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    files: list[Path]  # the main file first
    problems: list[str]  # what the backend checks found; Gate 2 refuses the config if any


def dump_toml(data: dict) -> str:
    return tomli_w.dumps(data)


def dump_json(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def render(backend: Backend, job: Job) -> tuple[dict[str, str], list[str]]:
    """File name → text, and the checks' problems, for one backend."""
    match backend:
        case Backend.kohya:
            train, dataset = kohya_configs(job)
            files = {"kohya-train.toml": dump_toml(train), "kohya-dataset.toml": dump_toml(dataset)}
            problems = check_kohya(train) + check_kohya_dataset(dataset, job.params.family)
        case Backend.simpletuner:
            config, backends = simpletuner_configs(job)
            files = {
                "simpletuner-config.json": dump_json(config),
                "simpletuner-multidatabackend.json": dump_json(backends),
            }
            problems = check_simpletuner(config) + check_simpletuner_backends(backends)
        case Backend.ai_toolkit:
            config = ai_toolkit_config(job)
            files, problems = {"ai-toolkit.yaml": dump_yaml(config)}, check_ai_toolkit(config)
        case Backend.builtin:
            config = builtin_config(job)
            files, problems = {"builtin.json": dump_json(config)}, check_builtin(config)
    return files, problems


def write(backend: Backend, job: Job) -> Written:
    """Write the backend's files into the project's config folder (atomically, never outside it)."""
    files, problems = render(backend, job)
    paths = []
    for name, text in files.items():
        path = inside(job.project.root, job.config_dir / name)
        write_atomic(path, text)
        paths.append(path)
    return Written(paths, problems)
