"""``loratrain bot``: the Discord bot process.

It holds, for its whole life, one SQLite store, the engine, an arq pool for handing jobs to the
workers and the relay that brings the workers' events back. Messages in a session thread and
button presses go to the engine; what it answers is posted back to the thread.

Stopping (SIGTERM, SIGINT, or Discord ending the connection) is graceful: new messages are no longer
taken, the actions in flight finish (each holds its session's lock), the relay stops after the batch it
is showing, then Discord, the store and Redis are closed. Every ``HEARTBEAT_S`` the bot records in Redis
whether Discord is connected and when its relay last read the stream; ``loratrain bot --check`` reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from contextlib import AsyncExitStack

import discord
from arq.connections import ArqRedis
from discord.ext import commands
from redis.asyncio import Redis
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
STOP_WAIT_S = 20.0  # how long a stopping bot waits for the actions in flight and the relay's batch
HEARTBEAT_S = 15.0
HEARTBEAT_TTL_S = 45  # a heartbeat missed by a busy moment is no alarm; three are
RELAY_STALE_S = 120.0  # a healthy relay reads at least every 5 s; a long batch of posts may take a while


class LoraBot(commands.Bot):
    store: Store
    engine: Engine
    redis: ArqRedis
    renderer: Renderer
    relay: Relay

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
        self._relay_task: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None
        self._receiving = 0  # messages whose attachments are being fetched (before they take their session's lock)
        self._closing: asyncio.Future | None = None
        self.stopping = False

    async def open(self) -> None:
        """Open the store and the job queue and register the buttons (all that needs no Discord)."""
        self.store = await self._resources.enter_async_context(open_store(self.settings.database_path))
        self.redis = await connect(self.settings)
        self._resources.push_async_callback(self.redis.aclose)
        self._resources.push_async_callback(self._forget_heartbeat)
        self.engine = Engine(self.settings, self.store, make_assistant(self.settings))
        self.renderer = Renderer(self.store)
        self._resources.push_async_callback(self.renderer.close)
        stream = RedisStream(self.redis, self.settings.events_stream, self.settings.events_maxlen)
        self.relay = Relay(self, stream)
        self.add_dynamic_items(ChoiceButton)

    async def setup_hook(self) -> None:
        await self.open()
        guild = discord.Object(self.settings.discord_guild) if self.settings.discord_guild else None
        if guild is not None:  # a server's commands appear at once; global ones can take an hour
            self.tree.copy_global_to(guild=guild)
        await self.tree.sync(guild=guild)
        self._relay_task = asyncio.create_task(self.relay.run(), name="loratrain-relay")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="loratrain-heartbeat")

    async def on_ready(self) -> None:
        log.info("Connected to Discord", extra={"user": str(self.user), "servers": len(self.guilds)})

    async def close(self) -> None:
        """Stop gracefully (see the module's docstring); any further call waits for the same stop."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._closing)

    async def _stop(self) -> None:
        self.stopping = True
        log.info("Bot stopping", extra={"actions_in_flight": self._busy(), "wait_s": STOP_WAIT_S})
        waiting = {asyncio.ensure_future(self._drain())}
        if self._relay_task is not None:
            self._heartbeat_task.cancel()
            self.relay.stop()
            waiting.add(self._relay_task)
        _, late = await asyncio.wait(waiting, timeout=STOP_WAIT_S)
        if late:
            log.warning("Bot stopping without waiting any longer", extra={"waited_s": STOP_WAIT_S})
            for task in late:
                task.cancel()
            await asyncio.wait(late)
        await super().close()
        await self._resources.aclose()
        log.info("Bot stopped")

    def _busy(self) -> int:
        return self._receiving + sum(lock.locked() for lock in self._locks.values())

    async def _drain(self) -> None:
        """Until no action is in flight: a message being received, or anything holding a session's lock."""
        while self._busy():
            await asyncio.sleep(0.05)

    async def _heartbeat(self) -> None:
        while True:
            try:
                await beat(self)
            except (RedisError, OSError) as err:
                log.warning("Could not write the heartbeat", extra={"error": str(err)})
            await asyncio.sleep(HEARTBEAT_S)

    async def _forget_heartbeat(self) -> None:
        """A stopped bot leaves no heartbeat behind, so ``--check`` says at once that it is not running."""
        try:
            await self.redis.delete(health_key(self.settings))
        except (RedisError, OSError) as err:
            log.warning("Could not remove the heartbeat", extra={"error": str(err)})

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
                log.exception("Could not queue a job", extra={"job": job.id, "session": job.session})
                await self.renderer.show(thread, [Text(text=QUEUE_DOWN)])

    async def on_message(self, message: discord.Message) -> None:
        channel = message.channel
        if message.author.bot or message.type not in ANSWERED or channel.type != discord.ChannelType.private_thread:
            return
        session = str(channel.id)
        if self.stopping:  # as if it came while the bot was offline
            log.info("Message left unanswered: the bot is stopping", extra={"session": session})
            return
        if await self.store.session(session) is None:
            return
        if message.attachments:
            self._receiving += 1
            try:
                action = await receive(self.settings, session, message)
            finally:
                self._receiving -= 1
        elif message.content.strip():
            action = Say(text=message.content)
        else:
            return
        async with self.session_lock(session):
            outcome = await self.engine.handle(session, str(message.author.id), action)
            await self.deliver(channel, outcome, private=reply_to(message))


def health_key(settings: Settings) -> str:
    """The bot's heartbeat, beside the event stream it relays (so two installations on one Redis keep apart)."""
    return f"{settings.events_stream}:bot-health"


async def beat(bot: LoraBot) -> None:
    """Record, for ``HEARTBEAT_TTL_S`` seconds, whether the bot is connected to Discord and when its relay last
    read the event stream."""
    facts = {"at": time.time(), "discord": bot.is_ready() and not bot.is_closed(), "relay_read": bot.relay.last_read}
    await bot.redis.set(health_key(bot.settings), json.dumps(facts), ex=HEARTBEAT_TTL_S)


def judge(facts: dict | None, now: float) -> tuple[bool, str]:
    """Whether a heartbeat says the bot is healthy, and why, in one line."""
    if facts is None:
        return False, f"The bot is not running: it has written no heartbeat in the last {HEARTBEAT_TTL_S} s."
    if not facts["discord"]:
        return False, "The bot is running but not connected to Discord."
    if facts["relay_read"] is None or now - facts["relay_read"] > RELAY_STALE_S:
        return False, "The bot is connected to Discord, but its relay is not reading the workers' events."
    return True, f"The bot is connected to Discord; its relay read the events {now - facts['relay_read']:.0f} s ago."


async def check(settings: Settings) -> int:
    """``loratrain bot --check``: 0 when the bot's latest heartbeat says it is healthy, else 1 (no token needed)."""
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        found = await redis.get(health_key(settings))
    except (RedisError, OSError):
        print("The bot's health is unknown: Redis at LORATRAIN_REDIS_URL can't be reached.")
        return 1
    finally:
        await redis.aclose()
    healthy, line = judge(json.loads(found) if found else None, time.time())
    print(line)
    return 0 if healthy else 1


async def serve(bot: LoraBot, token: str) -> None:
    """Run ``bot`` until Discord ends the connection or SIGTERM/SIGINT asks it to stop; either way it
    closes gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with bot:
        running, asked = asyncio.ensure_future(bot.start(token)), asyncio.ensure_future(stop.wait())
        await asyncio.wait({running, asked}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        if running.done():
            running.result()  # a refused token or intent is raised here
        await bot.close()
        running.cancel()  # start() ends once closed; this only covers a stop during login
        await asyncio.wait({running})


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Run the bot until it is stopped, or with ``--check`` say whether the running one is healthy. The
    token comes from the environment and is never logged."""
    if args.check:
        return asyncio.run(check(settings))
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        raise UserError(NO_TOKEN)
    try:
        asyncio.run(serve(LoraBot(settings), token))
    except discord.LoginFailure:
        raise UserError(BAD_TOKEN) from None
    except discord.PrivilegedIntentsRequired:
        raise UserError(NO_INTENT) from None
    except RedisConnectionError:
        raise UserError(NO_REDIS) from None
