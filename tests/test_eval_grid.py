"""Strength grids with the built-in engine on a tiny LoRA trained here: the weight is the only thing that
changes along a row, the same seed gives the same grid, the labelled picture has its layout, and the
evidence and sentences beside it follow what the pictures do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from core.captions.formats import starts_with_trigger
from core.evaluation import picture
from core.evaluation import prompts as grid_prompts
from core.evaluation.evidence import comparison, measure, suggested
from core.evaluation.grid import Cell, Grid, compare_checkpoints, render
from core.evaluation.measures import WeightEvidence
from core.evaluation.prompts import between
from core.intent import LoraType
from core.samples import scene
from core.training.builtin import TrainConfig, train
from core.training.tiny import build_tiny_model

torch.set_num_threads(1)
FAST = dict(resolution=64, steps=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list[Path]]:
    """(model, epoch-1 checkpoint, final LoRA, training pictures): 2 epochs of 3 pictures, one step each."""
    tmp = tmp_path_factory.mktemp("train")
    data = tmp / "data"
    data.mkdir()
    for i in range(3):
        scene(i, size=(64, 64)).save(data / f"pic{i}.png")
        (data / f"pic{i}.txt").write_text(f"mira, a fox, hill number {i}\n", encoding="utf-8")
    model = build_tiny_model(tmp / "model", "sd15")
    config = TrainConfig(
        model=model,
        arch="sd15",
        dataset=data,
        output=tmp / "out",
        trigger="mira",
        resolution=64,
        epochs=2,
        save_every_n_epochs=1,
        rank=4,
        alpha=4,
        learning_rate=1e-2,  # large, so six steps change the pictures clearly at weight 1.0
    )
    result = train(config, emit=lambda *a, **k: None)
    return model, tmp / "out" / "lora-epoch001.safetensors", result.path, sorted(data.glob("*.png"))


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str]]:
    everything = grid_prompts.test_prompts(LoraType.style, "mira", ["a fox on a hill"])
    return [everything[0], everything[-1]]  # a standard prompt and the artist's own


@pytest.fixture(scope="module")
def grid(trained, rows, tmp_path_factory: pytest.TempPathFactory) -> Grid:
    model, _, lora, _ = trained
    return render(model, "sd15", lora, rows, tmp_path_factory.mktemp("grid"), **FAST)


@pytest.fixture(scope="module")
def evidence(grid: Grid, trained) -> list[WeightEvidence]:
    return measure(grid, trained[3])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def change_from_base(grid: Grid, weight: float) -> float:
    base = {c.prompt_name: pixels(c.path) for c in grid.cells if c.weight is None}
    return float(
        np.mean([np.abs(pixels(c.path) - base[c.prompt_name]).mean() for c in grid.cells if c.weight == weight])
    )


def test_grid_has_a_no_lora_column_and_each_weight(grid: Grid, rows) -> None:
    assert grid.weights == grid_prompts.WEIGHTS and grid.seed == 42 and grid.prompts == rows
    assert [c.weight for c in grid.cells] == [w for w in (None, *grid.weights) for _ in rows]
    names = sorted(c.path.name for c in grid.cells)
    assert names[:2] == ["portrait-0.3.png", "portrait-0.5.png"] and "yours-1-none.png" in names
    assert "portrait-1.0.png" in names and all(c.path.parent == grid.picture.parent for c in grid.cells)
    assert all(Image.open(c.path).size == (64, 64) for c in grid.cells)


def test_the_lora_changes_the_pictures_more_at_higher_weight(grid: Grid) -> None:
    changes = [change_from_base(grid, w) for w in grid.weights]
    assert changes[0] > 0.5  # in 8-bit levels: every LoRA column differs from the no-LoRA one
    assert changes[-1] > 1.5 * changes[0], changes


def test_the_same_seed_gives_the_same_grid(grid: Grid, trained, rows, tmp_path: Path) -> None:
    model, _, lora, _ = trained
    again = render(model, "sd15", lora, rows, tmp_path / "again", **FAST)
    assert all(np.array_equal(pixels(a.path), pixels(b.path)) for a, b in zip(grid.cells, again.cells, strict=True))
    assert again.picture.read_bytes() == grid.picture.read_bytes()
    other = render(model, "sd15", lora, rows, tmp_path / "other", weights=(1.0,), seed=7, **FAST)
    assert not np.array_equal(pixels(other.cells[0].path), pixels(grid.cells[0].path))


def test_grid_picture_is_labelled_and_sized(grid: Grid) -> None:
    image = np.asarray(Image.open(grid.picture).convert("L"))
    side = picture.CELL  # small cells are scaled up to the full cell size
    width = picture.LABEL_WIDTH + 6 * (side + picture.GAP) + picture.GAP
    height = picture.TITLE + picture.HEADER + 2 * (side + picture.GAP) + picture.GAP
    assert image.shape == (height, width)
    assert (image[: picture.TITLE] < 128).any()  # the title
    header = image[picture.TITLE : picture.TITLE + picture.HEADER]
    for c in range(6):
        x = picture.LABEL_WIDTH + picture.GAP + c * (side + picture.GAP)
        assert (header[:, x : x + side] < 128).any(), f"column {c} has no header"
    for r in range(2):
        y = picture.TITLE + picture.HEADER + r * (side + picture.GAP)
        assert (image[y : y + side, : picture.LABEL_WIDTH] < 128).any(), f"row {r} has no label"
    first = Image.open(grid.cells[0].path).convert("L").resize((side, side), Image.Resampling.LANCZOS)
    x, y = picture.LABEL_WIDTH + picture.GAP, picture.TITLE + picture.HEADER
    assert np.abs(image[y : y + side, x : x + side].astype(float) - np.asarray(first)).mean() < 2


def test_a_big_grid_shrinks_its_cells_to_stay_under_discords_limit(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")  # PNG cannot compress it: the worst case
    rows, columns = [f"prompt {i}" for i in range(8)], ["no LoRA", "0.3", "0.5", "0.7", "0.9", "1"]
    images = {(r, c): tmp_path / "noise.png" for r in range(8) for c in range(6) if (r, c) != (0, 0)}
    out = picture.compose(rows, columns, images, tmp_path / "big.png", "A big grid")
    side = picture.cell_size(8, 6)
    assert side < picture.CELL and out.stat().st_size < 8_000_000
    with Image.open(out) as big:
        assert big.width * big.height <= picture.MAX_PIXELS
        x, y = picture.LABEL_WIDTH + picture.GAP, picture.TITLE + picture.HEADER
        assert big.getpixel((x + side // 2, y + side // 2)) == picture.EMPTY  # the missing cell


def test_evidence_is_in_range_and_change_grows_with_weight(evidence: list[WeightEvidence], grid: Grid) -> None:
    assert [e.weight for e in evidence] == list(grid.weights)
    for e in evidence:
        assert all(0 <= v <= 1 for v in (e.change, e.copying, e.noise, e.clipped)), e
    changes = [e.change for e in evidence]
    assert changes == sorted(changes) and changes[-1] > changes[0] > 0
    assert changes[-1] == pytest.approx(change_from_base(grid, 1.0) / 255, rel=1e-5)
    assert all(e.copying < 0.6 for e in evidence)  # random-weight blobs are nothing like the training scenes


def test_evidence_sees_a_copy_grain_and_burnt_pixels(trained, tmp_path: Path) -> None:
    training = trained[3]
    smooth = Image.new("RGB", (64, 64), (120, 130, 140))
    smooth.save(tmp_path / "base.png")
    ImageOps.mirror(Image.open(training[1])).save(tmp_path / "copy.png")  # a mirrored training picture
    grain = np.random.default_rng(1).normal(130, 40, (64, 64, 3)).clip(0, 255).astype(np.uint8)
    grain[:16] = 255  # a quarter of the pixels burnt white
    Image.fromarray(grain).save(tmp_path / "grain.png")
    cells = [Cell("a", "mira", None, tmp_path / "base.png"), Cell("a", "mira", 0.5, tmp_path / "copy.png")]
    cells.append(Cell("a", "mira", 1.0, tmp_path / "grain.png"))
    grid = Grid(tmp_path / "grid.png", cells, 42, (0.5, 1.0), [("a", "mira")], tmp_path / "lora.safetensors")
    copy, burnt = measure(grid, training)
    assert copy.copying > 0.9 and burnt.copying < 0.6
    assert burnt.noise == 1.0 and copy.noise > 0  # anything over flat grey has more fine texture
    assert 0.25 <= burnt.clipped < 0.3 and copy.clipped < 0.05
    assert 0 < copy.change < 1 and 0 < burnt.change < 1


def test_comparison_has_a_line_per_weight_and_names_the_sweet_spot(evidence: list[WeightEvidence]) -> None:
    lines = comparison(evidence, LoraType.style)
    assert [line.split(":")[0] for line in lines] == [
        f"Weight {grid_prompts.weight_label(w)}" for w in grid_prompts.WEIGHTS
    ]
    best = suggested(evidence, LoraType.style)
    picked = [line for line in lines if "sweet spot" in line or "best of these" in line]
    anchor = max(w for w in grid_prompts.WEIGHTS if w <= best)  # the suggestion's line, or the one below it
    assert len(picked) == 1 and picked[0].startswith(f"Weight {grid_prompts.weight_label(anchor)}:"), lines


def ev(weight: float, change: float, copying: float = 0.1, noise: float = 0.0, clipped: float = 0.0) -> WeightEvidence:
    return WeightEvidence(weight, change, copying, noise, clipped)


def test_comparison_in_plain_words() -> None:
    evidence = [ev(0.3, 0.04), ev(0.5, 0.18), ev(0.7, 0.22), ev(0.9, 0.35, copying=0.81), ev(1.0, 0.4, noise=0.5)]
    lines = comparison(evidence, LoraType.style)
    assert lines[0] == "Weight 0.3: little change from the base model (4%) — subtle"
    assert lines[1] == "Weight 0.5: clearly present (18% change), no sign of copying or burn — likely sweet spot"
    assert (
        lines[3] == "Weight 0.9: strong (35% change); pictures start to echo your training pictures (similarity 0.81)"
    )
    assert "grainier than without the LoRA (50% more fine texture)" in lines[4]
    character = comparison([ev(w, 0.1 + w / 10) for w in grid_prompts.WEIGHTS], LoraType.character)
    assert character[2].endswith("between 0.7 and 0.9: try 0.8 with the same seed")
    broken = comparison([ev(w, 0.2, clipped=0.2) for w in grid_prompts.WEIGHTS], LoraType.object)
    assert "training needs a look" in broken[0] and "burnt" in broken[0]


def test_suggested_moves_from_the_types_start() -> None:
    weights = grid_prompts.WEIGHTS
    clean = [ev(w, 0.1 + w / 10) for w in weights]
    assert suggested(clean, LoraType.style) == 0.5  # the type's "Start at"
    assert suggested(clean, LoraType.character) == 0.8
    noisy_top = [ev(w, 0.1 + w / 10, noise=0.4 if w >= 0.9 else 0.0) for w in weights]
    assert suggested(noisy_top, LoraType.character) == 0.7  # down, below the first sign of too much
    faint_below = [ev(w, 0.02 if w < 0.9 else 0.1) for w in weights]
    assert suggested(faint_below, LoraType.object) == 0.9  # up, to where the change shows
    narrow = [ev(w, 0.03 if w <= 0.5 else 0.2, clipped=0.1 if w >= 0.7 else 0.0) for w in weights]
    assert suggested(narrow, LoraType.style) == 0.6  # faint at 0.5, burnt at 0.7
    assert suggested([ev(w, 0.01) for w in weights], LoraType.style) == 0.8  # faint everywhere: the type's High
    assert suggested([ev(w, 0.2, copying=0.95) for w in weights], LoraType.style) == 0.3


def test_between_rounds_the_midpoint_to_005_and_weights_read_plainly() -> None:
    assert between(0.5, 0.7) == 0.6 and between(0.7, 0.5) == 0.6
    assert between(0.3, 0.5) == 0.4 and between(0.9, 1.0) == 0.95 and between(0.5, 0.6) == 0.55
    assert [grid_prompts.weight_label(w) for w in (0.3, 0.95, 1.0)] == ["0.3", "0.95", "1.0"]


@pytest.mark.parametrize("kind", list(LoraType))
def test_test_prompts_for_each_type(kind: LoraType) -> None:
    standard = grid_prompts.test_prompts(kind, "mira")
    assert len(standard) == 5 and len({name for name, _ in standard}) == 5
    for _, prompt in standard:
        assert "{trigger}" not in prompt and "mira" in prompt.split(", ")[0].split()
        assert starts_with_trigger(prompt, "mira") or prompt == "three mira side by side"
    mine = grid_prompts.test_prompts(kind, "mira", ["a fox by the sea", "mira, a cat", "  "])
    assert mine[:5] == standard
    assert mine[5:] == [("yours 1", "mira, a fox by the sea"), ("yours 2", "mira, a cat")]


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # one adapter per checkpoint, on purpose
def test_compare_checkpoints_puts_checkpoints_side_by_side(trained, rows, tmp_path: Path) -> None:
    model, early, final, _ = trained
    out = compare_checkpoints(model, "sd15", [("epoch 1", early), ("final", final)], rows, tmp_path, weight=1.0, **FAST)
    assert out == tmp_path / "checkpoints.png"
    with Image.open(out) as image:
        assert image.width == picture.LABEL_WIDTH + 3 * (picture.CELL + picture.GAP) + picture.GAP
    cells = {p.name: pixels(p) for p in (tmp_path / "checkpoints").iterdir()}
    assert sorted(cells) == sorted(
        f"{p}-{c}.png" for p in ("portrait", "yours-1") for c in ("none", "epoch-1", "final")
    )
    assert not np.array_equal(cells["portrait-epoch-1.png"], cells["portrait-none.png"])
    assert not np.array_equal(cells["portrait-epoch-1.png"], cells["portrait-final.png"])
