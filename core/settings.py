"""Settings read from ``LORATRAIN_*`` environment variables and ``.env``.

One model, so the bot, the worker and the CLI agree on where things live and what the limits are.
Secrets are ``SecretStr``: they print as ``**********`` and never reach logs or the grimoire.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import UserError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORATRAIN_", env_file=".env", extra="ignore", populate_by_name=True)

    grimoire: Path = Field(Path("grimoire"), description="Folder holding eye.md, studio.md and training/.")
    database: Path | None = Field(
        None, description="SQLite file for operational state; default: .loratrain.sqlite3 inside the grimoire."
    )
    max_upload_mb: float = Field(50.0, gt=0, description="Largest single file accepted, in megabytes.")
    max_image_pixels: int = Field(
        Image.MAX_IMAGE_PIXELS or 89_478_485,
        gt=0,
        description="Pixel count above which an image is refused as a possible decompression bomb.",
    )
    max_files_per_import: int = Field(2000, gt=0, description="Most files one import may bring in.")
    workers: int = Field(
        max(1, os.cpu_count() or 1), ge=1, description="Threads used for checking and hashing pictures."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the job queues and the event stream.")
    quick_queue: str = Field("loratrain:quick", description="arq queue for quick jobs (checks, reports).")
    gpu_queue: str = Field("loratrain:gpu", description="arq queue for GPU jobs (dry run, training, grids).")
    cloud_queue: str = Field(
        "loratrain:cloud", description="arq queue for cloud jobs (renting a GPU and driving it over SSH)."
    )
    events_stream: str = Field("loratrain:events", description="Redis stream the worker publishes events to.")
    events_maxlen: int = Field(10_000, gt=0, description="About how many events the stream keeps.")
    quick_job_timeout: int = Field(600, gt=0, description="Seconds a quick job may run before it is failed.")
    gpu_job_timeout: int = Field(
        172_800, gt=0, description="Seconds a GPU job (dry run, training) may run before it is stopped."
    )
    eval_steps: int = Field(25, gt=0, description="Sampling steps for each picture of a strength grid.")
    comfyui_url: str | None = Field(
        None, description="ComfyUI's address (e.g. http://127.0.0.1:8188) to draw strength grids with; unset: built-in."
    )
    vast_api_key: SecretStr | None = Field(None, description="Vast.ai API key, for renting cloud GPUs there.")
    runpod_api_key: SecretStr | None = Field(None, description="RunPod API key, for renting cloud GPUs there.")
    vast_url: str = Field("https://console.vast.ai/api/v0", description="Vast.ai's API address.")
    runpod_url: str = Field("https://rest.runpod.io/v1", description="RunPod's REST API address (pods).")
    runpod_graphql_url: str = Field(
        "https://api.runpod.io/graphql", description="RunPod's GraphQL address (GPU types and prices)."
    )
    cloud_image: str = Field(
        "runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04",
        description="Docker image a rented GPU starts from: Python 3.11, CUDA PyTorch and an SSH server.",
    )
    cloud_max_usd: float = Field(
        10.0,
        gt=0,
        description="Spending cap for one cloud run, in US dollars: estimates above it are refused, "
        "and a run that reaches it is stopped and its GPU destroyed.",
    )
    cloud_setup_minutes: float = Field(
        20.0, ge=0, description="Minutes added to a cloud estimate for start-up, upload, install and the dry run."
    )
    cloud_ready_timeout: int = Field(
        900, gt=0, description="Seconds to wait for a rented GPU to start and answer SSH before giving it up."
    )
    cloud_ssh_user: str = Field("root", description="User to log in as on a rented GPU.")
    cloud_remote_dir: str = Field(
        "/workspace/loratrain", description="Folder on a rented GPU that holds loratrain, the project and the model."
    )
    cloud_remote_python: str = Field("python3", description="Python on a rented GPU that runs loratrain there.")
    discord_guild: int | None = Field(None, description="Discord server id to register /train in at once.")
    discord_token: SecretStr | None = Field(None, description="Discord bot token (only the bot needs it).")
    anthropic_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LORATRAIN_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="Anthropic API key for Claude (optional; without it the conversation is scripted).",
    )
    anthropic_base_url: str | None = Field(None, description="Messages API address; default: Anthropic's own.")
    anthropic_model: str = Field("claude-sonnet-4-6", description="Claude model that holds the conversation.")
    anthropic_max_tokens: int = Field(1024, gt=0, description="Longest answer Claude may write, in tokens.")
    anthropic_timeout: float = Field(60.0, gt=0, description="Seconds to wait for one answer from Claude.")
    anthropic_max_retries: int = Field(
        3, ge=0, description="Retries when Claude is busy (429, overloaded, 5xx) before the guided mode takes over."
    )
    anthropic_history_tokens: int = Field(
        8000, gt=0, description="About how many tokens of past conversation are sent with each message."
    )
    anthropic_input_usd_per_mtok: float = Field(
        3.0, ge=0, description="Price per million input tokens, for the usage record (not billing)."
    )
    anthropic_output_usd_per_mtok: float = Field(
        15.0, ge=0, description="Price per million output tokens, for the usage record (not billing)."
    )

    @property
    def training_root(self) -> Path:
        return self.grimoire / "training"

    @property
    def database_path(self) -> Path:
        return self.database or self.grimoire / ".loratrain.sqlite3"

    @property
    def cloud_dir(self) -> Path:
        """The SSH key loratrain logs in to rented GPUs with, and their pinned host keys."""
        return self.grimoire / ".cloud"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def env_names(name: str) -> list[str]:
    """The environment variables a setting is read from, its own name first."""
    alias = Settings.model_fields[name].validation_alias
    return list(alias.choices) if isinstance(alias, AliasChoices) else [f"LORATRAIN_{name.upper()}"]


def load() -> Settings:
    """The settings from the environment and ``.env``; a wrong value is a ``UserError`` naming the variable,
    what is wrong and its default. The value itself is never repeated: it may be a secret."""
    try:
        return Settings()
    except ValidationError as err:
        lines = []
        for error in err.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            if field in Settings.model_fields:
                info = Settings.model_fields[field]
                default = "unset" if info.default is None else info.default
                about = f" ({(info.description or '').rstrip('.')}; default: {default})"
                lines.append(f"- {env_names(field)[0]} {error['msg'].removeprefix('Input ')}{about}.")
            else:
                lines.append(f"- {field or 'a setting'}: {error['msg']}.")
        raise UserError(
            "A setting in your environment or .env file is wrong:\n" + "\n".join(lines) + "\n"
            "Correct it (or delete the line to use the default), then run `loratrain doctor`."
        ) from None


def reference_table() -> str:
    """The settings as a Markdown table (variable, default, meaning), for the README: generated from
    this model so the documentation cannot drift from the code."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        shown = "number of cores" if name == "workers" else "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| {', '.join(f'`{n}`' for n in env_names(name))} | {shown} | {field.description} |")
    return "\n".join(rows)
