"""Cheap picture features for judging a dataset's variety: colour, lighting, composition, layout.

They come from the 64×64 thumbnail every inspection keeps, so curation needs no second decode and no
model. They can't tell a cat from a castle; they can tell that twenty pictures share one layout, one
palette or one light, which is what a too-narrow dataset looks like to a trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Hue families by the upper edge of their hue range, in degrees.
HUES = [
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (160, "green"),
    (200, "teal"),
    (255, "blue"),
    (290, "purple"),
    (335, "pink"),
    (360, "red"),
]
NEUTRAL_SATURATION = 0.18  # below this the picture reads as grey / neutral


@dataclass
class Features:
    hue: str  # dominant hue family, or "neutral"
    warmth: float  # -1 all cool … +1 all warm
    saturation: float  # 0..1
    key: float  # mean brightness 0..1 (low key / high key)
    contrast: float  # spread of brightness 0..~0.5
    focus_x: float  # where the detail sits, 0 left … 1 right
    focus_y: float  # 0 top … 1 bottom
    layout: np.ndarray  # 8×8 grey, standardised and unit length: the picture's arrangement
    colours: np.ndarray  # 4×4×4 colour histogram, sums to 1

    @property
    def lighting(self) -> str:
        return "dark (low key)" if self.key < 0.35 else "bright (high key)" if self.key > 0.65 else "mid-tone"

    @property
    def placement(self) -> str:
        return "left" if self.focus_x < 0.4 else "right" if self.focus_x > 0.6 else "centre"


def _hue_family(degrees: float) -> str:
    return next(name for edge, name in HUES if degrees < edge)


def features(thumb: np.ndarray) -> Features:
    hsv = np.asarray(Image.fromarray(thumb).convert("HSV"), dtype=np.float64) / 255.0
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    weight = sat * val
    if weight.mean() < NEUTRAL_SATURATION * 0.5:
        family = "neutral"
    else:
        hist, edges = np.histogram(hue, bins=36, range=(0, 360), weights=weight)
        family = _hue_family(float(edges[hist.argmax()] + 5.0))
    warm = ((hue < 70) | (hue >= 335)) * weight
    cool = ((hue >= 160) & (hue < 290)) * weight
    warmth = float((warm.sum() - cool.sum()) / max(warm.sum() + cool.sum(), 1e-9))
    grey = np.asarray(Image.fromarray(thumb).convert("L"), dtype=np.float64) / 255.0
    # Visual weight: how far each patch of a 16×16 version stands out from the rest of its row and
    # column (brush texture and grain average away at that size; sky, ground and backdrop are what
    # rows and columns share; a subject stands out from both).
    coarse = np.asarray(Image.fromarray(thumb).resize((16, 16), Image.Resampling.BOX), dtype=np.float64)
    off_row = np.linalg.norm(coarse - np.median(coarse, axis=1, keepdims=True), axis=2)
    off_col = np.linalg.norm(coarse - np.median(coarse, axis=0, keepdims=True), axis=2)
    energy = np.minimum(off_row, off_col) ** 2
    total = max(energy.sum(), 1e-9)
    ys, xs = np.mgrid[0:16, 0:16] / 15.0
    layout = np.asarray(Image.fromarray(thumb).convert("L").resize((8, 8), Image.Resampling.BOX), float).ravel()
    layout = layout - layout.mean()
    layout /= max(np.linalg.norm(layout), 1e-9)
    bins = (thumb // 64).reshape(-1, 3).astype(np.int64)
    colours = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64) / len(bins)
    return Features(
        hue=family,
        warmth=warmth,
        saturation=float(sat.mean()),
        key=float(grey.mean()),
        contrast=float(grey.std()),
        focus_x=float((energy * xs).sum() / total),
        focus_y=float((energy * ys).sum() / total),
        layout=layout,
        colours=colours,
    )


def likeness_matrix(items: list[Features]) -> np.ndarray:
    """Pairwise likeness 0..1 of arrangement and colour together (vectorised; 1 = alike)."""
    layouts = np.stack([f.layout for f in items])
    colours = np.stack([f.colours for f in items])
    layout_sim = np.clip(layouts @ layouts.T, 0, 1)
    colour_sim = np.minimum(colours[:, None, :], colours[None, :, :]).sum(axis=2)  # histogram intersection
    return 0.5 * layout_sim + 0.5 * colour_sim
