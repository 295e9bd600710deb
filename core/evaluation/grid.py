"""Strength grids drawn by the built-in engine (diffusers), the way resources/evaluation/eval-methodology.md
says: the pipeline and the LoRA are loaded once, and only the LoRA's weight changes between columns.
Every picture gets a fresh generator with the same seed, so the starting noise is identical in every
cell and any difference along a row is the LoRA's doing; the no-LoRA column (the LoRA switched off,
the trigger word still in the prompt) shows what the base model draws on its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from core.dataset.importer import safe_stem
from core.evaluation.picture import compose, save_image
from core.evaluation.prompts import WEIGHTS, weight_label
from core.training.builtin import load_pipeline

ADAPTER = "lora"
NO_LORA = "no LoRA"


@dataclass(frozen=True)
class Cell:
    prompt_name: str
    prompt: str
    weight: float | None  # None: the no-LoRA column
    path: Path


@dataclass(frozen=True)
class Grid:
    picture: Path  # the labelled grid, for the artist
    cells: list[Cell]  # every picture on its own, for the evidence and for a closer look
    seed: int
    weights: tuple[float, ...]
    prompts: list[tuple[str, str]]
    lora: Path


def _pipeline(model: Path, arch: Literal["sd15", "sdxl"]):
    """The base model on the graphics card in fp16 when there is one, else on the CPU in fp32. Loaded by
    the trainer's own loader, so both fail with the same plain words."""
    cuda = torch.cuda.is_available()
    pipe = load_pipeline(Path(model), arch, torch.float16 if cuda else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if cuda else "cpu")


def _options(resolution: int, steps: int, guidance: float, negative: str) -> dict[str, Any]:
    """What the pipeline is called with, the same for every cell."""
    return dict(
        height=resolution,
        width=resolution,
        num_inference_steps=steps,
        guidance_scale=guidance,
        negative_prompt=negative or None,
    )


def _use(pipe, adapter: str, weight: float) -> None:
    """Make ``adapter`` the only active LoRA, at ``weight``: the scale changes, nothing is reloaded."""
    pipe.enable_lora()
    pipe.set_adapters([adapter], adapter_weights=[weight])


def _draw(
    pipe,
    prompts: Sequence[tuple[str, str]],
    columns: list[tuple[str, Callable[[], None]]],
    folder: Path,
    seed: int,
    options: dict[str, Any],
) -> list[list[Path]]:
    """For each (file name ending, set-up) column, set the LoRA up and draw every prompt into ``folder``,
    each from the same starting noise. Returns the paths, column by column."""
    slugs, endings = [safe_stem(name) for name, _ in prompts], [ending for ending, _ in columns]
    if len(set(slugs)) < len(slugs) or len(set(endings)) < len(endings):
        raise ValueError(f"Prompt names and column labels must differ once made file names: {slugs}, {endings}")
    paths = []
    for ending, set_up in columns:
        set_up()
        paths.append([folder / f"{slug}-{ending}.png" for slug in slugs])
        for (_, prompt), path in zip(prompts, paths[-1], strict=True):
            generator = torch.Generator(pipe.device).manual_seed(seed)
            save_image(pipe(prompt, generator=generator, **options).images[0], path)
    return paths


def render(
    model: Path,
    arch: Literal["sd15", "sdxl"],
    lora: Path,
    prompts: list[tuple[str, str]],
    out_dir: Path,
    *,
    weights: Sequence[float] = WEIGHTS,
    seed: int = 42,
    resolution: int = 1024,
    steps: int = 25,
    guidance: float = 6.0,
    negative: str = "",
) -> Grid:
    """Draw every (name, prompt) without the LoRA and at each weight into ``out_dir``: one PNG per cell,
    ``{prompt name}-{weight or 'none'}.png``, and the labelled ``grid.png``."""
    pipe = _pipeline(model, arch)
    pipe.load_lora_weights(str(lora), adapter_name=ADAPTER)
    columns = [("none", pipe.disable_lora), *((weight_label(w), partial(_use, pipe, ADAPTER, w)) for w in weights)]
    paths = _draw(pipe, prompts, columns, out_dir, seed, _options(resolution, steps, guidance, negative))
    cells = [
        Cell(name, prompt, weight, path)
        for weight, column in zip([None, *weights], paths, strict=True)
        for (name, prompt), path in zip(prompts, column, strict=True)
    ]
    title = f"{lora.stem}: the same prompt and seed ({seed}) across each row; only the LoRA weight changes"
    picture = compose(
        [name for name, _ in prompts],
        [NO_LORA, *map(weight_label, weights)],
        _positions(paths),
        out_dir / "grid.png",
        title,
    )
    return Grid(picture, cells, seed, tuple(weights), list(prompts), lora)


def _positions(paths: list[list[Path]]) -> dict[tuple[int, int], Path]:
    return {(row, column): path for column, rows in enumerate(paths) for row, path in enumerate(rows)}


def compare_checkpoints(
    model: Path,
    arch: Literal["sd15", "sdxl"],
    loras: list[tuple[str, Path]],
    prompts: list[tuple[str, str]],
    out_dir: Path,
    *,
    weight: float,
    seed: int = 42,
    resolution: int = 1024,
    steps: int = 25,
    guidance: float = 6.0,
    negative: str = "",
) -> Path:
    """One picture, ``out_dir/checkpoints.png``: no LoRA, then each (label, file) checkpoint at ``weight``
    across, the prompts down. Training can overfit as steps accumulate, so the middle checkpoint is
    often the best, and the artist should see that rather than take the final one on trust. The cells
    are kept in ``out_dir/checkpoints/``."""
    pipe = _pipeline(model, arch)
    columns = [("none", pipe.disable_lora)]
    for i, (label, path) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"checkpoint{i}")
        columns.append((safe_stem(label), partial(_use, pipe, f"checkpoint{i}", weight)))
    options = _options(resolution, steps, guidance, negative)
    paths = _draw(pipe, prompts, columns, out_dir / "checkpoints", seed, options)
    headers = [NO_LORA, *(label for label, _ in loras)]
    title = f"Checkpoints at weight {weight_label(weight)}: the same prompt and seed ({seed}) across each row"
    return compose([name for name, _ in prompts], headers, _positions(paths), out_dir / "checkpoints.png", title)
