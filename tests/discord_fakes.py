"""Stand-ins for the few discord.py objects the bot touches, so tests drive its real handlers (the
/train callback, ``on_message``, the buttons' ``from_custom_id`` and ``callback``, a modal's submit)
without a Discord connection. Every call is written to one ordered log, so a test can tell what
happened first.

Messages keep their buttons as Discord does, as component data (``discord.ActionRow``), and a press
rebuilds them with ``View.from_message`` as discord.py does, so a button made by an earlier bot
object works only through its custom id. A modal comes back as Discord sends it: the submitted values
as component payloads, which discord.py's own submit path writes into the modal's inputs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord

from bot.buttons import TEMPLATE, ChoiceButton
from bot.main import LoraBot
from core.settings import Settings


class World:
    """One fake Discord: snowflakes, channels by id, and the log of every call."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.channels: dict[int, Thread | TextChannel] = {}
        self._ids = itertools.count(1_300_000_000_000_000_001)

    def new_id(self) -> int:
        return next(self._ids)

    def record(self, call: str, **details: Any) -> None:
        self.log.append((call, details))

    def calls(self, call: str) -> list[dict[str, Any]]:
        return [details for name, details in self.log if name == call]


def http_error(kind: type[discord.HTTPException], status: int, text: str = "") -> discord.HTTPException:
    return kind(SimpleNamespace(status=status, reason=text or "error"), text)


class User:
    def __init__(self, world: World, name: str, bot: bool = False):
        self.id, self.name, self.display_name, self.bot = world.new_id(), name.lower(), name, bot

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


class Message:
    def __init__(self, world: World, channel: Thread, author: User, content: str = "", **kwargs: Any):
        self.world, self.id, self.channel, self.author, self.content = world, world.new_id(), channel, author, content
        self.attachments: list[Attachment] = kwargs.get("attachments", [])
        self.type = kwargs.get("type", discord.MessageType.default)
        self.components: list[discord.ActionRow] = []
        self.file: discord.File | None = kwargs.get("file")
        self.set_view(kwargs.get("view"))

    def set_view(self, view: discord.ui.View | None) -> None:
        self.components = [discord.ActionRow(row) for row in view.to_components()] if view else []

    def buttons(self) -> list[discord.Button]:
        return [button for row in self.components for button in row.children]

    async def edit(self, content: str | None = None, **kwargs: Any) -> Message:
        self.world.record("message.edit", message=self.id, content=content, **kwargs)
        if content is not None:
            self.content = content
        return self

    async def reply(self, content: str, **kwargs: Any) -> Message:
        self.world.record("message.reply", message=self.id, content=content, **kwargs)
        return Message(self.world, self.channel, User(self.world, "loratrain", bot=True), content)


class PartialMessage:
    def __init__(self, channel: Thread, message_id: int):
        self.channel, self.id = channel, message_id

    async def edit(self, content: str | None = None, **kwargs: Any) -> Message:
        message = next((m for m in self.channel.messages if m.id == self.id), None)
        if message is None:
            raise http_error(discord.NotFound, 404, "Unknown Message")
        return await message.edit(content=content, **kwargs)


class Thread:
    type = discord.ChannelType.private_thread

    def __init__(self, world: World, name: str, parent: TextChannel):
        self.world, self.id, self.name, self.parent = world, world.new_id(), name, parent
        self.messages: list[Message] = []
        self.members: list[User] = []
        self.fail_with: discord.HTTPException | None = None  # the next send raises this
        world.channels[self.id] = self

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    async def send(self, content: str | None = None, **kwargs: Any) -> Message:
        self.world.record("thread.send", thread=self.id, content=content, **kwargs)
        if error := self.fail_with:
            self.fail_with = None
            raise error
        if file := kwargs.get("file"):
            file.close()
        message = Message(self.world, self, User(self.world, "loratrain", bot=True), content or "", **kwargs)
        self.messages.append(message)
        return message

    async def add_user(self, user: User) -> None:
        self.world.record("thread.add_user", thread=self.id, user=user.id)
        self.members.append(user)

    def get_partial_message(self, message_id: int) -> PartialMessage:
        return PartialMessage(self, message_id)

    def said(self) -> list[str]:
        """Everything the bot posted here, in order (the latest text of edited messages)."""
        return [m.content for m in self.messages]


class TextChannel:
    type = discord.ChannelType.text

    def __init__(self, world: World, name: str = "art-studio"):
        self.world, self.id, self.name = world, world.new_id(), name
        world.channels[self.id] = self

    async def create_thread(self, **kwargs: Any) -> Thread:
        self.world.record("channel.create_thread", channel=self.id, **kwargs)
        return Thread(self.world, kwargs["name"], self)


class Attachment:
    def __init__(self, filename: str, data: bytes, size: int | None = None):
        self.filename, self.data = filename, data
        self.size = len(data) if size is None else size
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        return self.data


class Response:
    def __init__(self, world: World):
        self.world, self.done = world, False
        self.modal: discord.ui.Modal | None = None  # the box this answer opened, if any

    def is_done(self) -> bool:
        return self.done

    async def defer(self, **kwargs: Any) -> None:
        assert not self.done, "an interaction can be answered only once"
        self.world.record("response.defer", **kwargs)
        self.done = True

    async def send_modal(self, modal: discord.ui.Modal, /) -> None:
        """A modal is an interaction's answer too: it must be the first and only one."""
        assert not self.done, "an interaction can be answered only once"
        assert isinstance(modal, discord.ui.Modal), modal
        self.world.record("response.send_modal", modal=modal)
        self.modal, self.done = modal, True


class Followup:
    def __init__(self, world: World):
        self.world = world

    async def send(self, content: str, **kwargs: Any) -> None:
        self.world.record("followup.send", content=content, **kwargs)


class Interaction:
    def __init__(self, world: World, client: LoraBot, user: User, channel: Any, message: Message | None = None):
        self.world, self.client, self.user, self.channel, self.message = world, client, user, channel, message
        self.response, self.followup = Response(world), Followup(world)

    @property
    def channel_id(self) -> int | None:
        return getattr(self.channel, "id", None)

    async def edit_original_response(self, **kwargs: Any) -> None:
        self.world.record("interaction.edit_original_response", message=self.message.id, **kwargs)
        if "view" in kwargs:
            self.message.set_view(kwargs["view"])


class Bot(LoraBot):
    """The real bot, whose channel look-ups answer from the fake world instead of Discord."""

    def __init__(self, settings: Settings, world: World):
        super().__init__(settings)
        self.world = world

    def get_channel(self, channel_id: int) -> Any:
        return self.world.channels.get(channel_id)

    async def fetch_channel(self, channel_id: int) -> Any:
        raise http_error(discord.NotFound, 404, "Unknown Channel")


async def press(bot: Bot, message: Message, label: str, user: User) -> Interaction:
    """Press the button labelled ``label`` on ``message`` the way discord.py dispatches it: the view
    rebuilt from the message, the dynamic item made from its custom id, then its callback."""
    interaction = Interaction(bot.world, bot, user, message.channel, message)
    view = discord.ui.View.from_message(message, timeout=None)
    base = next(item for item in view.children if isinstance(item, discord.ui.Button) and item.label == label)
    match = TEMPLATE.fullmatch(base.custom_id)
    assert match, base.custom_id
    item = await ChoiceButton.from_custom_id(interaction, base, match)
    view.remove_item(base)
    view.add_item(item)
    await item.callback(interaction)
    return interaction


async def submit(bot: Bot, modal: discord.ui.Modal, user: User, message: Message, *texts: str) -> Interaction:
    """Submit ``modal`` (opened from a button on ``message``) the way discord.py dispatches it: the
    texts, one per text input in order (an input without one keeps the text it was opened with), arrive
    as Discord's component payloads, which the modal's own submit task writes into its inputs before
    ``interaction_check`` and ``on_submit``. An error is raised, not logged away by ``on_error``, so a
    test sees it."""
    inputs = [item for item in modal.walk_children() if isinstance(item, discord.ui.TextInput)]
    assert len(texts) <= len(inputs), (texts, inputs)
    values = [*texts, *(item.default or "" for item in inputs[len(texts) :])]
    components: list[dict[str, Any]] = [  # as Discord sends them: each input in its action row
        {"type": 1, "components": [{"type": 4, "custom_id": item.custom_id, "value": value}]}
        for item, value in zip(inputs, values, strict=True)
    ]
    interaction = Interaction(bot.world, bot, user, message.channel, message)

    async def raise_it(interaction: Interaction, error: Exception, /) -> None:
        raise error

    modal.on_error = raise_it  # type: ignore[method-assign]
    await modal._scheduled_task(interaction, components, {})  # what ViewStore.dispatch_modal runs
    return interaction


def file_names(world: World) -> list[str]:
    return [Path(call["file"].filename).name for call in world.calls("thread.send") if call.get("file")]
