"""Phase 11 and 13: what the finished LoRA does, and its place in the studio.

``evaluate`` draws the strength grid (the built-in engine, or ComfyUI when its address is set or the
model is one the built-in engine cannot draw), measures the evidence beside it, suggests a weight, and
can put checkpoints side by side; ``register`` records the weight the artist chose in studio.md.
Everything lands under the project: ``eval/`` (pictures, evidence.json, evaluation.json), ``eval.md``,
``status.md``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from core import intent as intents
from core.dataset.audit import list_files
from core.errors import UserError
from core.evaluation import comfyui, evidence, grid, records
from core.evaluation.diagnose import detect
from core.evaluation.diagnose_commands import facts_of
from core.evaluation.picture import compose
from core.evaluation.prompts import SEED, WEIGHTS, test_prompts, weight_label
from core.families import FAMILIES, Family
from core.grimoire import Project, write_atomic
from core.settings import Settings
from core.store import Store


class Evaluation(BaseModel):
    checkpoint: str  # the LoRA file the grid shows
    grid: str | None  # the labelled grid picture; None when ComfyUI was not reachable
    comparison: list[str]  # one plain line per weight (the seed's structured form)
    suggested: float | None
    options: list[float]  # weights worth offering as buttons
    checkpoints: str | None = None  # the checkpoint comparison picture, when asked for
    can_compare: bool = False  # earlier checkpoints exist
    suggestions: list[str] = []  # what the evidence suggests went wrong, in plain words
    note: str | None = None  # how the pictures were made (ComfyUI's message, the saved workflows)
    prompts: list[tuple[str, str]] = []


def _finished_lora(project: Project) -> Path:
    lora = project.root / "checkpoints" / f"{project.name}.safetensors"
    if not lora.is_file():
        raise UserError(f"{project.name} has no finished LoRA yet: train it first (`loratrain train {project.name}`).")
    return lora


def _checkpoint(project: Project, name: str) -> Path:
    path = project.root / "checkpoints" / Path(name).name
    if not path.is_file():
        kept = ", ".join(p.name for p in sorted((project.root / "checkpoints").glob("*.safetensors")))
        raise UserError(f"There is no checkpoint {name!r} in {project.name}; the ones kept are: {kept or 'none'}.")
    return path


async def evaluate(settings: Settings, project: Project, store: Store, *, checkpoints: list[str] = (),
                   own_prompts: list[str] = (), compare: bool = False, seed: int = SEED, steps: int = 25,
                   resolution: int | None = None, weights: tuple[float, ...] = WEIGHTS) -> Evaluation:  # fmt: skip
    """The grid at 0.3–1.0 with one seed for the type's test prompts and the artist's own, with a no-LoRA
    column; the evidence; and, with ``compare`` or several ``checkpoints``, the checkpoints side by side.
    Other ``weights`` narrow the choice (0.6, between 0.5 and 0.7), drawn with the same seed."""
    intent = intents.load(project)
    config = (await store.gate(project.name, 2) or {}).get("details", {})
    chosen = [_checkpoint(project, c) for c in checkpoints] or [_finished_lora(project)]
    lora, model = chosen[-1], Path(config.get("model") or "")
    size = resolution or config.get("params", {}).get("resolution") or FAMILIES[intent.family].resolution
    prompts = test_prompts(intent.type, intent.trigger, own_prompts)
    narrowed = "" if weights == WEIGHTS else "-at-" + "-".join(map(weight_label, weights))
    out = project.root / "eval" / f"{lora.stem}{narrowed}"
    drawn, note = await _draw(settings, intent.family, model, lora, prompts, out, seed, steps, size, weights)
    facts = await facts_of(settings, project)
    result = Evaluation(checkpoint=lora.name, grid=None, comparison=[], suggested=None, options=[], note=note,
                        prompts=prompts, can_compare=len(facts.checkpoints) > 1)  # fmt: skip
    if drawn is not None:
        pictures = [path for path, _ in list_files(project.dataset_dir)]
        measured = await asyncio.to_thread(evidence.measure, drawn, pictures)
        write_atomic(project.root / "eval" / "evidence.json", json.dumps([e.__dict__ for e in measured]))
        best = evidence.suggested(measured, intent.type)
        result.grid, result.comparison, result.suggested = str(drawn.picture), evidence.comparison(
            measured, intent.type), best  # fmt: skip
        result.options = _options(best)
        result.suggestions = [f"{d.symptom} — {d.evidence} Next step: {d.next_step}"
                              for d in detect(measured, facts)]  # fmt: skip
        if (compare or len(chosen) > 1) and intent.family is not Family.flux:
            loras = [(p.stem, p) for p in (chosen if len(chosen) > 1 else _all_checkpoints(project))]
            result.checkpoints = str(await asyncio.to_thread(
                grid.compare_checkpoints, model, _arch(intent.family), loras, prompts, out, weight=best, seed=seed,
                resolution=size, steps=steps))  # fmt: skip
    write_atomic(project.root / "eval" / "evaluation.json", result.model_dump_json(indent=2))
    _write_eval_md(project, result, result.suggested)
    return result


def _arch(family: Family) -> str:
    return "sd15" if family is Family.sd15 else "sdxl"  # Pony is an SDXL checkpoint


def _options(best: float) -> list[float]:
    """The suggestion and its neighbours a tenth either side: the buttons the artist chooses from."""
    return sorted({round(w, 2) for w in (best - 0.1, best, best + 0.1) if 0.1 <= round(w, 2) <= 1.0})


def _all_checkpoints(project: Project) -> list[Path]:
    return project.checkpoints()[-3:]  # early, mid, final


async def _draw(settings: Settings, family: Family, model: Path, lora: Path, prompts: list[tuple[str, str]],
                out: Path, seed: int, steps: int, size: int, weights: tuple[float, ...]
                ) -> tuple[grid.Grid | None, str | None]:  # fmt: skip
    """The grid by the built-in engine, or by ComfyUI when its address is set (or for Flux, which only
    ComfyUI draws here); None and the reason when ComfyUI could not draw it (its workflows are saved)."""
    if not settings.comfyui_url and family is not Family.flux:
        drawn = await asyncio.to_thread(grid.render, model, _arch(family), lora, prompts, out, seed=seed,
                                        resolution=size, steps=steps, weights=weights)  # fmt: skip
        return drawn, None
    graphs = {
        _cell(name, w): comfyui.workflow(
            checkpoint=model.name, lora=lora.name if w is not None else None, weight=w or 0.0, prompt=prompt,
            negative="", seed=seed, width=size, height=size, steps=steps, prefix=f"loratrain/{lora.stem}")
        for name, prompt in prompts for w in (None, *weights)
    }  # fmt: skip
    rendered = await comfyui.render(settings.comfyui_url, graphs, out)
    if len(rendered.images) < len(graphs):
        return None, rendered.message
    cells = [grid.Cell(name, prompt, w, rendered.images[_cell(name, w)])
             for w in (None, *weights) for name, prompt in prompts]  # fmt: skip
    positions = {(r, c): cells[c * len(prompts) + r].path for c in range(len(weights) + 1) for r in range(len(prompts))}
    picture = compose(
        [n for n, _ in prompts],
        [grid.NO_LORA, *map(weight_label, weights)],
        positions,
        out / "grid.png",
        f"{lora.stem} in ComfyUI: same prompt and seed ({seed}) across each row",
    )
    note = (f"Drawn by ComfyUI at {settings.comfyui_url} (the LoRA must be in its models/loras folder as "
            f"{lora.name}).")  # fmt: skip
    return grid.Grid(picture, cells, seed, weights, prompts, lora), note


def _cell(prompt_name: str, weight: float | None) -> str:
    """One picture's name among ComfyUI's graphs: the prompt and its column."""
    return f"{prompt_name}-{weight_label(weight) if weight is not None else 'none'}"


def _write_eval_md(project: Project, result: Evaluation, weight: float | None) -> Path:
    high = [line for line in result.comparison if line.startswith(("Weight 0.9", "Weight 1.0"))]
    sweet = next((line for line in result.comparison if "sweet spot" in line), "not measured yet")
    return records.write_eval_md(
        project, sweet_spot=sweet, weight=weight or 0.0, quality_notes=result.suggestions or [],
        high_weight_issues=high, checkpoint=result.checkpoint, prompts=result.prompts, grid=result.grid,
        comparison=result.comparison)  # fmt: skip


async def register(settings: Settings, project: Project, store: Store, weight: float, good_for: str | None = None
                   ) -> Path:  # fmt: skip
    """Record the LoRA in studio.md at the weight the artist chose; eval.md and status.md say so."""
    if not 0 < weight <= 1.5:
        raise UserError(f"A weight of {weight:g} can't be recommended: choose one between 0.1 and 1.0.")
    lora, intent = _finished_lora(project), intents.load(project)
    params = (await store.gate(project.name, 2) or {}).get("details", {}).get("params", {})
    saved = project.root / "eval" / "evaluation.json"
    result = Evaluation.model_validate_json(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    entry = records.LoraEntry(
        name=project.name, file=str(lora.resolve()), type=str(intent.type), trigger=intent.trigger, weight=weight,
        base_model=FAMILIES[intent.family].display, good_for=good_for or intent.description or f"{intent.type}",
        date=datetime.now(UTC).date().isoformat(),
        params=f"{str(params.get('preset', '?')).capitalize()}, {params.get('epochs', '?')} epochs, "
        f"rank {params.get('rank', '?')}")  # fmt: skip
    studio = records.register(settings.grimoire, entry)
    if result is not None:
        _write_eval_md(project, result, weight)
    lines = [f"# Status: {project.name}", "- **Phase**: COMPLETE", f"- **LoRA**: {lora}",
             f"- **Recommended weight**: {round(weight, 2)}", f"- **Registered in**: {studio}"]  # fmt: skip
    project.write("status.md", "\n".join(lines) + "\n")
    return studio
