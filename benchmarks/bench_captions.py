"""Speed of the local style analyzer, which captions every picture when there is no Claude.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_captions`` (``--help`` for options).
Pictures are generated locally from fixed seeds (``core.samples.scene``, 1024 × 1024, JPEG quality 90)
under ``benchmarks/.work/`` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import PIL

from core.captions.analyzer import analyse_all
from core.samples import scene, write_jpeg

WORK = Path(__file__).resolve().parent / ".work"
WARM_UP = 4  # pictures analysed first, so imports and first-call costs are not timed
TARGET_IMAGES_PER_S, TARGET_CORES = 50.0, 2


def make_pictures(folder: Path, count: int) -> list[Path]:
    return [write_jpeg(scene(seed, size=(1024, 1024)), folder / f"{seed:05d}.jpg", quality=90) for seed in range(count)]


def timed(paths: list[Path], workers: int) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    phrases = analyse_all(paths, workers)
    return len(paths) / (time.perf_counter() - start), phrases


def bench(count: int) -> dict:
    """Images per second on 1 thread, on 2 (the target's machine) and on every core."""
    cores = os.cpu_count() or 1
    WORK.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="captions-", dir=WORK))
    try:
        paths = make_pictures(folder, count)
        analyse_all(paths[:WARM_UP], TARGET_CORES)
        runs = {workers: timed(paths, workers) for workers in sorted({1, TARGET_CORES, cores})}
    finally:
        shutil.rmtree(folder)
    per_s = {workers: speed for workers, (speed, _) in runs.items()}
    phrases = runs[cores][1]
    if runs[1][1] != phrases:
        raise SystemExit("the analyzer described the pictures differently on one thread and on many")
    on_target = per_s[TARGET_CORES] if cores >= TARGET_CORES else None
    return {
        "images": count,
        "cores": cores,
        "images_per_s": {str(w): s for w, s in per_s.items()},
        "distinct_descriptions": len({tuple(p) for p in phrases}),
        "common_phrases": Counter(p for ps in phrases for p in ps).most_common(8),
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "target_cores": TARGET_CORES,
        "target_met": None if on_target is None else on_target >= TARGET_IMAGES_PER_S,
    }


def print_report(figures: dict) -> None:
    machine, run = figures["machine"], figures["analyzer"]
    print(f"machine: {machine['cpus']} CPUs, numpy {machine['numpy']}, Pillow {machine['pillow']}")
    print(f"\nstyle analyzer, {run['images']} generated JPEGs of 1024 x 1024 px (quality 90):")
    for workers, speed in run["images_per_s"].items():
        print(f"  {workers:>3} thread{'s' if workers != '1' else ' '}  {speed:8.1f} images/s")
    print(f"  {run['distinct_descriptions']} distinct descriptions; most common phrases:")
    for phrase, count in run["common_phrases"]:
        print(f"    {count:>4}  {phrase}")
    verdict = {True: "met", False: "NOT met", None: f"not measured (fewer than {run['target_cores']} cores)"}
    print(
        f"  target: at least {run['target_images_per_s']:.0f} images/s on {run['target_cores']} cores "
        f"-> {verdict[run['target_met']]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Speed of the local style analyzer on locally generated pictures.")
    parser.add_argument("--images", type=int, default=96, help="pictures to generate and analyse (default 96)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    if args.images <= WARM_UP:
        parser.error(f"--images must be more than {WARM_UP}, the warm-up")
    figures = {
        "machine": {"cpus": os.cpu_count(), "numpy": np.__version__, "pillow": PIL.__version__},
        "analyzer": bench(args.images),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_report(figures)


if __name__ == "__main__":
    main()
