"""Captions: proposed by Claude vision or the local style analyzer (``core.captions.proposals``),
composed for the base model's family, approved by the artist, written as one line of UTF-8 beside each
picture (``core.captions.formats``).

The package itself imports nothing heavy: reading or writing a caption must not load the Claude SDK.
"""
