"""``loratrain doctor``: whether this machine is set up to run loratrain, and what to fix, for the person
setting it up (an artist, a friend helping), not an engineer.

Each check is a small function of the settings that returns one or more ``Finding``s: what it looked at,
whether that is fine, and, when not, exactly which setting or command fixes it. ``CHECKS`` lists them in
the order they are shown; a new check is one more function there. A check never prints a secret (a token,
an API key, a Redis password): only whether it is set.
"""

from __future__ import annotations

import inspect
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import resources
from core.environment.probe import NVML_ADVICE, Environment, probe
from core.logs import hide_passwords
from core.settings import Settings, env_names
from core.store import MIGRATIONS, open_store

State = Literal["ok", "info", "warning", "problem"]
MARK: dict[State, str] = {"ok": "✅", "info": "ℹ️", "warning": "⚠️", "problem": "❌"}

REDIS_TIMEOUT_S = 2.0
LOW_DISK_GB, TOO_LITTLE_DISK_GB = 20.0, 2.0  # an SDXL run needs about 10 GB: the model, caches, 3 checkpoints
TEMPLATES = resources.ROOT.parent / "grimoire"  # the checkout's studio.md and eye.md, to copy from
RENT = "or rent one: `loratrain cloud offers NAME`"


class Finding(BaseModel):
    name: str
    state: State
    found: str  # what was found, in plain words
    fix: str | None = None  # exactly what to do; None when there is nothing to do


Check = Callable[[Settings], Finding | list[Finding] | Awaitable[Finding | list[Finding]]]


# The checks ------------------------------------------------------------------------------------------


def configuration(settings: Settings) -> Finding:
    """Where the settings came from. They are valid by the time any check runs (a wrong value stops
    ``loratrain`` first; ``settings.load`` says which variable and why)."""
    env_file = Settings.model_config.get("env_file")
    files = [Path(f).resolve() for f in ([env_file] if isinstance(env_file, str | Path) else env_file or [])]
    present = [str(f) for f in files if f.is_file()]
    if present:
        return Finding(
            name="Configuration",
            state="ok",
            found=f"settings are valid, read from {', '.join(present)} and the environment",
        )
    where = f"no .env file at {files[0]}" if files else "no .env file is read"
    return Finding(
        name="Configuration",
        state="ok",
        found=f"settings are valid; {where}, so they come from environment variables and defaults",
    )


FEATURES = (  # (what it is, its setting, what it does)
    ("Claude", "anthropic_api_key", "holds the conversation and writes captions"),
    ("ComfyUI", "comfyui_url", "draws the strength grids"),
    ("Vast.ai", "vast_api_key", "rents cloud GPUs"),
    ("RunPod", "runpod_api_key", "rents cloud GPUs"),
)


def features(settings: Settings) -> Finding:
    """Which optional services are configured: only whether each is set, never its value."""
    found = " · ".join(
        f"{name}: {'not set' if getattr(settings, field) is None else 'set'}" for name, field, _ in FEATURES
    )
    off = [
        f"{env_names(field)[0]} ({name} {does})" for name, field, does in FEATURES if getattr(settings, field) is None
    ]
    fix = f"To turn one on, set it in .env: {'; '.join(off)}." if off else None
    return Finding(name="Optional features", state="info", found=found, fix=fix)


def grimoire(settings: Settings) -> Finding:
    """The grimoire folder exists (it is created if not) and a file can be written in it."""
    folder = settings.grimoire.resolve()
    fix = f"Point LORATRAIN_GRIMOIRE (or --grimoire) to a folder you can write to, or make {folder} one."
    if folder.exists() and not folder.is_dir():
        return Finding(name="Grimoire", state="problem", found=f"{folder} is a file, not a folder", fix=fix)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as err:
        return Finding(name="Grimoire", state="problem", found=f"can't write in {folder}: {err.strerror}", fix=fix)
    return Finding(name="Grimoire", state="ok", found=f"{folder} {'was created' if created else 'is writable'}")


NOTES = {  # the grimoire's own files: what is missed without each
    "studio.md": "loratrain offers every base model instead of yours and can't read your GPU's memory from it "
    "(registering a LoRA creates it)",
    "eye.md": "captions won't use your own words for your work",
}


def notes(settings: Settings) -> list[Finding]:
    """``studio.md`` and ``eye.md``: optional, but what the artist writes there shapes the work."""
    found = []
    for name, missed in NOTES.items():
        path = settings.grimoire.resolve() / name
        if path.is_file():
            found.append(Finding(name=name, state="ok", found=f"{path} is there"))
            continue
        template = TEMPLATES / name
        fix = (
            f"Copy the template and fill it in: `cp {template} {path}`"
            if template.is_file()
            else f"Create {path} (the README says what goes in it)."
        )
        found.append(Finding(name=name, state="warning", found=f"{path} is missing: {missed}", fix=fix))
    return found


async def database(settings: Settings) -> Finding:
    """The SQLite store opens, its schema is up to date, and it can be written."""
    path = settings.database_path.resolve()
    fix = f"Make sure {path.parent} is a folder you can write to, or set LORATRAIN_DATABASE to a file elsewhere."
    try:
        async with open_store(path) as store:
            (version,) = await (await store.db.execute("PRAGMA user_version")).fetchone()
            await store.db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file
            await store.db.rollback()
    except (OSError, sqlite3.Error) as err:
        return Finding(name="Database", state="problem", found=f"can't use {path}: {err}", fix=fix)
    if version > len(MIGRATIONS):
        return Finding(
            name="Database",
            state="problem",
            found=f"{path} was written by a newer loratrain (schema {version}; this one knows {len(MIGRATIONS)})",
            fix="Update loratrain here to the version the other machine runs.",
        )
    return Finding(name="Database", state="ok", found=f"{path}, schema version {version}, writable")


@asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
    try:
        yield client
    finally:
        await client.aclose()


async def redis_server(settings: Settings) -> Finding:
    """Redis answers: the bot and the workers pass jobs and events through it."""
    shown = hide_passwords(settings.redis_url)
    fix = "Start Redis (`redis-server`), or fix LORATRAIN_REDIS_URL if it lives elsewhere."
    try:
        async with _redis(settings) as client:
            await client.ping()
    except ValueError:
        return Finding(
            name="Redis",
            state="problem",
            found=f"{shown} is not a Redis address",
            fix="Set LORATRAIN_REDIS_URL to an address like redis://127.0.0.1:6379/0.",
        )
    except (RedisError, OSError) as err:
        return Finding(name="Redis", state="problem", found=f"no answer from {shown} ({err})", fix=fix)
    return Finding(name="Redis", state="ok", found=f"answers at {shown}")


QUEUES = {  # queue → (its setting, who needs a worker on it)
    "quick": ("quick_queue", "the Discord bot's checks and reports need one"),
    "gpu": ("gpu_queue", "the Discord bot's dry runs, training and grids need one"),
    "cloud": ("cloud_queue", "renting cloud GPUs from Discord needs one"),
}


async def workers(settings: Settings) -> list[Finding]:
    """A worker on each queue: each running worker keeps ``{queue}:health-check:{host}`` alive
    (``worker.main.health_key``), holding its counts of jobs done, failed and waiting."""
    found = []
    try:
        async with _redis(settings) as client:
            for queue, (field, needed) in QUEUES.items():
                name = f"Worker ({queue})"
                keys = sorted(await client.keys(f"{getattr(settings, field)}:health-check:*"))
                if keys:
                    machines = [key.decode(errors="replace").rpartition(":")[2] for key in keys]
                    stats = (await client.get(keys[0])) or b""
                    alive = f"alive on {', '.join(machines)}: {stats.decode(errors='replace')}"
                    found.append(Finding(name=name, state="ok", found=alive))
                else:
                    found.append(
                        Finding(
                            name=name,
                            state="warning",
                            found=f"no worker is serving the {queue} queue; {needed} (the terminal commands "
                            "and the demo don't)",
                            fix=f"Start one: `loratrain worker --queue {queue}`",
                        )
                    )
    except (RedisError, OSError, ValueError):
        return [
            Finding(
                name="Workers",
                state="warning",
                found="can't tell: Redis isn't reachable",
                fix="Fix Redis first (above); then run `loratrain doctor` again.",
            )
        ]
    return found


def discord_token(settings: Settings) -> Finding:
    """The bot's token: whether it is set and has a token's shape, never its value."""
    portal = "the Discord Developer Portal (your application → Bot → Reset Token)"
    if settings.discord_token is None:
        return Finding(
            name="Discord token",
            state="warning",
            found="not set; only `loratrain bot` needs it",
            fix=f"To run the bot, copy its token from {portal} into .env as LORATRAIN_DISCORD_TOKEN=…",
        )
    parts = settings.discord_token.get_secret_value().strip().split(".")
    if len(parts) != 3 or not all(parts):
        return Finding(
            name="Discord token",
            state="warning",
            found="set, but it doesn't look like a bot token (three parts separated by dots)",
            fix=f"Copy the token again from {portal}: not the application id or the public key.",
        )
    return Finding(name="Discord token", state="ok", found="set (not shown)")


def machine(settings: Settings) -> list[Finding]:
    """The GPU and the grimoire's disk, as Gate 3's probe finds them (no project: the built-in trainer)."""
    env = probe("builtin", None, None, settings.grimoire)
    return [disk_finding(env), gpu_finding(env)]


def disk_finding(env: Environment) -> Finding:
    """Free space where the grimoire lives: a run writes its model, caches and checkpoints there."""
    free, where = env.disk_free_gb, env.folder
    fix = "Free some space there (old checkpoints, ~/.cache/huggingface), or point LORATRAIN_GRIMOIRE to a bigger disk."
    if free < TOO_LITTLE_DISK_GB:
        return Finding(name="Disk space", state="problem", found=f"only {free:g} GB free at {where}", fix=fix)
    if free < LOW_DISK_GB:
        return Finding(
            name="Disk space",
            state="warning",
            found=f"{free:g} GB free at {where}; an SDXL run needs about 10 GB",
            fix=fix,
        )
    return Finding(name="Disk space", state="ok", found=f"{free:g} GB free at {where}")


def gpu_finding(env: Environment) -> Finding:
    """The GPU, its memory, and whether PyTorch computes on it; no GPU is a warning, since the demo, the
    tests and the terminal commands up to Gate 3 run without one."""
    problems = [p for p in env.problems if p.code not in ("disk", "vram", "backend")]
    if not env.gpus:
        local = f"{NVML_ADVICE[env.nvml_code][1]} " if env.nvml_code in NVML_ADVICE else ""
        return Finding(
            name="GPU",
            state="warning",
            found=problems[0].problem.rstrip("."),
            fix=f"{local}Training needs an NVIDIA GPU: use a machine with one, {RENT}. "
            "The demo and the tests run on the CPU.",
        )
    cards = ", ".join(f"{g.name} ({g.memory_total_gb:g} GB)" for g in env.gpus)
    if not problems:
        return Finding(name="GPU", state="ok", found=f"{cards}; PyTorch {env.torch_version} computes on it")
    return Finding(
        name="GPU",
        state="problem" if any(p.blocking for p in problems) else "warning",
        found=f"{cards}. " + " ".join(p.problem.rstrip(".") for p in problems),
        fix=" ".join(p.fix for p in problems),
    )


CHECKS: tuple[Check, ...] = (
    configuration,
    features,
    grimoire,
    notes,
    database,
    redis_server,
    workers,
    discord_token,
    machine,
)


async def examine(settings: Settings, checks: tuple[Check, ...] = CHECKS) -> list[Finding]:
    """Every check's findings, in order. A check that fails unexpectedly is a problem finding of its own,
    so one broken check never hides the others."""
    findings: list[Finding] = []
    for check in checks:
        try:
            result = check(settings)
            result = await result if inspect.isawaitable(result) else result
        except Exception as err:  # a doctor that crashes tells nobody anything
            result = Finding(
                name=check.__name__.replace("_", " ").capitalize(),
                state="problem",
                found=f"the check failed: {err!r}",
                fix="Please report this, with the line above.",
            )
        findings += result if isinstance(result, list) else [result]
    return findings


def summary(findings: list[Finding]) -> str:
    problems = sum(f.state == "problem" for f in findings)
    warnings = sum(f.state == "warning" for f in findings)
    if problems:
        return (
            f"{problems} problem(s) to fix and {warnings} warning(s): fix the ❌ lines first, then run "
            "`loratrain doctor` again."
        )
    if warnings:
        return f"Nothing stops loratrain here; {warnings} warning(s) are worth a look."
    return "Everything checks out."
