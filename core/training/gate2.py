"""Gate 2: the training config (``config.md``, in the seed's format) and its GO / NO-GO.

Gate 2 passes only when the memory estimate fits the GPU with the 20% margin, every setting is inside
its safe range, the chosen trainer supports the base model, and the generated files pass that trainer's
checks. The result is stored with a fingerprint of the written config files, so changing any setting
voids it (and the gates after it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel

from core.dataset.audit import list_files
from core.families import FAMILIES, Family
from core.grimoire import Project
from core.intent import Intent
from core.store import Store
from core.training import flux_parts
from core.training import params as training
from core.training.configs import KEEP_LAST, SAVE_EVERY_N_EPOCHS, Backend, Job, write
from core.training.params import Optimizer, Preset, TrainingParams, defaults
from core.training.vram import CALCULATOR_FILE, Estimate, estimate

# Which base models each trainer can train (shared/research/backends.md and resources/backends/):
# kohya has a script for SD 1.x, SDXL (and Pony, an SDXL checkpoint) and Flux; SimpleTuner's
# model_family covers sdxl and flux but not SD 1.5; ai-toolkit's model.arch covers sd1, sdxl and flux;
# the built-in trainer is diffusers' SD 1.5 / SDXL pipelines only (shared/DESIGN.md).
SUPPORTS: dict[Backend, frozenset[Family]] = {
    Backend.builtin: frozenset({Family.sd15, Family.sdxl, Family.pony}),
    Backend.kohya: frozenset(Family),
    Backend.simpletuner: frozenset({Family.sdxl, Family.pony, Family.flux}),
    Backend.ai_toolkit: frozenset(Family),
}
BACKEND_NAMES = {
    Backend.builtin: "built-in trainer (diffusers + peft)",
    Backend.kohya: "kohya sd-scripts",
    Backend.simpletuner: "SimpleTuner",
    Backend.ai_toolkit: "ai-toolkit",
}
# Base models a run may start from when the artist names none (Hugging Face names).
DEFAULT_MODELS = {
    Family.sd15: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    Family.sdxl: "stabilityai/stable-diffusion-xl-base-1.0",
    Family.flux: "black-forest-labs/FLUX.1-dev",
}


class Gate2(BaseModel):
    passed: bool
    reasons: list[str]  # why it is NO-GO, each saying what to change (empty when GO)
    estimate: Estimate


class Configured(BaseModel):
    gate: Gate2
    files: list[str]  # the backend's config files, main one first
    record: str  # config.md
    fingerprint: str


def estimate_for(p: TrainingParams, available_gb: float | None, backend: Backend = Backend.kohya) -> Estimate:
    """The memory estimate for these settings on ``backend``, whose layers set the LoRA's size."""
    return estimate(
        p.family,
        p.resolution,
        p.batch_size,
        p.rank,
        p.optimizer,
        str(p.precision),
        p.gradient_checkpointing,
        available_gb=available_gb,
        backend=backend,
    )


def compatibility(backend: Backend, family: Family) -> list[str]:
    if family in SUPPORTS[backend]:
        return []
    others = ", ".join(BACKEND_NAMES[b] for b in Backend if family in SUPPORTS[b])
    return [
        f"the {BACKEND_NAMES[backend]} cannot train {FAMILIES[family].display}; choose {others} instead "
        f"(resources/backends/)"
    ]


def decide(params: TrainingParams, backend: Backend, available_gb: float | None) -> Gate2:
    """GO only when memory, every setting and the trainer/model pairing are all right."""
    memory = estimate_for(params, available_gb, backend)
    reasons = compatibility(backend, params.family) + training.validate(params)
    if available_gb is None:
        reasons.append(
            "the GPU's memory is unknown (no graphics card found here); give it with --available GB "
            f"(resources/{CALCULATOR_FILE})"
        )
    elif not memory.fits:
        advice = (
            f"lower the batch size to {memory.recommended_batch}."
            if memory.recommended_batch
            else "in order, try: " + " ".join(f"({i}) {lever}" for i, lever in enumerate(memory.levers, 1))
        )
        reasons.append(
            f"the run needs about {memory.estimate_gb:.1f} GB, and with the 20% safety margin that is more than "
            f"the {available_gb:g} GB available (resources/{CALCULATOR_FILE}); {advice}"
        )
    return Gate2(passed=not reasons, reasons=reasons, estimate=memory)


def _choices(p: TrainingParams) -> list[str]:
    """Each setting in plain words, with the reference file it comes from."""
    guide, presets = f"resources/{training.GUIDE_FILE}", f"resources/{training.PRESETS_FILE}"
    optimizers = f"resources/{training.OPTIMIZERS_FILE}"
    rate = (
        "Prodigy sets its own step size, so the rate is 1.0"
        if p.optimizer is training.Optimizer.prodigy
        else p.explain("learning_rate")
    )
    lines = [
        (f"Preset {p.preset} ({p.epochs} epochs)", p.explain("epochs"), presets),
        (f"Repeats {p.repeats} for {p.pictures} pictures", p.explain("repeats"), presets),
        (f"Learning rate {p.learning_rate:g}", rate, optimizers),
        (f"Text-encoder learning rate {p.text_encoder_lr:g}", p.explain("text_encoder_lr"), guide),
        (f"Batch size {p.batch_size}", p.explain("batch_size"), guide),
        (f"Resolution {p.resolution}", p.explain("resolution"), guide),
        (f"Rank {p.rank}, alpha {p.alpha:g}", f"{p.explain('rank')} {p.explain('alpha')}", guide),
        (
            f"Optimizer {p.optimizer}",
            training.optimizers()[p.optimizer].good_for,
            f"resources/{training.OPTIMIZERS_FILE}",
        ),
        (
            f"Schedule {p.scheduler}, warm-up {p.warmup_ratio:.0%}",
            f"{p.explain('scheduler')} {p.explain('warmup_ratio')}",
            guide,
        ),
        (f"Precision {p.precision}", p.explain("precision"), guide),
        (
            f"Gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}",
            p.explain("gradient_checkpointing"),
            guide,
        ),
        (f"Caption dropout {p.caption_dropout:.0%}", p.explain("caption_dropout"), guide),
        (f"Tag shuffle {'on' if p.shuffle_captions else 'off'}", p.explain("shuffle_captions"), guide),
        (
            f"Checkpoints every {SAVE_EVERY_N_EPOCHS} epochs, last {KEEP_LAST} kept",
            "A run that overshoots at the end still leaves a good earlier version to choose.",
            presets,
        ),
    ]
    return [f"- **{what}**: {why} ({source})" for what, why, source in lines]


def render(
    project: Project, intent: Intent, p: TrainingParams, backend: Backend, model: str, gate: Gate2, config_file: Path
) -> str:
    memory = gate.estimate
    available = f"{memory.available_gb:g} GB" if memory.available_gb is not None else "unknown"
    decision = "GO" if gate.passed else "NO-GO"
    reasoning = (
        "The memory estimate fits with the 20% margin, every setting is inside its safe range, and the trainer "
        "supports this base model."
        if gate.passed
        else "\n".join(f"- {r}" for r in gate.reasons)
    )
    breakdown = "\n".join(f"- {part.replace('_', ' ')}: {gb:.2f} GB" for part, gb in memory.breakdown.items())
    return f"""# Training Config: {project.name}
- **Backend**: {BACKEND_NAMES[backend]} ({backend})
- **Base model**: {FAMILIES[p.family].display} ({p.family}), {model}
- **Preset**: {p.preset.value.capitalize()} ({p.epochs} epochs, {p.total_steps} steps)
- **Key parameters**: lr={p.learning_rate:g}, epochs={p.epochs}, batch={p.batch_size}, rank={p.rank}
- **Estimated VRAM**: {memory.estimate_gb:.1f} GB (available: {available})
- **Estimated time**: measured by the dry run
- **Config file**: {config_file}

## Gate 2 Decision: {decision}
{reasoning}

## Why these settings
Trigger word `{intent.trigger}` stays first in every caption.
{chr(10).join(_choices(p))}

## Memory estimate
How the {memory.estimate_gb:.1f} GB add up (resources/{CALCULATOR_FILE}):
{breakdown}
"""


def fingerprint(files: list[Path]) -> str:
    """Changes whenever any generated config file changes."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


async def configure(
    project: Project,
    intent: Intent,
    params: TrainingParams,
    backend: Backend,
    model: str | None,
    available_gb: float | None,
    store: Store,
) -> Configured:
    """Write the backend's files and config.md, decide Gate 2 and record it with the config's fingerprint."""
    gate = decide(params, backend, available_gb)
    base = model or DEFAULT_MODELS.get(params.family)
    if base is None:
        gate = Gate2(
            passed=False,
            reasons=[
                *gate.reasons,
                f"{FAMILIES[params.family].display} has no public default; give its file with --model PATH",
            ],
            estimate=gate.estimate,
        )
    parts, missing = (
        flux_parts.find(base or "") if (backend, params.family) == (Backend.kohya, Family.flux) else ({}, [])
    )
    written = write(backend, Job(project, params, base or "", intent.trigger, parts))
    if written.problems or missing:
        gate = Gate2(passed=False, reasons=gate.reasons + missing + written.problems, estimate=gate.estimate)
    record = project.write(
        "config.md", render(project, intent, params, backend, base or "(not given)", gate, written.files[0])
    )
    digest = fingerprint(written.files)
    await store.record_gate(
        project.name,
        2,
        gate.passed,
        digest,
        {
            "backend": str(backend),
            "model": base,
            "reasons": gate.reasons,
            "estimate_gb": gate.estimate.estimate_gb,
            "available_gb": available_gb,
            "files": [str(f) for f in written.files],
            "params": params.model_dump(mode="json"),
        },
    )
    return Configured(gate=gate, files=[str(f) for f in written.files], record=str(record), fingerprint=digest)


async def configure_preset(
    project: Project,
    intent: Intent,
    store: Store,
    preset: Preset,
    backend: Backend,
    model: str | None,
    available_gb: float | None,
    optimizer: Optimizer = Optimizer.adamw8bit,
    **overrides: object,
) -> Configured:
    """Settings from a preset for this project's dataset (plus the artist's overrides), then
    ``configure``. Gradient checkpointing is turned on whenever the memory would otherwise be tight
    (resources/training/parameters-guide.md)."""
    pictures = len(list_files(project.dataset_dir)) if project.dataset_dir.is_dir() else 0
    chosen = defaults(intent.family, intent.type, pictures, preset, optimizer).with_overrides(**overrides)
    if not chosen.gradient_checkpointing and not estimate_for(chosen, available_gb, backend).fits:
        chosen = chosen.with_overrides(gradient_checkpointing=True)
    return await configure(project, intent, chosen, backend, model, available_gb, store)
