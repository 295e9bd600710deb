"""``loratrain demo``: the whole pipeline end to end on generated pictures, in embedded mode.

It plays the artist: makes a folder of sample paintings (with a near-duplicate, a picture that is
too small, a file cut off partway and a text file posing as a JPEG, on purpose), then runs
new → add → audit → dupes → curate → report → caption → report → config → env → dryrun → train → eval →
register, printing each step as the artist would read it (the captions are written by the local analyzer
and the demo approves the samples; training runs on a tiny SDXL-shaped model built from a config, on the
CPU — the demo says so). Its grimoire is ``grimoire/demo/``, so the artist's own studio.md is never
touched. No network, token or GPU.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from core import intent as intents
from core.captions.formats import write_caption
from core.captions.proposals import propose
from core.dataset.curate import curate, most_varied
from core.dataset.explain import audit_lines, curation_lines, duplicate_lines
from core.dataset.importer import import_paths
from core.dataset.report import write_report
from core.dataset.snapshot import resolve, take
from core.environment import gate3
from core.evaluation.evaluate import evaluate, register
from core.families import Family
from core.gates import at_a_glance, ledger
from core.grimoire import Project
from core.intent import LoraType
from core.jobs import SAMPLES
from core.samples import scene, variant, write_jpeg
from core.settings import Settings
from core.store import open_store
from core.training import gate2
from core.training.configs import Backend
from core.training.dryrun import dry_run
from core.training.execute import Note, plan, train
from core.training.params import Preset
from core.training.progress import ProgressState
from core.training.tiny import build_tiny_model

NAME = "demo-style"
DEMO_GPU_GB = 24.0  # the memory check needs a card; the demo says it pretends one
DEMO_EPOCHS = 2  # passes over the pictures, once each: enough to show training, short on a CPU
DEMO_EVAL_STEPS = 3  # sampling steps per grid picture: a tiny random model shows nothing more with more
DEMO_EVAL_SIZE = 256  # grid pictures: small, so 30 of them draw in seconds on a CPU
STEPS = 14
DEMO_RESOLUTION = 512  # the lowest safe size for SDXL: keeps the demo's dry run quick on a CPU
TRIGGER = "demostyle_lt"
SCENES = 22


def make_samples(folder: Path) -> None:
    """The artist's folder: 22 paintings plus the mistakes real folders contain."""
    for seed in range(SCENES):
        write_jpeg(scene(seed), folder / f"painting {seed + 1:02d}.jpg")
    write_jpeg(variant(scene(3), "cropped", 0.5), folder / "painting 04 (edit).jpg", quality=85)
    write_jpeg(scene(40, size=(640, 560)), folder / "Café sketch.jpg")
    whole = (folder / "painting 05.jpg").read_bytes()
    (folder / "forest-late.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.jpg").write_text("remember: ask about the gouache set\n", encoding="utf-8")


def _step(number: int, title: str) -> None:
    print(f"\n── Step {number} of {STEPS}: {title} " + "─" * max(0, 60 - len(title)))


async def _run(settings: Settings, artist_folder: Path) -> None:
    project = Project.at(settings, NAME)
    shutil.rmtree(project.root, ignore_errors=True)
    async with open_store(settings.database_path) as store:
        await store.forget_project(NAME)

        _step(1, "what do you want to teach? (new)")
        intent = intents.create(
            project,
            LoraType.style,
            Family.sdxl,
            TRIGGER,
            "Warm, layered landscape paintings with visible brush strokes.",
        )
        print(
            f"A style LoRA for SDXL, trigger word `{intent.trigger}`. For a style, aim for {intent.target}: "
            f"{intent.target.why}."
        )
        print(f"Written: {project.path('intent.md')}")

        _step(2, "your pictures (add)")
        for r in await import_paths(project, sorted(artist_folder.iterdir()), settings, store, intent.resolution):
            mark = {"added": "✅", "already_there": "↩️", "refused": "❌"}[r.status]
            print(f"{mark} {r.original}: {r.message}")

        _step(3, "checking every picture (audit)")
        snapshot = await take(project, intent, settings, store)
        print("\n".join(audit_lines(snapshot.audit, intent.resolution)))

        _step(4, "duplicates (dupes)")
        print("\n".join(duplicate_lines(snapshot.duplicates)))
        for pair in snapshot.unresolved:
            a, b = (snapshot.inspections[f].audit for f in (pair.a, pair.b))
            keep = "a" if a.width * a.height >= b.width * b.height else "b"
            print("On Discord you'd press [Keep A] [Keep B] [Keep both]; the demo keeps the larger one.")
            print(await resolve(snapshot, store, pair.a, pair.b, keep))
        snapshot = await take(project, intent, settings, store)

        _step(5, "variety and selection (curate)")
        curation = curate(snapshot)
        print("\n".join(curation_lines(curation)))

        _step(6, "Gate 1: the dataset report (report)")
        gate, path = await write_report(snapshot, curation, store)
        print(f"Gate 1 (dataset): {'GO' if gate.passed else 'NO-GO'} — " + ("; ".join(gate.reasons) or "ready") + ".")

        _step(7, "captions: samples first, then the rest (caption)")
        await _caption(settings, store, project, intent, snapshot)

        _step(8, "Gate 1 again, with captions (report)")
        snapshot = await take(project, intent, settings, store)
        gate, path = await write_report(snapshot, curate(snapshot), store)
        print(f"Gate 1 (dataset): {'GO' if gate.passed else 'NO-GO'} — " + ("; ".join(gate.reasons) or "ready") + ".")
        print(f"Written: {path}")

        _step(9, "Gate 2: the training settings (config)")
        model = build_tiny_model(settings.grimoire / "models" / "tiny-sdxl", "sdxl")
        print(
            f"The demo trains on a tiny SDXL-shaped model built from a config ({model}) at {DEMO_RESOLUTION} px, "
            f"and pretends a {DEMO_GPU_GB:g} GB graphics card for the memory check: no GPU is needed here."
        )
        print(f"It uses the Quick preset cut to {DEMO_EPOCHS} passes of each picture once, so training takes seconds.")
        configured = await gate2.configure_preset(project, intent, store, Preset.quick, Backend.builtin, str(model),
                                                  DEMO_GPU_GB, resolution=DEMO_RESOLUTION, epochs=DEMO_EPOCHS,
                                                  repeats=1)  # fmt: skip
        verdict = "GO" if configured.gate.passed else "NO-GO — " + "; ".join(configured.gate.reasons)
        estimate = configured.gate.estimate.estimate_gb
        print(f"Gate 2 (config): {verdict}. Estimated memory for a real SDXL model: {estimate:.1f} GB.")
        print(f"Written: {configured.record}")

        _step(10, "Gate 3: this machine (env)")
        machine = await gate3.decide(await gate3.probe_project(settings, project, store), project, store)
        print(f"Gate 3 (environment): {machine.summary}")

        _step(11, "Gate 4: the dry run (dryrun)")
        dry = await dry_run(project, store)
        print(f"Gate 4 (dry run): {dry.summary}")

        states = await ledger(project.name, store, {})
        print(f"\n{at_a_glance(states)}")

        _step(12, "training (train)")
        print((await plan(project, store, states)).text())
        print("On Discord you'd press [Start training]; the demo presses it.")
        result = await train(settings, project, store, _show_progress)
        print(result.message)

        _step(13, "the strength grid (eval)")
        evaluation = await evaluate(settings, project, store, steps=DEMO_EVAL_STEPS, resolution=DEMO_EVAL_SIZE)
        print(f"Grid: {evaluation.grid}")
        print("\n".join(evaluation.comparison))
        options = " ".join(f"[{w:g}]" for w in evaluation.options)
        print(f"Which strength should I record as recommended? {options} — the demo takes {evaluation.suggested:g}.")

        _step(14, "registration (register)")
        studio = await register(settings, project, store, evaluation.suggested)
        print(f"Registered {project.name} in {studio} at weight {evaluation.suggested:g}.")
        print(f"Everything is recorded under {project.root.resolve()}")


_shown: list[str] = []  # the last progress line printed, so an unchanged one is not printed again


async def _show_progress(item: ProgressState | Note) -> None:
    if isinstance(item, Note):
        print(item.text)
    elif item.status == "training" and (line := f"{item.headline()} · {item.details().splitlines()[0]}") not in _shown:
        print(line)
        _shown[:] = [line]


async def _caption(settings: Settings, store, project: Project, intent, snapshot) -> None:
    """Step 7 as a scripted artist: review the samples (the demo approves each, and says so), then
    caption the rest with the approved samples as examples. Offline: the local analyzer writes them."""
    todo = [f for f in snapshot.usable if f not in snapshot.captioned()]
    samples = await propose(settings, store, project, intent, most_varied(snapshot, todo, SAMPLES), [], offline=True)
    for number, sample in enumerate(samples, 1):
        print(f"Sample {number} of {len(samples)}: {sample.file}\n  Caption: {sample.caption}")
        print("  Does this capture both what's in the image AND how it's painted? [Approve] [Adjust] [Skip]")
        print("  (the demo plays the artist and presses Approve)")
        write_caption(project, sample.file, sample.caption, intent.trigger)
        await store.record_caption(project.name, sample.file, sample.caption, sample.source, "approved")
    rest = [f for f in todo if f not in {s.file for s in samples}]
    examples = await store.approved_examples(project.name)
    for proposal in await propose(settings, store, project, intent, rest, examples, offline=True):
        write_caption(project, proposal.file, proposal.caption, intent.trigger)
        await store.record_caption(project.name, proposal.file, proposal.caption, proposal.source, "batch")
    print(f"Captioned the other {len(rest)} pictures; each caption is a .txt file beside its picture.")


def run_demo(settings: Settings) -> None:
    settings = settings.model_copy(update={"grimoire": settings.grimoire / "demo", "database": None})
    with tempfile.TemporaryDirectory(prefix="loratrain-demo-") as tmp:
        folder = Path(tmp) / "my paintings"
        folder.mkdir()
        print(f"Making sample paintings in {folder} (procedural, made on this machine)…")
        make_samples(folder)
        asyncio.run(_run(settings, folder))
