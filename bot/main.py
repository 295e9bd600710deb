"""``loratrain bot``: the Discord bot process.

It holds, for its whole life, one SQLite store, the engine, an arq pool for handing jobs to the
workers and the relay that brings the workers' events back. Messages in a session thread and
button presses go to the engine; what it answers is posted back to the thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from contextlib import AsyncExitStack

import discord
from arq.connections import ArqRedis
from discord.ext import commands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bot.buttons import ChoiceButton
from bot.ingest import receive
from bot.private import Private, reply_to
from bot.relay import Relay
from bot.render import Renderer
from bot.train import train
from core.assistant import make_assistant
from core.engine import Engine, Outcome, Say, Text
from core.errors import UserError
from core.events import RedisStream
from core.settings import Settings
from core.store import Store, open_store
from worker.main import connect, submit

log = logging.getLogger(__name__)

NO_TOKEN = (
    "No Discord bot token is set. Put your bot's token in LORATRAIN_DISCORD_TOKEN (see 'Running with Discord' "
    "in the README) and run 'loratrain bot' again."
)
BAD_TOKEN = (
    "Discord did not accept the token in LORATRAIN_DISCORD_TOKEN. Copy it again from the Developer Portal "
    "(your application → Bot → Reset Token)."
)
NO_INTENT = (
    "Discord refused the Message Content intent. Turn on MESSAGE CONTENT INTENT in the Developer Portal "
    "(your application → Bot → Privileged Gateway Intents): artists drop pictures and type answers in their thread."
)
NO_REDIS = "I can't reach Redis at LORATRAIN_REDIS_URL. Start Redis (and 'loratrain worker'), then run 'loratrain bot'."
QUEUE_DOWN = (
    "I couldn't hand that work to the worker just now (the job queue isn't reachable). Everything you've sent and "
    "decided is saved; please try again in a few minutes."
)
ANSWERED = (discord.MessageType.default, discord.MessageType.reply)  # what an artist types, not system notices


class LoraBot(commands.Bot):
    store: Store
    engine: Engine
    redis: ArqRedis
    renderer: Renderer

    def __init__(self, settings: Settings):
        intents = discord.Intents.default()
        intents.message_content = True  # pictures and answers arrive as plain messages in the thread
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True),
        )
        self.settings = settings
        self.tree.add_command(train)
        self._resources = AsyncExitStack()
        self._locks: dict[str, asyncio.Lock] = {}
        self._relay: asyncio.Task | None = None

    async def open(self) -> None:
        """Open the store and the job queue and register the buttons (all that needs no Discord)."""
        self.store = await self._resources.enter_async_context(open_store(self.settings.database_path))
        self.redis = await connect(self.settings)
        self._resources.push_async_callback(self.redis.aclose)
        self.engine = Engine(self.settings, self.store, make_assistant(self.settings))
        self.renderer = Renderer(self.store)
        self._resources.push_async_callback(self.renderer.close)
        self.add_dynamic_items(ChoiceButton)

    async def setup_hook(self) -> None:
        await self.open()
        guild = discord.Object(self.settings.discord_guild) if self.settings.discord_guild else None
        if guild is not None:  # a server's commands appear at once; global ones can take an hour
            self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)
        stream = RedisStream(self.redis, self.settings.events_stream, self.settings.events_maxlen)
        self._relay = asyncio.create_task(Relay(self, stream).run(), name="loratrain-relay")

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()
        await super().close()
        await self._resources.aclose()

    def session_lock(self, session: str) -> asyncio.Lock:
        """One action at a time per session, so replies keep their order and no change is lost."""
        return self._locks.setdefault(session, asyncio.Lock())

    async def session_thread(self, session: str) -> discord.Thread | None:
        """The session's thread, or None when it was deleted or the bot may no longer see it."""
        if not session.isdigit():
            return None
        try:
            return self.get_channel(int(session)) or await self.fetch_channel(int(session))
        except (discord.NotFound, discord.Forbidden):
            return None

    async def deliver(self, thread: discord.Thread, outcome: Outcome, private: Private | None = None) -> None:
        """Show an outcome's replies in the thread, then hand its jobs to the workers."""
        await self.renderer.show(thread, outcome.replies, private)
        for job in outcome.jobs:
            try:
                await submit(self.redis, self.settings, job)
            except (RedisError, OSError):
                log.exception("Could not queue job %s", job.id)
                await self.renderer.show(thread, [Text(text=QUEUE_DOWN)])

    async def on_message(self, message: discord.Message) -> None:
        channel = message.channel
        if message.author.bot or message.type not in ANSWERED or channel.type != discord.ChannelType.private_thread:
            return
        session = str(channel.id)
        if await self.store.session(session) is None:
            return
        if message.attachments:
            action = await receive(self.settings, session, message)
        elif message.content.strip():
            action = Say(text=message.content)
        else:
            return
        async with self.session_lock(session):
            outcome = await self.engine.handle(session, str(message.author.id), action)
            await self.deliver(channel, outcome, private=reply_to(message))


def run(settings: Settings, args: argparse.Namespace) -> None:
    """Run the bot until it is stopped. The token comes from the environment and is never logged."""
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        raise UserError(NO_TOKEN)
    try:
        LoraBot(settings).run(token, root_logger=True)
    except discord.LoginFailure:
        raise UserError(BAD_TOKEN) from None
    except discord.PrivilegedIntentsRequired:
        raise UserError(NO_INTENT) from None
    except RedisConnectionError:
        raise UserError(NO_REDIS) from None
