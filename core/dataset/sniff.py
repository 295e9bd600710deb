"""What a file really is, from its first bytes, before any decoder sees it.

Artists send files with the wrong extension, and attackers send anything with an image extension.
Only formats on the allowlist are ever handed to Pillow; everything else is named in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass

# Formats Pillow may decode for us, and that training tools can read once we convert them to RGB.
HEAD_BYTES = 512
DECODABLE = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class Kind:
    format: str | None  # a Pillow format name from DECODABLE, or None when we must not decode it
    label: str  # what to call the file in a message to the artist, with its article


_MAGIC: list[tuple[bytes, int, Kind]] = [
    (b"\xff\xd8\xff", 0, Kind("JPEG", "a JPEG image")),
    (b"\x89PNG\r\n\x1a\n", 0, Kind("PNG", "a PNG image")),
    (b"GIF87a", 0, Kind("GIF", "a GIF image")),
    (b"GIF89a", 0, Kind("GIF", "a GIF image")),
    (b"BM", 0, Kind("BMP", "a BMP image")),
    (b"II*\x00", 0, Kind("TIFF", "a TIFF image")),
    (b"MM\x00*", 0, Kind("TIFF", "a TIFF image")),
    (b"8BPS", 0, Kind(None, "a Photoshop document (PSD)")),
    (b"%PDF", 0, Kind(None, "a PDF document")),
    (b"\x00\x00\x00\x0cJXL ", 0, Kind(None, "a JPEG XL image")),
    (b"\xff\x0a", 0, Kind(None, "a JPEG XL image")),
    (b"\x00\x00\x01\x00", 0, Kind(None, "a Windows icon (ICO)")),
    (b"SIMPLE  =", 0, Kind(None, "a FITS astronomy file")),
    (b"PK\x03\x04", 0, Kind(None, "a ZIP archive")),
    (b"Rar!", 0, Kind(None, "a RAR archive")),
    (b"\x1f\x8b", 0, Kind(None, "a compressed (gzip) file")),
]
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")
_VIDEO_BRANDS = (b"isom", b"mp41", b"mp42", b"qt  ", b"M4V ")


def sniff(head: bytes) -> Kind | None:
    """Identify a file from its first bytes (``HEAD_BYTES`` of them); None when it is no image format we know."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Kind("WEBP", "a WebP image")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return Kind(None, "an AVIF image")
        if brand in _HEIF_BRANDS:
            return Kind(None, "a HEIC photo (the iPhone's format)")
        if brand in _VIDEO_BRANDS:
            return Kind(None, "a video")
    for magic, offset, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return Kind(None, "an SVG vector drawing")
    return None
