"""Gate 1's first look: every file in a folder checked, in parallel, and summarised for the artist."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from core.dataset.buckets import bucket_for
from core.dataset.inspect import Inspection, Limits, inspect_file
from core.dataset.models import AuditReport, AuditSummary, ImageAudit
from core.errors import UserError

CAPTION_SUFFIXES = (".txt", ".caption")


def list_files(folder: Path) -> list[tuple[Path, str]]:
    """Every file under ``folder`` (hidden ones too: the artist gave them to us), with its relative
    name; caption files sitting beside their image are left out, as they belong to that image."""
    if not folder.is_dir():
        raise UserError(f"I can't find a folder at {str(folder)!r}. Check the path and try again.")
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        # A link to a folder is not followed (it may point anywhere) but is reported, like a file.
        filenames += [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames.sort()
        stems = {os.path.splitext(n)[0] for n in filenames if not n.lower().endswith(CAPTION_SUFFIXES)}
        for filename in sorted(filenames):
            stem, ext = os.path.splitext(filename)
            if ext.lower() in CAPTION_SUFFIXES and stem in stems:
                continue
            path = Path(dirpath) / filename
            found.append((path, path.relative_to(folder).as_posix()))
    return found


def inspect_all(files: list[tuple[Path, str]], limits: Limits, workers: int) -> list[Inspection]:
    """Inspect files on ``workers`` threads, results in input order. Threads, not processes: the
    costly parts (JPEG and PNG decoding, resizing, hashing the bytes) run in C with the GIL released,
    so threads use every core without a process pool's start-up cost or copying thumbnails back."""
    if workers <= 1 or len(files) < 2:
        return [inspect_file(path, name, limits) for path, name in files]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: inspect_file(item[0], item[1], limits), files))


def summarise(audits: list[ImageAudit], resolution: int) -> AuditSummary:
    usable = [a for a in audits if a.ok]
    by_code = Counter(i.code for a in audits for i in a.issues)
    sized = [a for a in usable if a.width and a.height]
    avg_w = round(sum(a.width for a in sized) / len(sized)) if sized else None
    avg_h = round(sum(a.height for a in sized) / len(sized)) if sized else None
    buckets = Counter("{}×{}".format(*bucket_for(a.width, a.height, resolution)) for a in sized)
    return AuditSummary(
        total=len(audits),
        usable=len(usable),
        unusable=len(audits) - len(usable),
        warnings=sum(1 for a in audits if any(i.severity == "warning" for i in a.issues)),
        by_code=dict(sorted(by_code.items())),
        average_resolution=f"{avg_w}×{avg_h}" if sized else None,
        average_width=avg_w,
        average_height=avg_h,
        formats=dict(Counter(a.format for a in audits if a.format).most_common()),
        aspect_buckets=dict(buckets.most_common()),
    )


def audit_folder(folder: Path, limits: Limits, workers: int) -> tuple[AuditReport, list[Inspection]]:
    inspections = inspect_all(list_files(folder), limits, workers)
    audits = [i.audit for i in inspections]
    return AuditReport(images=audits, summary=summarise(audits, limits.resolution)), inspections
