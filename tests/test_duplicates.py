"""Duplicate detection: the exact Hamming search, pairing every altered copy with its original, and
never pairing different pictures that merely look alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.dataset.duplicates import WIDE_RADIUS, find_duplicates
from core.dataset.hamming import pairs_within
from core.dataset.inspect import Inspection, Limits, inspect_file
from core.samples import variant

LIMITS = Limits(resolution=256, max_pixels=Image.MAX_IMAGE_PIXELS)
SIZE = (480, 384)

# --- (a) the Hamming search is exact ------------------------------------------------------------


def brute_force(codes: np.ndarray, radius: int, queries: np.ndarray | None = None) -> set[tuple[int, int, int]]:
    q = codes if queries is None else queries
    distance = np.bitwise_count(q[:, None] ^ codes[None, :])
    i, j = np.nonzero(distance <= radius)
    if queries is None:
        keep = i < j
        i, j = i[keep], j[keep]
    return {(int(a), int(b), int(distance[a, b])) for a, b in zip(i, j, strict=True)}


def as_set(found: np.ndarray) -> set[tuple[int, int, int]]:
    assert found.ndim == 2 and found.shape[1] == 3
    rows = {tuple(int(v) for v in row) for row in found}
    assert len(rows) == len(found), "a pair was reported twice"
    return rows


def flip(code: np.uint64, bits: np.ndarray) -> np.uint64:
    mask = np.uint64(0)
    for b in bits:
        mask |= np.uint64(1) << np.uint64(b)
    return code ^ mask


def near_copies(rng: np.random.Generator, bases: np.ndarray, radius: int) -> np.ndarray:
    """For each base code, a copy at a distance from 0 to radius + 2; half the copies have their flips
    spread evenly over the four 16-bit chunks (the hardest case for a chunked search)."""
    copies = []
    for n, base in enumerate(bases):
        d = n % (radius + 3)
        if n % 2:
            bits = rng.choice(64, d, replace=False)
        else:
            bits = np.array([16 * (k % 4) + rng.integers(16) for k in range(d)])
            bits = np.unique(bits)
            bits = np.concatenate([bits, rng.choice(np.setdiff1d(np.arange(64), bits), d - len(bits), replace=False)])
        copies.append(flip(base, bits))
    return np.array(copies, dtype=np.uint64)


def planted_codes(radius: int, seed: int = 0, n: int = 2500) -> np.ndarray:
    rng = np.random.default_rng(seed + radius)
    codes = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    bases = codes[rng.choice(n, 4 * (radius + 3), replace=False)]
    everything = np.concatenate([codes, near_copies(rng, bases, radius), bases[:3]])  # and 3 exact repeats
    return everything[rng.permutation(len(everything))]


@pytest.mark.parametrize("radius", [3, 7, 10, 18])
def test_self_join_finds_exactly_the_pairs_within_the_radius(radius):
    codes = planted_codes(radius)
    expected = brute_force(codes, radius)
    assert {d for *_, d in expected} >= set(range(radius + 1))  # pairs at every distance are planted
    found = pairs_within(codes, radius)
    assert found.dtype == np.int64
    assert as_set(found) == expected


@pytest.mark.parametrize("radius", [3, 7, 10, 18])
def test_query_mode_finds_exactly_the_pairs_within_the_radius(radius):
    rng = np.random.default_rng(100 + radius)
    codes = planted_codes(radius)
    queries = np.concatenate(
        [
            near_copies(rng, codes[rng.choice(len(codes), 3 * (radius + 3), replace=False)], radius),
            rng.integers(0, 2**64, 300, dtype=np.uint64),
        ]
    )
    expected = brute_force(codes, radius, queries)
    assert any(d == radius for *_, d in expected)
    assert as_set(pairs_within(codes, radius, queries=queries)) == expected


@pytest.mark.parametrize("threads", [1, 3])
def test_the_result_does_not_depend_on_the_thread_count(threads):
    codes = planted_codes(10)
    assert as_set(pairs_within(codes, 10, threads=threads)) == brute_force(codes, 10)


@pytest.mark.parametrize("codes", [[0, 2**64 - 1], [0x0123456789ABCDEF], [0, 0xFF, 0xFF00FF00]])
def test_no_pairs_is_an_empty_three_column_array(codes):
    found = pairs_within(np.array(codes, dtype=np.uint64), 3)
    assert found.shape == (0, 3) and found.dtype == np.int64


# --- (b) every altered copy is paired with its original -----------------------------------------


def inspect_saved(folder: Path, name: str, img: Image.Image, **save) -> Inspection:
    path = folder / name
    img.save(path, **({"quality": 92} if name.endswith(".jpg") and not save else save))
    return inspect_file(path, name, LIMITS)


def inspect_copy(folder: Path, source: str, name: str) -> Inspection:
    (folder / name).write_bytes((folder / source).read_bytes())
    return inspect_file(folder / name, name, LIMITS)


def pairs_of(report) -> dict[frozenset[str], str]:
    return {frozenset((p.a, p.b)): p.kind for p in report.pairs}


ALTERATIONS = [("resized", 1.0), ("recompressed", 1.0), ("recoloured", 0.5), ("cropped", 0.5), ("mirrored", 1.0)]


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("how", "amount"), ALTERATIONS)
def test_an_altered_copy_is_a_near_duplicate_of_its_original(tmp_path, painting, seed, how, amount):
    original = painting(seed, SIZE)
    inspections = [
        inspect_saved(tmp_path, "original.jpg", original),
        inspect_saved(tmp_path, f"{how}.jpg", variant(original, how, amount)),
        inspect_saved(tmp_path, "unrelated.jpg", painting(seed + 50, SIZE)),
    ]
    report = find_duplicates(inspections)
    assert pairs_of(report) == {frozenset(("original.jpg", f"{how}.jpg")): "near"}
    assert report.pairs[0].distance <= WIDE_RADIUS
    assert report.clusters == [sorted(["original.jpg", f"{how}.jpg"])]


def test_a_byte_identical_copy_is_an_exact_duplicate(tmp_path, painting):
    inspections = [
        inspect_saved(tmp_path, "original.jpg", painting(3, SIZE)),
        inspect_copy(tmp_path, "original.jpg", "original (1).jpg"),
    ]
    (pair,) = find_duplicates(inspections).pairs
    assert (pair.kind, pair.distance) == ("exact", 0)
    assert {pair.a, pair.b} == {"original.jpg", "original (1).jpg"}


def test_the_same_pixels_saved_again_as_png_is_an_exact_duplicate(tmp_path, painting):
    img = painting(4, SIZE)
    first = inspect_saved(tmp_path, "first.png", img, compress_level=1)
    with Image.open(tmp_path / "first.png") as reopened:
        second = inspect_saved(tmp_path, "second.png", reopened.copy(), compress_level=9, optimize=True)
    assert first.sha256 != second.sha256  # different files…
    (pair,) = find_duplicates([first, second]).pairs
    assert pair.kind == "exact"  # …with the same pixels


def test_a_mirrored_copy_is_near_not_exact_even_with_the_same_hash(tmp_path, painting):
    img = painting(5, SIZE)
    a = inspect_saved(tmp_path, "a.png", img)
    b = inspect_saved(tmp_path, "b.png", variant(img, "mirrored"))
    assert a.phash == b.phash
    assert find_duplicates([a, b]).pairs[0].kind == "near"


def test_a_picture_and_two_copies_form_one_cluster_of_three(tmp_path, painting):
    inspections = []
    for seed, word in [(6, "fox"), (7, "owl")]:
        img = painting(seed, SIZE)
        inspections += [
            inspect_saved(tmp_path, f"{word}.jpg", img),
            inspect_copy(tmp_path, f"{word}.jpg", f"{word} copy.jpg"),
            inspect_saved(tmp_path, f"{word} mirrored.jpg", variant(img, "mirrored")),
        ]
    inspections.append(inspect_saved(tmp_path, "lonely.jpg", painting(8, SIZE)))
    report = find_duplicates(inspections)
    assert report.clusters == [
        ["fox copy.jpg", "fox mirrored.jpg", "fox.jpg"],
        ["owl copy.jpg", "owl mirrored.jpg", "owl.jpg"],
    ]
    assert len(report.pairs) == 6
    assert sorted(p.kind for p in report.pairs) == ["exact", "exact", "near", "near", "near", "near"]


def test_unreadable_files_are_left_out_of_the_duplicate_search(tmp_path, painting):
    (tmp_path / "empty.jpg").write_bytes(b"")
    inspections = [
        inspect_saved(tmp_path, "a.jpg", painting(9, SIZE)),
        inspect_file(tmp_path / "empty.jpg", "empty.jpg", LIMITS),
        inspect_copy(tmp_path, "empty.jpg", "empty copy.jpg"),
    ]
    report = find_duplicates(inspections)
    assert report.pairs == [] and report.clusters == []


# --- (c) look-alikes are not duplicates ---------------------------------------------------------


def hamming(a: Inspection, b: Inspection) -> int:
    return (a.phash ^ b.phash).bit_count()


@pytest.mark.parametrize("subject", ["sun", "tree", "house", "figure", "flower"])
def test_the_same_scene_with_the_subject_moved_is_not_a_duplicate(tmp_path, painting, subject):
    left = painting(1, SIZE, subject=subject, subject_at=(0.3, 0.45), palette=0)
    right = painting(1, SIZE, subject=subject, subject_at=(0.65, 0.5), palette=0)
    a = inspect_saved(tmp_path, "left.jpg", left)
    b = inspect_saved(tmp_path, "right.jpg", right)
    assert hamming(a, b) <= WIDE_RADIUS  # the hash alone would propose them: confirmation must refuse
    report = find_duplicates([a, b])
    assert report.pairs == [] and report.clusters == []


@pytest.mark.parametrize("palette", range(6))
def test_different_scenes_in_one_palette_are_not_duplicates(tmp_path, painting, palette):
    inspections = [
        inspect_saved(tmp_path, f"scene {seed}.jpg", painting(seed, SIZE, palette=palette)) for seed in range(20, 26)
    ]
    report = find_duplicates(inspections)
    assert report.pairs == [] and report.clusters == []


def test_twelve_different_scenes_have_no_pairs_at_all(tmp_path, painting):
    inspections = [inspect_saved(tmp_path, f"{seed:02d}.jpg", painting(seed, SIZE)) for seed in range(30, 42)]
    distances = [hamming(a, b) for n, a in enumerate(inspections) for b in inspections[n + 1 :]]
    assert min(distances) <= WIDE_RADIUS  # some are proposed as candidates…
    report = find_duplicates(inspections)
    assert report.pairs == [] and report.clusters == []  # …and none is confirmed


# --- (d) through the CLI ------------------------------------------------------------------------


def test_dupes_json_has_the_documented_shape(cli, tmp_path, painting):
    folder = tmp_path / "upload"
    folder.mkdir()
    img = painting(11, SIZE)
    img.save(folder / "cat.jpg", quality=92)
    (folder / "cat copy.jpg").write_bytes((folder / "cat.jpg").read_bytes())
    variant(img, "mirrored").save(folder / "cat mirrored.jpg", quality=92)
    painting(12, SIZE).save(folder / "dog.jpg", quality=92)
    (folder / "empty.jpg").write_bytes(b"")
    code, out, err = cli("dupes", str(folder), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"pairs", "clusters"}
    for pair in report["pairs"]:
        assert set(pair) == {"a", "b", "distance", "kind"}
        assert isinstance(pair["distance"], int) and pair["kind"] in ("exact", "near")
    assert {frozenset((p["a"], p["b"])): p["kind"] for p in report["pairs"]} == {
        frozenset(("cat.jpg", "cat copy.jpg")): "exact",
        frozenset(("cat.jpg", "cat mirrored.jpg")): "near",
        frozenset(("cat copy.jpg", "cat mirrored.jpg")): "near",
    }
    assert report["clusters"] == [["cat copy.jpg", "cat mirrored.jpg", "cat.jpg"]]


def test_dupes_with_no_duplicates_says_so(cli, tmp_path, painting):
    folder = tmp_path / "upload"
    folder.mkdir()
    for seed in (13, 14):
        painting(seed, SIZE).save(folder / f"{seed}.jpg", quality=92)
    code, out, _ = cli("dupes", str(folder), "--json")
    assert code == 0 and json.loads(out) == {"pairs": [], "clusters": []}
    code, out, _ = cli("dupes", str(folder))
    assert code == 0 and "No duplicates" in out
