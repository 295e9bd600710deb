"""Captions: proposed by Claude vision or the local style analyzer, composed for the base model's family,
approved by the artist, written as one line of UTF-8 beside each picture."""

from core.captions.formats import compose, read_caption, write_caption
from core.captions.proposals import Proposal, propose

__all__ = ["Proposal", "compose", "propose", "read_caption", "write_caption"]
