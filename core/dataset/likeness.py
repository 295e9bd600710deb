"""Picture-level measures behind duplicate detection: a mirror-proof perceptual hash that proposes
candidates, and a strict, alignment-searching comparison that confirms them.

The hash is pHash (Zauner 2010; as in imagehash.phash: 32×32 grey, 2-D DCT, the 8×8 lowest
frequencies, thresholded at their median) made blind to left-right mirroring. Mirroring a picture
flips the sign of the DCT coefficients with odd horizontal frequency and leaves the others as they
are, so the hash thresholds the even ones by their median and the odd ones' magnitudes by theirs.
A mirrored copy gets exactly the same 64 bits, and one index search finds it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dctn

CONFIRM_SIDE = 32  # pictures are compared in grey at 32×32: enough to see a moved subject
GRID = 8  # …region by region, in an 8×8 grid: a duplicate matches in every region
# The alignment search starts from crops of these sizes and positions, then nudges each edge.
SCALES = (1.0, 0.94, 0.88)  # one may be a crop of the other, by about 12% per side length
OFFSETS = (0.0, 0.5, 1.0)  # where the crop sits, as a fraction of the room it has to move
# Two pictures are one when their worst-matching region still has this structural similarity (SSIM,
# Wang et al. 2004) after the best alignment. Copies score above 0.93; a subject moved within the
# same scene drops some region below 0.85.
MIN_REGION_SIMILARITY = 0.9
_NOT_WORTH_REFINING = 0.5  # a best coarse mean SSIM this low is a different picture, however aligned
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # SSIM's stabilising constants for 8-bit values


def mirror_proof_phash(image: Image.Image) -> int:
    """The 64-bit mirror-invariant pHash of a picture (any mode)."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, type=2, norm="ortho")[:8, :8]
    even, odd = low[:, 0::2], np.abs(low[:, 1::2])
    bits = np.concatenate([(even > np.median(even)).ravel(), (odd > np.median(odd)).ravel()])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _grey(thumb: np.ndarray) -> Image.Image:
    return Image.fromarray(thumb).convert("L")


def _boxes_on_grid(side: int) -> list[tuple[float, float, float, float]]:
    """The coarse set of crop boxes (x0, y0, x1, y1) the alignment search starts from."""
    spans = [(s, f) for s in SCALES for f in (OFFSETS if s < 1 else (0.0,))]
    boxes = []
    for sx, fx in spans:
        for sy, fy in spans:
            x, y = fx * side * (1 - sx), fy * side * (1 - sy)
            boxes.append((x, y, x + side * sx, y + side * sy))
    return boxes


def _crops(image: Image.Image, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    size = (CONFIRM_SIDE, CONFIRM_SIDE)
    return np.stack([np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=b), np.float32) for b in boxes])


def _whole(thumb: np.ndarray) -> np.ndarray:
    small = _grey(thumb).resize((CONFIRM_SIDE, CONFIRM_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32)


def _regions(pixels: np.ndarray) -> np.ndarray:
    """(..., side, side) → (..., GRID², cell²): the pixels of each grid region."""
    cell = CONFIRM_SIDE // GRID
    lead = pixels.shape[:-2]
    split = pixels.reshape(*lead, GRID, cell, GRID, cell)
    return np.moveaxis(split, -3, -2).reshape(*lead, GRID * GRID, cell * cell)


def _region_ssim(windows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SSIM of every grid region of every window against the target: shape (windows, GRID²)."""
    a, b = _regions(windows), _regions(target)[None]
    ma, mb = a.mean(-1), b.mean(-1)
    cov = ((a - ma[..., None]) * (b - mb[..., None])).mean(-1)
    return ((2 * ma * mb + _C1) * (2 * cov + _C2)) / ((ma**2 + mb**2 + _C1) * (a.var(-1) + b.var(-1) + _C2))


def _coarse(thumb: np.ndarray, target: np.ndarray) -> tuple[float, tuple, np.ndarray]:
    """The grid box of ``thumb`` that best matches ``target``: (mean SSIM, box, region SSIMs)."""
    boxes = _boxes_on_grid(thumb.shape[0])
    scores = _region_ssim(_crops(_grey(thumb), boxes), target)
    best = int(scores.mean(axis=1).argmax())
    return float(scores[best].mean()), boxes[best], scores[best]


def _refine(thumb: np.ndarray, target: np.ndarray, box: tuple, mean: float, regions: np.ndarray) -> np.ndarray:
    """Nudge each edge of ``box`` by finer and finer steps while the mean SSIM improves."""
    image, side = _grey(thumb), thumb.shape[0]
    for step in (1.0, 0.5, 0.25):
        while True:
            moves = [tuple(v + d * (k == e) for k, v in enumerate(box)) for e in range(4) for d in (-step, step)]
            moves = [m for m in moves if 0 <= m[0] < m[2] <= side and 0 <= m[1] < m[3] <= side]
            scores = _region_ssim(_crops(image, moves), target)
            top = int(scores.mean(axis=1).argmax())
            if scores[top].mean() <= mean:
                break
            box, mean, regions = moves[top], float(scores[top].mean()), scores[top]
    return regions


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two thumbnails are in their worst-matching region, after the best alignment (one
    may be a crop of the other, either may be mirrored): 1.0 is identical, above
    ``MIN_REGION_SIMILARITY`` the same picture."""
    mirrored = np.ascontiguousarray(b[:, ::-1])
    tries = [(src, _whole(other)) for view in (b, mirrored) for src, other in ((a, view), (view, a))]
    coarse = [(_coarse(src, target), src, target) for src, target in tries]
    (mean, box, regions), src, target = max(coarse, key=lambda c: c[0][0])
    if mean < _NOT_WORTH_REFINING:
        return float(regions.min())
    return float(_refine(src, target, box, mean, regions).min())
