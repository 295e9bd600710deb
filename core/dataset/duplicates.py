"""Exact and near duplicates: the same picture resized, re-compressed, slightly recoloured, lightly
cropped or mirrored — and never two different pictures that merely look alike.

Two stages, as DESIGN.md asks:

1. **Propose** (cheap): pictures whose 64-bit mirror-proof pHashes differ in at most
   ``WIDE_RADIUS`` = 18 bits are candidates, found with an exact multi-index Hamming search rather
   than by comparing every pair. On generated test scenes, resizes, re-compressions and mirrors
   stay within 4 bits, slight recolours within 6, crops of about 6% within 12 and of 12% within 18,
   while different pictures start around 16–20 bits apart (idealo/imagededup defaults to 10, and
   czkawka's "medium" preset is 5). Beyond ``WIDE_SEARCH_UP_TO`` pictures the radius drops to
   ``CLOSE_RADIUS`` = 10 bits, which keeps a 100,000-picture search to about a second; only the
   harder crops are then left unproposed.
2. **Confirm** (strict): each candidate pair is aligned (one may be a crop or mirror image of the
   other) and compared region by region with SSIM; it is a duplicate only if every one of the 64
   regions matches (``likeness.MIN_REGION_SIMILARITY`` = 0.9). A subject moved within the same
   scene, a second picture of the same character, or another picture in the same palette fails
   in the regions that differ — flagging those would teach the artist to throw away good material.
"""

from __future__ import annotations

import numpy as np

from core.dataset.hamming import pairs_within
from core.dataset.inspect import Inspection
from core.dataset.likeness import MIN_REGION_SIMILARITY, similarity
from core.dataset.models import DuplicatePair, DuplicateReport

WIDE_RADIUS = 18
CLOSE_RADIUS = 10
WIDE_SEARCH_UP_TO = 5000


def candidate_radius(count: int) -> int:
    return WIDE_RADIUS if count <= WIDE_SEARCH_UP_TO else CLOSE_RADIUS


def _is_exact(a: Inspection, b: Inspection) -> bool:
    """Byte-for-byte the same file, or the same pixels saved differently."""
    if a.sha256 == b.sha256:
        return True
    same_size = (a.audit.width, a.audit.height) == (b.audit.width, b.audit.height)
    return same_size and a.phash == b.phash and bool(np.array_equal(a.thumb, b.thumb))


def group_pairs(names: list[str], pairs: list[tuple[int, int]]) -> list[list[str]]:
    """Groups of pictures linked by duplicate pairs (union–find over the pairs)."""
    parent = list(range(len(names)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[str]] = {}
    for i, j in pairs:
        for k in (i, j):
            groups.setdefault(root(k), [])
            if names[k] not in groups[root(k)]:
                groups[root(k)].append(names[k])
    return sorted(sorted(g) for g in groups.values())


def find_duplicates(inspections: list[Inspection]) -> DuplicateReport:
    usable = sorted((x for x in inspections if x.phash is not None), key=lambda x: x.audit.file)
    if len(usable) < 2:
        return DuplicateReport(pairs=[], clusters=[])
    codes = np.array([x.phash for x in usable], dtype=np.uint64)
    found: list[DuplicatePair] = []
    linked: list[tuple[int, int]] = []
    for i, j, distance in pairs_within(codes, candidate_radius(len(usable))):
        a, b = usable[i], usable[j]
        if _is_exact(a, b):
            kind = "exact"
        elif similarity(a.thumb, b.thumb) >= MIN_REGION_SIMILARITY:
            kind = "near"
        else:
            continue
        found.append(DuplicatePair(a=a.audit.file, b=b.audit.file, distance=int(distance), kind=kind))
        linked.append((int(i), int(j)))
    names = [x.audit.file for x in usable]
    return DuplicateReport(pairs=found, clusters=group_pairs(names, linked))
