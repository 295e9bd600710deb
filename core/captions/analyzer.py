"""The local style analyzer: how a picture is made, in a painter's words, from its pixels alone.

It captions when there is no Claude (no key, offline, or Claude couldn't caption a picture) and gives
Claude measured hints. numpy and Pillow only, no model to download: palette, warm and cool, value key
and contrast, saturation, edges, grain, and only the composition cues that measure reliably (a compact
subject in the centre, a low or high horizon, one dominant diagonal). It cannot say what is in the
picture: the artist adds that. Deterministic, and fast enough to run over a whole dataset: JPEGs are
decoded at reduced scale (draft) and everything runs on a copy at most 256 px on its long side.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.dataset.features import Features, features
from core.dataset.inspect import to_rgb

WORK_SIDE = 256
# Hue ranges in degrees, as core.dataset.features counts warm and cool.
WARM_BELOW, WARM_FROM, COOL = 70.0, 335.0, (160.0, 290.0)
WARM_FAMILIES = {"red", "orange", "yellow", "pink"}
NEUTRALS = ("neutral greys", "black and white")  # by contrast: low, high
NEUTRAL_CHROMA, MUTED_CHROMA, VIVID_CHROMA = 0.06, 0.18, 0.40  # mean chroma (HSV saturation × value)
KEY_EDGES, KEY_WORDS = (0.35, 0.65), ("low-key dark values", "mid-tone values", "high-key light values")
CONTRAST_EDGES = (0.1, 0.28)  # standard deviation of brightness, 0..1
CONTRAST_WORDS = ("soft low contrast", "moderate contrast", "strong light-dark contrast")
EDGE_STEP = 0.15  # a brightness step this big between neighbouring pixels of the working copy is crisp
HARD, SOFT = 0.5, 0.2  # share of the picture's brightness changes made in crisp steps
GRAINY, SMOOTH = 0.02, 0.006  # estimated noise (standard deviation, 0..1) of the working copy
# σ of i.i.d. noise from the lower quartile of |x - mean of 4 neighbours|, which is 0.3186 · 1.118σ
# (the quartile, not the median, so that line work covering up to three pixels in four is not noise).
QUARTILE_TO_SIGMA = 1 / (0.3186 * 1.118)


@dataclass
class Measures:
    look: Features  # hue family, warmth, key and contrast, as curation measures them
    chroma: float  # mean colourfulness 0..1
    light_warmth: float  # warmth (-1 cool … +1 warm) of the brightest third of the pixels
    shadow_warmth: float  # of the darkest third
    grain: float  # estimated pixel noise, 0..1
    crisp: float  # share of the brightness changes made in crisp one-pixel steps (0 soft … 1 hard)
    line_work: bool  # thin dark strokes on a light ground
    subject: tuple[float, float] | None  # centre of a compact subject (fractions of the frame), if any
    horizon: float | None  # height of a clear horizontal division, 0 top … 1 bottom, if any
    diagonal: bool  # one dominant diagonal in the picture's edges


def load(image: Image.Image | Path | str) -> Image.Image:
    """An RGB working copy: EXIF orientation applied, transparency on white, long side ≤ WORK_SIDE."""
    if isinstance(image, Image.Image):
        return _shrink(to_rgb(ImageOps.exif_transpose(image)))
    with Image.open(image) as im:
        if im.format == "JPEG":
            im.draft("RGB", (WORK_SIDE, WORK_SIDE))  # DCT scaling: decodes at 1/2 … 1/8 size
        return _shrink(to_rgb(ImageOps.exif_transpose(im)))


def _shrink(im: Image.Image) -> Image.Image:
    scale = WORK_SIDE / max(im.size)
    if scale >= 1:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX)


def _warmth(hue: np.ndarray, weight: np.ndarray) -> float:
    warm = (((hue < WARM_BELOW) | (hue >= WARM_FROM)) * weight).sum()
    cool = (((hue >= COOL[0]) & (hue < COOL[1])) * weight).sum()
    return float((warm - cool) / max(warm + cool, 1e-9))


def measure(work: Image.Image) -> Measures:
    grey = np.asarray(work.convert("L"), dtype=np.float32) / 255.0
    hsv = np.asarray(work.convert("HSV"), dtype=np.float32) / 255.0
    hue, chroma = hsv[..., 0] * 360.0, hsv[..., 1] * hsv[..., 2]
    low, high = np.quantile(grey, [1 / 3, 2 / 3])
    grain = _grain(grey)
    steps = _steps(grey)
    return Measures(
        look=features(np.asarray(work.resize((64, 64), Image.Resampling.BOX))),
        chroma=float(chroma.mean()),
        light_warmth=_warmth(hue[grey >= high], chroma[grey >= high]),
        shadow_warmth=_warmth(hue[grey <= low], chroma[grey <= low]),
        grain=grain,
        crisp=_crisp(steps, grain),
        line_work=_line_work(grey, steps, grain),
        subject=_subject(work),
        horizon=_horizon(work),
        diagonal=_diagonal(work),
    )


def _grain(grey: np.ndarray) -> float:
    """Pixel noise from how far each pixel sits from its neighbours' mean; a low quantile ignores edges."""
    if min(grey.shape) < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    around = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]) / 4
    return float(np.quantile(np.abs(centre - around), 0.25) * QUARTILE_TO_SIGMA)


def _steps(grey: np.ndarray) -> np.ndarray:
    """The larger of the horizontal and vertical brightness steps at each pixel."""
    return np.maximum(np.abs(np.diff(grey, axis=1))[:-1, :], np.abs(np.diff(grey, axis=0))[:, :-1])


def _crisp_step(grain: float) -> float:
    # Grain makes steps too: only a step well above the noise (5σ of a difference) is an edge.
    return max(EDGE_STEP, 5 * np.sqrt(2) * grain)


def _crisp(steps: np.ndarray, grain: float) -> float:
    """How much of the change in brightness happens in crisp steps rather than gradual transitions
    (steps within the noise don't count); 0 for a picture with no edges at all."""
    changes = steps[steps > max(0.02, 3 * np.sqrt(2) * grain)]
    if changes.sum() <= 1e-3 * steps.size:
        return 0.0
    return float(changes[changes > _crisp_step(grain)].sum() / changes.sum())


def _line_work(grey: np.ndarray, steps: np.ndarray, grain: float) -> bool:
    """Thin dark strokes on a light ground: few dark pixels, nearly all of them on a crisp edge (a
    filled shape has far more pixels inside than along its outline)."""
    ground = float(np.median(grey))
    dark = float((grey < ground - 0.25).mean())
    edges = float((steps > _crisp_step(grain)).mean()) if steps.size else 0.0
    return ground > 0.6 and 0.003 < dark < 0.3 and edges > 0.6 * dark


def _subject(work: Image.Image) -> tuple[float, float] | None:
    """Where a compact subject sits: patches of a 16×16 copy that stand out from both their row and
    their column (backdrop, sky and ground are shared along rows or columns), if they are bunched."""
    coarse = np.asarray(work.resize((16, 16), Image.Resampling.BOX), float)
    off_row = np.linalg.norm(coarse - np.median(coarse, axis=1, keepdims=True), axis=2)
    off_col = np.linalg.norm(coarse - np.median(coarse, axis=0, keepdims=True), axis=2)
    energy = np.minimum(off_row, off_col) ** 2
    if energy.max() < 40.0**2:  # nothing stands out by 40 levels: no subject to place
        return None
    ys, xs = np.mgrid[0:16, 0:16] / 15.0
    total = energy.sum()
    cx, cy = (energy * xs).sum() / total, (energy * ys).sum() / total
    spread = np.sqrt((energy * ((xs - cx) ** 2 + (ys - cy) ** 2)).sum() / total)
    return (float(cx), float(cy)) if spread < 0.22 else None


def _horizon(work: Image.Image) -> float | None:
    """The height of a clear horizontal division: the row boundary where most columns change colour
    sharply (unlike a sky's gradient) and stay changed (unlike stripes or texture)."""
    rows = np.asarray(work.resize((16, 64), Image.Resampling.BOX), float)
    sums = np.concatenate([np.zeros((1, 16, 3)), np.cumsum(rows, axis=0)])  # sums[y]: rows above y, per column
    y = np.arange(6, 58)
    above, below, n = sums[y], sums[64] - sums[y], y[:, None, None]
    sharp = np.linalg.norm((above - sums[y - 3]) - (sums[y + 3] - sums[y]), axis=2) / 3  # three rows each side
    lasting = np.linalg.norm(above / n - below / (64 - n), axis=2)  # everything each side
    score = np.quantile(np.minimum(sharp, lasting), 0.25, axis=1)  # three columns in four must change
    best = int(score.argmax())
    return float(y[best] / 64) if score[best] > 40.0 else None


def _diagonal(work: Image.Image) -> bool:
    """One dominant edge direction, at 45° ± 15°, from the edges of a 64 px copy (structure tensor)."""
    small = np.asarray(work.convert("L").resize((64, 64), Image.Resampling.BOX), float)
    gx = (small[1:-1, 2:] - small[1:-1, :-2]) / 510.0
    gy = (small[2:, 1:-1] - small[:-2, 1:-1]) / 510.0
    power = (gx**2 + gy**2) * (np.hypot(gx, gy) > 0.1)  # edges only, so a smooth gradient doesn't count
    if power.mean() < 1e-3:
        return False
    c, s = ((gx**2 - gy**2) * power).sum(), (2 * gx * gy * power).sum()
    coherence = np.hypot(c, s) / ((gx**2 + gy**2) * power).sum()
    angle = np.degrees(0.5 * np.arctan2(s, c)) % 90.0
    return bool(coherence > 0.4 and abs(angle - 45.0) < 15.0)


def describe(m: Measures) -> list[str]:
    """The measurements as style phrases: palette, temperature, values, edges, texture, composition."""
    palette = _palette(m)
    phrases = [palette]
    if palette not in NEUTRALS:
        if m.light_warmth > 0.3 and m.shadow_warmth < -0.3:
            phrases.append("warm light with cool shadows")
        elif m.light_warmth < -0.3 and m.shadow_warmth > 0.3:
            phrases.append("cool light with warm shadows")
        elif m.look.warmth > 0.35 and "warm" not in palette:
            phrases.append("predominantly warm colours")
        elif m.look.warmth < -0.35:
            phrases.append("predominantly cool colours")
        elif abs(m.look.warmth) <= 0.35:
            phrases.append("balanced warm and cool colours")
    phrases.append(_band(m.look.key, KEY_EDGES, KEY_WORDS))
    phrases.append(_band(m.look.contrast, CONTRAST_EDGES, CONTRAST_WORDS))
    if m.line_work:
        phrases.append("crisp line work")
    elif m.crisp > HARD:
        phrases.append("hard defined edges")
    elif m.crisp < SOFT:
        phrases.append("soft blended edges")
    else:
        phrases.append("soft edges with crisp accents")
    if m.grain > GRAINY:
        phrases.append("visible grain and texture")
    elif m.grain < SMOOTH:
        phrases.append("smooth gradients" if m.crisp < SOFT else "clean smooth finish")
    else:
        phrases.append("subtle surface texture")
    if m.subject is not None:
        centred = abs(m.subject[0] - 0.5) < 0.12 and abs(m.subject[1] - 0.5) < 0.15
        phrases.append("centred subject" if centred else "off-centre subject")
    if m.horizon is not None and not 0.4 <= m.horizon <= 0.6:
        phrases.append("low horizon" if m.horizon > 0.6 else "high horizon")
    if m.diagonal:
        phrases.append("strong diagonals")
    return phrases


def _band(value: float, edges: tuple[float, float], words: tuple[str, str, str]) -> str:
    return words[(value >= edges[0]) + (value > edges[1])]


def _palette(m: Measures) -> str:
    hue = m.look.hue
    if m.chroma < NEUTRAL_CHROMA or hue == "neutral":
        return NEUTRALS[m.look.contrast > 0.3 or m.line_work]
    if m.chroma < 0.3 and hue in WARM_FAMILIES and m.look.key < 0.6:
        return "warm earth tones"
    if m.chroma < 0.3 and m.look.key > 0.7:
        return f"pastel {hue}s"
    if m.chroma < MUTED_CHROMA:
        return f"muted {hue}s"
    if m.chroma > VIVID_CHROMA:
        return f"vivid {hue}s"
    return f"mostly {hue}s"


def analyse(image: Image.Image | Path | str) -> list[str]:
    """Style phrases for one picture (a path or an open image), in plain painter's words."""
    return describe(measure(load(image)))


def analyse_all(paths: list[Path], workers: int = os.cpu_count() or 1) -> list[list[str]]:
    """``analyse`` over many files on ``workers`` threads, in input order: decoding and resizing run in
    C with the GIL released, as in core.dataset.audit.inspect_all."""
    if workers <= 1 or len(paths) < 2:
        return [analyse(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(analyse, paths))
