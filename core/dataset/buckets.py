"""Which training bucket a picture lands in, mirroring kohya sd-scripts' aspect-ratio bucketing.

kohya (``library/model_util.py: make_bucket_resolutions``) builds buckets of about the model's
training area, widths and heights in steps of 64, and gives each image the bucket whose aspect ratio
is closest to its own. Showing the artist their buckets explains cropping and lost detail before
training. SimpleTuner and ai-toolkit bucket similarly.
"""

from __future__ import annotations

from functools import lru_cache

STEP = 64
MIN_SIDE = 256


@lru_cache
def buckets(resolution: int) -> tuple[tuple[int, int], ...]:
    """kohya's bucket list for a square training size, with a maximum side of twice that size."""
    max_area = resolution * resolution
    max_side = resolution * 2
    side = int(max_area**0.5 // STEP) * STEP
    found = {(side, side)}
    for width in range(MIN_SIDE, max_side + 1, STEP):
        height = min(max_side, (max_area // width) // STEP * STEP)
        if height >= MIN_SIDE:
            found.add((width, height))
            found.add((height, width))
    return tuple(sorted(found))


def bucket_for(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket (width, height) kohya would choose for a picture of this size."""
    aspect = width / height
    return min(buckets(resolution), key=lambda b: abs(b[0] / b[1] - aspect))
