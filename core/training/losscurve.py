"""The loss curve as a picture for the artist's thread and ``progress.md``.

Each step's loss is drawn faintly and its moving average boldly: LoRA loss is noisy, and the trend is
what tells whether the model is learning. Checkpoints are vertical lines, so the artist can see where
the saved versions sit on the curve. Pillow only, so the bot and the CLI draw it without matplotlib.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from core.grimoire import write_bytes_atomic

BACKGROUND = (255, 255, 255)
INK = (60, 60, 60)
GRID = (232, 232, 232)
RAW = (175, 198, 235)
AVERAGE = (25, 75, 170)
CHECKPOINT = (230, 140, 30)
TICKS = 4


def _font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed (it has the dashes and accents of titles and names), else Pillow's own."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """The mean of the finite values among each point's last ``window`` (NaN where there are none)."""
    averages = []
    for i in range(len(values)):
        finite = [v for v in values[max(0, i - window + 1) : i + 1] if math.isfinite(v)]
        averages.append(sum(finite) / len(finite) if finite else math.nan)
    return averages


def _polyline(pen: ImageDraw.ImageDraw, points: list[tuple[float, float] | None], colour, width: int) -> None:
    """Draw the runs of points between gaps (``None``: a NaN), a lone point as a dot."""
    run: list[tuple[float, float]] = []
    for point in [*points, None]:
        if point is not None:
            run.append(point)
            continue
        if len(run) == 1:
            (x, y), r = run[0], width + 1
            pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif run:
            pen.line(run, fill=colour, width=width, joint="curve")
        run = []


def draw(
    losses: list[float],
    path: Path,
    title: str,
    checkpoints: Sequence[int] = (),
    width: int = 800,
    height: int = 400,
) -> Path:
    """Draw ``losses`` (one per step, step 1 first) into a PNG at ``path``, written atomically.

    ``checkpoints`` are step numbers to mark. NaN and infinite losses leave gaps; with no finite loss
    the axes are drawn with a note, so a curve can be shown before the first step.
    """
    image = Image.new("RGB", (width, height), BACKGROUND)
    pen = ImageDraw.Draw(image)
    font = _font()
    left, right, top, bottom = min(64, width // 4), width - min(16, width // 20), 40, height - 34

    finite = [v for v in losses if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (high - low) * 0.05 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad
    steps = max(len(losses), max(checkpoints, default=0), 2)

    def x(step: float) -> float:
        return left + (right - left) * (step - 1) / (steps - 1)

    def y(value: float) -> float:
        return bottom - (bottom - top) * (value - low) / (high - low)

    pen.text((left, 8), title, fill=INK, font=font)
    for i in range(TICKS + 1):
        value = low + (high - low) * i / TICKS
        pen.line([(left, y(value)), (right, y(value))], fill=GRID)
        label = f"{value:.3g}"
        pen.text((left - 6 - pen.textlength(label, font=font), y(value) - 6), label, fill=INK, font=font)
    for step in sorted({1 + round((steps - 1) * i / TICKS) for i in range(TICKS + 1)}):
        label = str(step)
        pen.text((x(step) - pen.textlength(label, font=font) / 2, bottom + 6), label, fill=INK, font=font)
    pen.line([(left, top), (left, bottom), (right, bottom)], fill=INK)
    pen.text((right - pen.textlength("step", font=font), bottom + 20), "step", fill=INK, font=font)
    pen.text((4, top - 22), "loss", fill=INK, font=font)

    for step in checkpoints:
        if 1 <= step <= steps:
            pen.line([(x(step), top), (x(step), bottom)], fill=CHECKPOINT, width=2)
    window = max(1, min(50, len(losses) // 10))
    for series, colour, line_width in ((losses, RAW, 1), (moving_average(losses, window), AVERAGE, 3)):
        points = [(x(i + 1), y(v)) if math.isfinite(v) else None for i, v in enumerate(series)]
        _polyline(pen, points, colour, line_width)
    if not finite:
        note = "No loss values yet"
        pen.text(((left + right - pen.textlength(note, font=font)) / 2, (top + bottom) / 2), note, fill=INK, font=font)

    data = io.BytesIO()
    image.save(data, format="PNG")
    write_bytes_atomic(path, data.getvalue())
    return path
