"""Calls to Claude shared by the conversation (``core.assistant``) and the captions (``core.captions``):
the client, the retries while Claude is busy, and each call's tokens and cost in the store.

It sits below both users, and imports neither the engine nor the captions, so the engine can use the
captions and the assistant can use the engine without an import cycle.
"""

from __future__ import annotations

import asyncio
import random

import anthropic
from anthropic.types import Message, Usage

from core.settings import Settings
from core.store import Store

MAX_WAIT = 20.0  # seconds; asked to wait longer, the caller falls back instead of keeping the artist waiting
# Prompt-cache prices relative to the input price (Anthropic's pricing: 5-minute cache writes 1.25×, reads 0.1×).
CACHE_WRITE, CACHE_READ = 1.25, 0.1


def make_client(settings: Settings) -> anthropic.AsyncAnthropic:
    key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else None
    # Retries are ours (``create``): the SDK's would wait out long outages while the artist waits.
    return anthropic.AsyncAnthropic(
        api_key=key, base_url=settings.anthropic_base_url, timeout=settings.anthropic_timeout, max_retries=0
    )


async def create(client: anthropic.AsyncAnthropic, settings: Settings, first_delay: float = 0.5, **request) -> Message:
    """One Messages API call with the settings' model and answer length, retried while Claude is busy."""
    attempt = 0
    while True:
        try:
            return await client.messages.create(
                model=settings.anthropic_model, max_tokens=settings.anthropic_max_tokens, **request
            )
        except anthropic.APIStatusError as err:
            delay = retry_delay(err, attempt, settings.anthropic_max_retries, first_delay)
            if delay is None:
                raise
            attempt += 1
            await asyncio.sleep(delay)


def retry_delay(err: anthropic.APIStatusError, attempt: int, max_retries: int, first_delay: float) -> float | None:
    """Seconds to wait before trying again (the server's retry-after, else exponential backoff with
    jitter), or None when the error won't pass by waiting or the retries are spent."""
    if not (err.status_code == 429 or err.status_code >= 500) or attempt >= max_retries:
        return None
    headers = err.response.headers
    for name, unit in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            delay = float(headers[name]) * unit
            break
        except (KeyError, ValueError):
            continue
    else:
        delay = first_delay * 2**attempt * random.uniform(0.75, 1.0)
    return delay if delay <= MAX_WAIT else None


def input_tokens(usage: Usage) -> int:
    """Every input token the call read, whether fresh, written to the prompt cache or read from it."""
    return usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def cost_usd(settings: Settings, usage: Usage) -> float:
    fresh = (
        usage.input_tokens
        + CACHE_WRITE * (usage.cache_creation_input_tokens or 0)
        + CACHE_READ * (usage.cache_read_input_tokens or 0)
    )
    output = usage.output_tokens * settings.anthropic_output_usd_per_mtok
    return (fresh * settings.anthropic_input_usd_per_mtok + output) / 1e6


async def record_usage(store: Store, settings: Settings, session: str, project: str | None, message: Message) -> None:
    usage = message.usage
    await store.record_usage(
        session, project, settings.anthropic_model, input_tokens(usage), usage.output_tokens, cost_usd(settings, usage)
    )
