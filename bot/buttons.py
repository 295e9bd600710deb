"""Buttons for the engine's choices that keep working after a restart.

A button carries everything a press needs in its custom id, ``lt:<session>:<ref>:<value>``, and the
rest is in SQLite, so no view lives in memory: discord.py rebuilds a ``ChoiceButton`` from any
matching id once the class is registered (``bot.add_dynamic_items``), even for messages posted before
the bot restarted.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord

from bot.private import followup_to
from core.engine import Choice, Decide, Text

if TYPE_CHECKING:
    from bot.main import LoraBot

log = logging.getLogger(__name__)

# Session: a thread id. Ref: as the engine's CHOICE_REF. Value: an option (never holds a colon).
TEMPLATE = re.compile(r"lt:(?P<session>[0-9]+):(?P<ref>[a-z]+(?::[0-9a-f]{1,16})?):(?P<value>[^:]+)\Z")
MAX_BUTTONS = 25  # Discord: 5 rows of 5
MODAL_OPEN_S = 900  # an Adjust box left open this long is forgotten; the sample stays open to adjust again


class ChoiceButton(discord.ui.DynamicItem[discord.ui.Button], template=TEMPLATE):
    def __init__(
        self, session: str, ref: str, value: str, label: str, style: discord.ButtonStyle = discord.ButtonStyle.primary
    ):
        super().__init__(discord.ui.Button(label=label[:80], style=style, custom_id=f"lt:{session}:{ref}:{value}"))
        self.session, self.ref, self.value = session, ref, value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> ChoiceButton:
        return cls(match["session"], match["ref"], match["value"], item.label or match["value"], item.style)

    async def callback(self, interaction: discord.Interaction[LoraBot]) -> None:
        """Answer Discord first (it allows 3 s), then let the engine judge the press: it also decides
        whether this person may press it at all. Adjust answers with a box to edit the caption in (a
        modal must be the first answer, so it comes before any work)."""
        if self.value == "adjust":
            caption = await interaction.client.engine.caption_offered(self.session, self.ref, str(interaction.user.id))
            if caption is not None:  # else the engine explains (not yours, or already decided)
                await interaction.response.send_modal(AdjustCaption(self, caption))
                return
        await interaction.response.defer()
        bot = interaction.client
        async with bot.session_lock(self.session):
            await self.decide(interaction, Decide(ref=self.ref, value=self.value))

    async def decide(self, interaction: discord.Interaction[LoraBot], action: Decide) -> None:
        """Hand the press to the engine (holding the session's lock) and show what it answers."""
        bot = interaction.client
        outcome = await bot.engine.handle(self.session, str(interaction.user.id), action)
        if any(not (isinstance(reply, Text) and reply.private) for reply in outcome.replies):
            await self._close(interaction)
        await bot.deliver(interaction.channel, outcome, private=followup_to(interaction))

    async def _close(self, interaction: discord.Interaction) -> None:
        """Grey out the question's buttons once it is answered, keeping the pressed one marked."""
        for child in self.view.children:
            button = child.item if isinstance(child, discord.ui.DynamicItem) else child
            if isinstance(button, discord.ui.Button):
                button.disabled, button.style = True, discord.ButtonStyle.secondary
        self.item.style = discord.ButtonStyle.success
        self.view.stop()  # a finished view is not kept in memory: the buttons are disabled for good
        try:
            await interaction.edit_original_response(view=self.view)
        except discord.HTTPException as err:
            log.warning("Could not disable the buttons of message %s: %s", interaction.message.id, err)


class AdjustCaption(discord.ui.Modal, title="Adjust the caption"):
    """The caption, pre-filled, for the artist to rewrite; what they submit becomes the sample's caption
    and an example for the rest."""

    def __init__(self, button: ChoiceButton, caption: str):
        super().__init__(timeout=MODAL_OPEN_S)
        self.button = button
        self.caption = discord.ui.TextInput(
            label="Caption", style=discord.TextStyle.long, default=caption[:4000], max_length=4000
        )
        self.add_item(self.caption)

    async def on_submit(self, interaction: discord.Interaction[LoraBot]) -> None:
        await interaction.response.defer()
        async with interaction.client.session_lock(self.button.session):
            await self.button.decide(interaction, Decide(ref=self.button.ref, value="adjust", text=self.caption.value))


def choice_view(session: str, choice: Choice) -> discord.ui.View:
    """The buttons for one of the engine's choices (at most 25, Discord's limit)."""
    if len(choice.options) > MAX_BUTTONS:
        log.error("Choice %r offers %d options; showing the first %d", choice.ref, len(choice.options), MAX_BUTTONS)
    view = discord.ui.View(timeout=None)
    for option in choice.options[:MAX_BUTTONS]:
        view.add_item(ChoiceButton(session, choice.ref, option.value, option.label))
    return view
