"""Numbers beside a strength grid, and the plain sentences made from them. They point the artist's eye
at what resources/evaluation/strength-guide.md says to look for (too little: the pictures look like the
no-LoRA column; too much: echoes of the training pictures, grain, burnt colours); they never judge the
art, and the grid still decides.

The measures, each 0–1, one ``WeightEvidence`` per weight:

- change: mean absolute pixel difference from the same prompt's no-LoRA cell, over 255, mean over prompts.
- copying: aligned worst-region SSIM (``likeness.similarity``) between a cell and its nearest training
  pictures by mirror-proof pHash, highest over the weight's cells, below 0 as 0 (above 0.9: a copy).
- noise: mean absolute Laplacian (fine detail and grain) over the no-LoRA cell's, minus 1, within 0–1.
- clipped: share of pixels with any channel at 0 or 255, minus the no-LoRA cell's share (what the base
  model burns itself is not the LoRA's doing), mean over prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

import numpy as np
from PIL import Image
from scipy.ndimage import laplace

from core import resources
from core.dataset.inspect import THUMB, to_rgb
from core.dataset.likeness import mirror_proof_phash, similarity
from core.evaluation.grid import Grid
from core.evaluation.measures import CLIPPED, COPY, NOISE, VISIBLE, WeightEvidence
from core.evaluation.prompts import between, weight_label
from core.intent import LoraType

NEAREST = 3  # training pictures per cell confirmed with SSIM, the closest by pHash (SSIM costs ~20 ms a pair)
# Thresholds for the sentences and the suggestion. Below VISIBLE the pictures look like the no-LoRA column
# at a glance; from STRONG on the LoRA has remade much of the picture.
STRONG = 0.25
ECHO = 0.6  # every region of a picture this alike to a training picture: its composition is coming back


def _load(path: Path) -> Image.Image:
    """RGB with transparency on white, as training saw its pictures; read whole, so the file can close."""
    with Image.open(path) as image:
        return to_rgb(image).copy()


def _thumb(image: Image.Image) -> np.ndarray:
    """The square thumbnail the duplicate check compares (``inspect.THUMB``)."""
    return np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BILINEAR), dtype=np.uint8)


def _detail(pixels: np.ndarray) -> float:
    return float(np.abs(laplace(pixels.mean(axis=-1))).mean())


def _burnt(pixels: np.ndarray) -> float:
    return float(((pixels == 0) | (pixels == 255)).any(axis=-1).mean())


def _copying(image: Image.Image, training: list[tuple[int, np.ndarray]]) -> float:
    code, thumb = mirror_proof_phash(image), _thumb(image)
    nearest = sorted(training, key=lambda t: (code ^ t[0]).bit_count())[:NEAREST]
    return max((max(0.0, similarity(thumb, t)) for _, t in nearest), default=0.0)


def measure(grid: Grid, training_pictures: Sequence[Path]) -> list[WeightEvidence]:
    """The evidence at each weight of ``grid`` (not for its no-LoRA column), against the training set."""
    training = [(mirror_proof_phash(im), _thumb(im)) for im in map(_load, training_pictures)]
    base = {c.prompt_name: np.asarray(_load(c.path), dtype=np.float32) for c in grid.cells if c.weight is None}
    evidence = []
    for weight in grid.weights:
        change, noise, clipped, copying = [], [], [], 0.0
        for cell in (c for c in grid.cells if c.weight == weight):
            image = _load(cell.path)
            pixels, ref = np.asarray(image, dtype=np.float32), base[cell.prompt_name]
            change.append(float(np.abs(pixels - ref).mean()) / 255)
            noise.append(min(1.0, max(0.0, _detail(pixels) / max(_detail(ref), 1e-6) - 1)))
            clipped.append(max(0.0, _burnt(pixels) - _burnt(ref)))
            copying = max(copying, _copying(image, training))
        evidence.append(WeightEvidence(weight, fmean(change), copying, fmean(noise), fmean(clipped)))
    return evidence


def _signs_of_too_much(e: WeightEvidence) -> list[str]:
    signs = []
    if e.copying >= COPY:
        signs.append(f"a picture comes close to copying one of your training pictures (similarity {e.copying:.2f})")
    elif e.copying >= ECHO:
        signs.append(f"pictures start to echo your training pictures (similarity {e.copying:.2f})")
    if e.noise >= NOISE:
        signs.append(f"grainier than without the LoRA ({e.noise:.0%} more fine texture)")
    if e.clipped >= CLIPPED:
        signs.append(f"{e.clipped:.0%} more of the pixels burnt to pure black, white or full colour than without it")
    return signs


def _typical(lora_type: LoraType | str) -> tuple[float, float]:
    """(Start at, High) for the type, from strength-guide.md's "Typical weights" table. Its Low is not
    needed: below Start at, only signs of too much move the suggestion, and they may move it below Low."""
    rows = resources.table("evaluation/strength-guide.md", "Typical weights")
    row = next(r for r in rows if r["Type"] == LoraType(lora_type))
    return float(row["Start at"]), float(row["High"])


def suggested(evidence: Sequence[WeightEvidence], lora_type: LoraType | str) -> float:
    """The weight to suggest, following strength-guide.md "Finding the sweet spot": the type's "Start at",
    kept between the lowest weight whose change is visible and the highest below any sign of too much
    (copying, noise or clipping from the thresholds above). Faint everywhere: as high as stays clean, up
    to the type's High. Faint below and too much above with nothing in between: ``between`` the two. Too
    much from the lowest weight on: the lowest weight (the training needs a look, not the dial)."""
    start, high = _typical(lora_type)
    ordered = sorted(evidence, key=lambda e: e.weight)
    clean = None  # the highest weight with no sign of too much at it or below it
    for e in ordered:
        if _signs_of_too_much(e):
            break
        clean = e.weight
    visible = next((e.weight for e in ordered if e.change >= VISIBLE), None)
    if clean is None:
        return ordered[0].weight
    if visible is None:
        return round(min(clean, high), 2)
    if visible > clean:
        return between(clean, visible)
    return round(min(max(start, visible), clean), 2)


def _head(e: WeightEvidence) -> str:
    if e.change < VISIBLE:
        return f"little change from the base model ({e.change:.0%})"
    if e.change < STRONG:
        return f"clearly present ({e.change:.0%} change)"
    return f"strong ({e.change:.0%} change)"


def _sweet_spot(best: float, anchor: float, above: float | None, signs: list[str], faint: bool) -> str:
    """What the line of ``anchor``, the grid weight at or just below the suggestion ``best``, adds."""
    if signs or faint:
        why = "shows signs of too much already" if signs else "is faint at every weight"
        return f"the best of these, but the LoRA {why}: the training needs a look (training/failure-modes.md)"
    if math.isclose(anchor, best):
        return "likely sweet spot"
    try_it = f"try {weight_label(best)} with the same seed"
    if above is not None and anchor < best < above:
        return f"the sweet spot likely lies between {weight_label(anchor)} and {weight_label(above)}: {try_it}"
    return f"the sweet spot is likely near here: {try_it}"


def comparison(evidence: Sequence[WeightEvidence], lora_type: LoraType | str) -> list[str]:
    """One plain line per weight, lowest first: how much the LoRA changes the pictures and any sign of too
    much, with the suggested weight named on its line (or on the grid weight just below it). When no
    weight works, that line says the training needs a look rather than the weight (strength-guide.md)."""
    best = suggested(evidence, lora_type)
    ordered = sorted(evidence, key=lambda e: e.weight)
    weights = [e.weight for e in ordered]
    anchor = max((w for w in weights if w <= best + 1e-9), default=weights[0])
    above = next((w for w in weights if w > anchor), None)
    faint = all(e.change < VISIBLE for e in ordered)
    lines = []
    for e in ordered:
        signs = _signs_of_too_much(e)
        if signs:
            line = f"Weight {weight_label(e.weight)}: {_head(e)}; {'; '.join(signs)}"
        elif e.change < VISIBLE:
            line = f"Weight {weight_label(e.weight)}: {_head(e)} — subtle"
        else:
            line = f"Weight {weight_label(e.weight)}: {_head(e)}, no sign of copying or burn"
        if e.weight == anchor:
            line += ("; " if " — " in line else " — ") + _sweet_spot(best, anchor, above, signs, faint)
        lines.append(line)
    return lines
