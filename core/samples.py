"""Procedural sample pictures: the demo's dataset and the tests' material, made here, no downloads.

Each picture is a small painted scene — sky gradient, rolling hills, one subject (sun, tree, house,
figure or flower), brush strokes and grain — drawn from a seed, so a seed always gives the same
picture and different seeds give different pictures. ``variant`` makes the altered copies a real
dataset contains by mistake (resized, re-compressed, recoloured, cropped, mirrored).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

PALETTES = [
    [(38, 70, 83), (42, 157, 143), (233, 196, 106), (244, 162, 97), (231, 111, 81)],
    [(13, 27, 42), (27, 38, 59), (65, 90, 119), (119, 141, 169), (224, 225, 221)],
    [(96, 108, 56), (40, 54, 24), (254, 250, 224), (221, 161, 94), (188, 108, 37)],
    [(255, 190, 11), (251, 86, 7), (255, 0, 110), (131, 56, 236), (58, 134, 255)],
    [(53, 80, 112), (109, 89, 122), (181, 101, 118), (229, 107, 111), (234, 172, 139)],
    [(0, 48, 73), (214, 40, 40), (247, 127, 0), (252, 191, 73), (234, 226, 183)],
]
SUBJECTS = ("sun", "tree", "house", "figure", "flower")


def scene(
    seed: int,
    size: tuple[int, int] = (1152, 1024),
    subject: str | None = None,
    subject_at: tuple[float, float] | None = None,
    palette: int | None = None,
) -> Image.Image:
    """One painted scene; ``subject``, ``subject_at`` (fractions of the frame) and ``palette`` pin
    what would otherwise come from the seed, to make look-alike pictures that are not duplicates."""
    rng = np.random.default_rng(seed)
    w, h = size
    colours = PALETTES[palette if palette is not None else int(rng.integers(len(PALETTES)))]
    top, bottom = (np.array(colours[i], float) for i in rng.choice(len(colours), 2, replace=False))
    t = np.linspace(0, 1, h)[:, None, None]
    sky = top * (1 - t) + bottom * t
    canvas = np.broadcast_to(sky, (h, w, 3)).copy()
    # Soft low-frequency clouds: upsampled noise.
    clouds = np.asarray(
        Image.fromarray((rng.random((6, 8)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), float
    )[..., None]
    canvas = canvas * (0.85 + 0.3 * clouds / 255.0)
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    for layer in range(int(rng.integers(1, 4))):
        base = h * (0.55 + 0.12 * layer + rng.uniform(-0.05, 0.05))
        xs = np.linspace(0, w, 40)
        ys = base + h * 0.06 * np.sin(xs / w * rng.uniform(2, 7) + rng.uniform(0, 6))
        colour = colours[int(rng.integers(len(colours)))]
        draw.polygon([(0, h)] + list(zip(xs, ys, strict=True)) + [(w, h)], fill=colour + (255,))
    kind = subject or SUBJECTS[int(rng.integers(len(SUBJECTS)))]
    fx, fy = subject_at or (rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.6))
    _subject(draw, kind, fx * w, fy * h, min(w, h) * rng.uniform(0.12, 0.2), colours, rng)
    for _ in range(160):  # brush strokes
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length, angle = rng.uniform(20, 90), rng.uniform(0, np.pi)
        colour = colours[int(rng.integers(len(colours)))] + (int(rng.integers(40, 110)),)
        draw.line(
            [(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))],
            fill=colour,
            width=int(rng.integers(3, 9)),
        )
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    grain = rng.normal(0, 6, (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, float) + grain, 0, 255).astype(np.uint8))


def _subject(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, colours, rng) -> None:
    c1, c2 = (colours[i] + (255,) for i in rng.choice(len(colours), 2, replace=False))
    if kind == "sun":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c1)
        for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            draw.line(
                [
                    (x + 1.2 * r * np.cos(a), y + 1.2 * r * np.sin(a)),
                    (x + 1.6 * r * np.cos(a), y + 1.6 * r * np.sin(a)),
                ],
                fill=c1,
                width=int(r / 8),
            )
    elif kind == "tree":
        draw.rectangle([x - r / 6, y, x + r / 6, y + 2 * r], fill=c2)
        draw.ellipse([x - r, y - 1.4 * r, x + r, y + 0.4 * r], fill=c1)
    elif kind == "house":
        draw.rectangle([x - r, y, x + r, y + 1.4 * r], fill=c1)
        draw.polygon([(x - 1.2 * r, y), (x, y - r), (x + 1.2 * r, y)], fill=c2)
        draw.rectangle([x - r / 4, y + 0.7 * r, x + r / 4, y + 1.4 * r], fill=c2)
    elif kind == "figure":
        draw.ellipse([x - r / 3, y - r, x + r / 3, y - r / 3], fill=c1)
        draw.polygon([(x, y - r / 3), (x - r / 1.5, y + 1.6 * r), (x + r / 1.5, y + 1.6 * r)], fill=c2)
    else:  # flower
        for a in np.linspace(0, 2 * np.pi, 7, endpoint=False):
            px, py = x + 0.6 * r * np.cos(a), y + 0.6 * r * np.sin(a)
            draw.ellipse([px - r / 2.5, py - r / 2.5, px + r / 2.5, py + r / 2.5], fill=c1)
        draw.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], fill=c2)
        draw.line([(x, y + r / 3), (x, y + 2.2 * r)], fill=c2, width=int(r / 6))


def variant(img: Image.Image, how: str, amount: float = 1.0) -> Image.Image:
    """An altered copy of ``img`` of the kind that makes a near-duplicate."""
    w, h = img.size
    if how == "resized":
        return img.resize((int(w * 0.6 * amount + w * 0.4 * (1 - amount)), int(h * 0.6)), Image.Resampling.LANCZOS)
    if how == "recompressed":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(40 + 30 * (1 - amount)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "recoloured":
        img = ImageEnhance.Color(img).enhance(1 + 0.25 * amount)
        return ImageEnhance.Brightness(img).enhance(1 + 0.1 * amount)
    if how == "cropped":
        dx, dy = int(w * 0.08 * amount), int(h * 0.06 * amount)
        return img.crop((dx, dy // 2, w - dx // 2, h - dy))
    if how == "mirrored":
        return ImageOps.mirror(img)
    raise ValueError(f"unknown variant {how!r}")


def write_jpeg(img: Image.Image, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality)
    return path
