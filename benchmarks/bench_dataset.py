"""Speed figures for the dataset phase: auditing and hashing pictures, and the near-duplicate search.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_dataset`` (``--help`` for options).
Everything is generated locally from fixed seeds; scratch pictures live under ``benchmarks/.work/``
and are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
import PIL
from PIL import Image

from core.dataset.audit import inspect_all, list_files
from core.dataset.duplicates import CLOSE_RADIUS
from core.dataset.hamming import pairs_within
from core.dataset.inspect import Limits
from core.samples import scene, write_jpeg
from core.settings import Settings

WORK = Path(__file__).resolve().parent / ".work"
LIMITS = Limits(resolution=1024, max_pixels=89_478_485)
WARM_UP = 4  # pictures run through both paths first, so imports and first-call costs are not timed
TARGET_SPEEDUP = 3.0
TARGET_CODES, TARGET_SECONDS = 100_000, 2.0
BRUTE_FORCE_CODES = 10_000  # small enough to compare every pair directly
SEED = 20240611


def make_pictures(folder: Path, count: int) -> None:
    """Distinct scenes with random sides between 1024 and 1536 px, saved as JPEG quality 90."""
    rng = np.random.default_rng(SEED)
    for seed in range(count):
        width, height = (int(side) for side in rng.integers(1024, 1537, size=2))
        write_jpeg(scene(seed, size=(width, height)), folder / f"{seed:05d}.jpg", quality=90)


def naive_hashes(files: list[tuple[Path, str]]) -> list[imagehash.ImageHash]:
    """The obvious way, as a baseline: one file at a time, fully decoded, hashed with imagehash."""
    hashes = []
    for path, _ in files:
        with Image.open(path) as im:
            im.load()
            hashes.append(imagehash.phash(im))
    return hashes


def bench_audit(count: int, workers: int) -> dict:
    """Images per second for ``inspect_all`` on all cores against the naive baseline, same files.

    A short warm-up first, so that module imports and first-call costs are timed in neither path;
    the timed ``inspect_all`` call still starts its own thread pool, as a real import does.
    """
    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="pictures-", dir=WORK))
    try:
        make_pictures(folder, count)
        files = list_files(folder)
        inspect_all(files[:WARM_UP], LIMITS, workers)
        naive_hashes(files[:WARM_UP])

        start = time.perf_counter()
        inspections = inspect_all(files, LIMITS, workers)
        inspect_seconds = time.perf_counter() - start
        start = time.perf_counter()
        naive_hashes(files)
        naive_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder)
    failed = [x.audit.file for x in inspections if x.phash is None]
    if failed:
        raise SystemExit(f"inspect_file could not hash {len(failed)} generated pictures, e.g. {failed[0]}")
    speedup = naive_seconds / inspect_seconds
    return {
        "images": count,
        "workers": workers,
        "inspect_images_per_s": count / inspect_seconds,
        "naive_images_per_s": count / naive_seconds,
        "speedup": speedup,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": speedup >= TARGET_SPEEDUP,
    }


def planted_codes(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random 64-bit codes with about 1% of ``count`` planted near pairs, and those pairs as (i, j), i < j.

    Each copy is its source with 0 to ``CLOSE_RADIUS`` random bits flipped. Sources and copies are
    disjoint, so no plant is a copy of a copy and every planted pair lies within the radius.
    """
    codes = rng.integers(0, 2**64 - 1, size=count, dtype=np.uint64, endpoint=True)
    plants = count // 100
    chosen = rng.choice(count, size=2 * plants, replace=False)
    sources, copies = chosen[:plants], chosen[plants:]
    flips = rng.integers(0, CLOSE_RADIUS + 1, size=plants)
    positions = np.argsort(rng.random((plants, 64)), axis=1).astype(np.uint64)  # a random order of bits
    bits = np.where(np.arange(64) < flips[:, None], np.uint64(1) << positions, np.uint64(0))
    codes[copies] = codes[sources] ^ np.bitwise_or.reduce(bits, axis=1)
    pairs = np.stack([np.minimum(sources, copies), np.maximum(sources, copies)], axis=1)
    return codes, pairs


def brute_force_pairs(codes: np.ndarray, radius: int, block: int = 1000) -> np.ndarray:
    """Every pair (i, j, distance) with i < j within ``radius``, by comparing all pairs, in row order."""
    found = []
    for start in range(0, len(codes), block):
        distances = np.bitwise_count(codes[start : start + block, None] ^ codes[None, :])
        rows = np.arange(start, start + len(distances))[:, None]
        i, j = np.nonzero((distances <= radius) & (np.arange(len(codes))[None, :] > rows))
        found.append(np.stack([i + start, j, distances[i, j]], axis=1))
    return np.concatenate(found).astype(np.int64)


def bench_hamming(count: int) -> dict:
    """Seconds for the all-pairs search at ``CLOSE_RADIUS``, and how many planted pairs it found."""
    codes, planted = planted_codes(count, np.random.default_rng(SEED + count))
    start = time.perf_counter()
    found = pairs_within(codes, CLOSE_RADIUS)
    seconds = time.perf_counter() - start
    recall = np.isin(planted[:, 0] * count + planted[:, 1], found[:, 0] * count + found[:, 1]).mean()
    result = {
        "codes": count,
        "radius": CLOSE_RADIUS,
        "seconds": seconds,
        "pairs_found": len(found),
        "planted": len(planted),
        "recall": float(recall),
    }
    if count == BRUTE_FORCE_CODES:
        result["matches_brute_force"] = bool(np.array_equal(found, brute_force_pairs(codes, CLOSE_RADIUS)))
    return result


def hamming_target(runs: list[dict]) -> dict:
    """Whether the 100,000-code target holds; ``met`` is None when that size was not run."""
    run = next((r for r in runs if r["codes"] == TARGET_CODES), None)
    met = None if run is None else run["seconds"] < TARGET_SECONDS and run["recall"] == 1.0
    return {"codes": TARGET_CODES, "max_seconds": TARGET_SECONDS, "recall": 1.0, "met": met}


def print_report(figures: dict) -> None:
    machine, audit, target = figures["machine"], figures["audit"], figures["hamming_target"]
    print(f"machine: {machine['cpus']} CPUs, numpy {machine['numpy']}, Pillow {machine['pillow']}")
    print()
    print(f"audit + hashing, {audit['images']} JPEGs of 1024-1536 px per side, {audit['workers']} workers:")
    print(f"  inspect_all (draft decode, threads)       {audit['inspect_images_per_s']:8.1f} images/s")
    print(f"  naive (full decode + imagehash.phash)     {audit['naive_images_per_s']:8.1f} images/s")
    print(f"  speed-up                                  {audit['speedup']:8.2f}x")
    verdict = "met" if audit["target_met"] else "NOT met"
    print(f"  target: at least {audit['target_speedup']:.0f}x -> {verdict}")
    print()
    print(f"near-duplicate search, pairs_within(codes, {CLOSE_RADIUS}):")
    print(f"  {'codes':>8} {'seconds':>8} {'found':>7} {'planted':>7} {'recall':>7}  brute-force check")
    for run in figures["hamming"]:
        check = {True: "same pairs", False: "DIFFERENT pairs", None: "-"}[run.get("matches_brute_force")]
        print(
            f"  {run['codes']:>8} {run['seconds']:>8.3f} {run['pairs_found']:>7} {run['planted']:>7} "
            f"{run['recall']:>7.2%}  {check}"
        )
    verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
    print(
        f"  target: {target['codes']:,} codes in under {target['max_seconds']:.0f} s with every planted "
        f"pair found -> {verdict}"
    )


def code_counts(text: str) -> list[int]:
    """``--hashes``: comma-separated counts, each at least 100 so that 1% of them is a planted pair."""
    counts = [int(n) for n in text.split(",")]
    if min(counts) < 100:
        raise ValueError(text)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Speed figures for the dataset phase (audit, hashing, "
        "near-duplicate search) on locally generated data."
    )
    parser.add_argument("--images", type=int, default=96, help="pictures to generate and audit (default 96)")
    parser.add_argument(
        "--hashes",
        type=code_counts,
        default="10000,100000",
        help="comma-separated code counts for the duplicate search (default 10000,100000)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    if args.images <= WARM_UP:
        parser.error(f"--images must be more than {WARM_UP}, the warm-up")

    audit = bench_audit(args.images, Settings().workers)
    runs = [bench_hamming(n) for n in args.hashes]
    figures = {
        "machine": {"cpus": os.cpu_count(), "numpy": np.__version__, "pillow": PIL.__version__},
        "audit": audit,
        "hamming": runs,
        "hamming_target": hamming_target(runs),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_report(figures)


if __name__ == "__main__":
    main()
