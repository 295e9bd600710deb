"""A grid of pictures as one labelled image for the artist's thread: column headers across the top, row
labels down the left, a title. One image, because the comparison is the point: the artist reads a row
left to right and sees what each step of the weight adds. Pillow only, like the loss curve."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from core.grimoire import write_bytes_atomic
from core.training.losscurve import _font

CELL = 256  # largest side of a cell: enough to judge a picture, small enough for a 6×8 grid
GAP = 8
LABEL_WIDTH = 150  # the row labels' column; longer names wrap
HEADER = 28  # the column headers' row
TITLE = 36
# Discord refuses files over 8 MB. At 3 bytes a pixel this many pixels stay under it even where PNG
# cannot compress at all, so the cells shrink for a grid with many rows instead of the file growing.
MAX_PIXELS = 2_400_000
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
EMPTY = (235, 235, 235)  # a cell with no picture


def cell_size(rows: int, columns: int) -> int:
    """The side of each cell: ``CELL``, or less when the whole picture would pass ``MAX_PIXELS``."""
    side = CELL
    while side > 32 and math.prod(_size(rows, columns, side)) > MAX_PIXELS:
        side -= 8
    return side


def _size(rows: int, columns: int, side: int) -> tuple[int, int]:
    return LABEL_WIDTH + columns * (side + GAP) + GAP, TITLE + HEADER + rows * (side + GAP) + GAP


def _wrap(pen: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Words on as few lines as fit ``width`` (a single over-long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and pen.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def save_image(image: Image.Image, path: Path) -> Path:
    """Write ``image`` atomically as JPEG for a .jpg/.jpeg path, else PNG (so readers never see half a file)."""
    data = io.BytesIO()
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.convert("RGB").save(data, format="JPEG", quality=90)
    else:
        image.save(data, format="PNG")
    write_bytes_atomic(path, data.getvalue())
    return path


def compose(rows: list[str], columns: list[str], images: dict[tuple[int, int], Path], path: Path, title: str) -> Path:
    """Draw ``images[(row, column)]`` (indexes into ``rows`` and ``columns``) into one labelled picture at
    ``path``. Each picture is scaled to fit its cell, centred; a missing one leaves a grey cell."""
    side = cell_size(len(rows), len(columns))
    canvas = Image.new("RGB", _size(len(rows), len(columns), side), BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    font, title_font = _font(14), _font(18)
    pen.text((GAP, (TITLE - 18) // 2), title, fill=INK, font=title_font)
    for c, header in enumerate(columns):
        x = LABEL_WIDTH + GAP + c * (side + GAP)
        pen.text((x + (side - pen.textlength(header, font=font)) / 2, TITLE + 6), header, fill=INK, font=font)
    for r, label in enumerate(rows):
        y = TITLE + HEADER + r * (side + GAP)
        lines = _wrap(pen, label, font, LABEL_WIDTH - 2 * GAP)
        for i, line in enumerate(lines):
            pen.text((GAP, y + (side - 18 * len(lines)) / 2 + 18 * i), line, fill=INK, font=font)
        for c in range(len(columns)):
            x = LABEL_WIDTH + GAP + c * (side + GAP)
            if (r, c) not in images:
                pen.rectangle((x, y, x + side - 1, y + side - 1), fill=EMPTY)
                continue
            with Image.open(images[(r, c)]) as picture:
                tile = picture.convert("RGB")
            scale = side / max(tile.size)
            size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
            tile = tile.resize(size, Image.Resampling.LANCZOS)
            canvas.paste(tile, (x + (side - tile.width) // 2, y + (side - tile.height) // 2))
    return save_image(canvas, path)
