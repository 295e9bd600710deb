"""``/train``: open the artist's private thread, or point them back to the one they already have.

The thread is the session: its id is the session id, so every message, upload and button in it
belongs to that project.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.private import followup_to

if TYPE_CHECKING:
    from bot.main import LoraBot

log = logging.getLogger(__name__)

OPENED = (
    "I've opened a private thread for your training project: {thread}. Everything we decide is saved, so you can "
    "leave and come back any time."
)
RESUMED = "Your training project is waiting for you in {thread} — I've posted where we stand there."
WRONG_PLACE = (
    "Please use /train in one of the server's text channels (not in a thread, a voice channel or a forum): "
    "I'll open a private thread for you there."
)
NOT_ALLOWED = (
    "I couldn't open a private thread here: I need the Create Private Threads and Send Messages in Threads "
    "permissions in this channel. Please ask a server admin, or try another channel."
)
DISCORD_TROUBLE = "Discord didn't let me set up your thread just now. Please try /train again in a moment."
ARCHIVE_AFTER = 10080  # minutes (a week, Discord's longest): training runs for hours


@app_commands.command(name="train", description="Start your LoRA training project, or go back to it.")
@app_commands.guild_only()
async def train(interaction: discord.Interaction[LoraBot]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)  # Discord allows 3 s to answer
    try:
        text = await _open(interaction)
    except discord.Forbidden as err:
        log.warning("No permission to open a thread in channel %s: %s", interaction.channel_id, err)
        text = NOT_ALLOWED
    except discord.HTTPException as err:
        log.warning("Discord error during /train: %s", err)
        text = DISCORD_TROUBLE
    try:
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException as err:
        log.warning("Could not answer /train: %s", err)


async def _open(interaction: discord.Interaction[LoraBot]) -> str:
    """Find or create the artist's thread, post the engine's opening there, and say where it is."""
    bot, user, channel = interaction.client, interaction.user, interaction.channel
    owner = str(user.id)
    sessions = await bot.store.sessions_of(owner)
    thread, said = None, RESUMED
    for state in sessions:
        if thread := await bot.session_thread(state["id"]):
            break
    if thread is None:
        if channel is None or channel.type != discord.ChannelType.text:
            return WRONG_PLACE
        thread = await channel.create_thread(
            name=f"{_slug(user.display_name)}-train-{len(sessions) + 1}",
            type=discord.ChannelType.private_thread,
            auto_archive_duration=ARCHIVE_AFTER,
            invitable=False,
        )
        said = OPENED
    session = str(thread.id)
    async with bot.session_lock(session):
        outcome = await bot.engine.start(session, owner, user.display_name)
        await bot.deliver(thread, outcome, private=followup_to(interaction))
    await thread.add_user(user)  # after posting: that also reopens an archived thread
    return said.format(thread=thread.mention)


def _slug(name: str) -> str:
    return re.sub(r"\W+", "-", name.lower()).strip("-_")[:80] or "artist"
