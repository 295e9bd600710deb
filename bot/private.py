"""Where a private reply (one only the person who acted should see) goes on Discord."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

Private = Callable[[str], Awaitable[object]]
SHOWN_FOR = 60  # seconds a private answer to a plain message stays up


def followup_to(interaction: discord.Interaction) -> Private:
    """After a button or a command: an ephemeral message, seen by that person alone."""
    return lambda text: interaction.followup.send(text, ephemeral=True)


def reply_to(message: discord.Message) -> Private:
    """After a plain message, which can't be answered ephemerally: a reply that removes itself."""
    return lambda text: message.reply(text, mention_author=False, delete_after=SHOWN_FOR)
