"""The work the engine asks for, as plain async functions of plain ids and paths.

The arq worker runs them (``worker/``); embedded mode runs them in-process (``InProcessRunner``).
Each is idempotent: importing a file twice skips it as an exact copy, the report is rewritten from
what is on disk, and events carry ids derived from the job id, so a second run does no harm.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pydantic import BaseModel

from core import intent as intents
from core.captions.formats import read_caption, write_caption
from core.captions.proposals import Proposal, propose
from core.dataset.curate import curate, most_varied
from core.dataset.explain import audit_lines
from core.dataset.importer import import_paths
from core.dataset.report import write_report
from core.dataset.sidebyside import side_by_side
from core.dataset.snapshot import take
from core.environment import gate3
from core.errors import UserError
from core.events import (
    CaptionsProposed,
    CaptionsWritten,
    CloudOffers,
    CloudQuote,
    DatasetChecked,
    EvaluationReady,
    GateDecided,
    JobFailed,
    JobProgress,
    JobStarted,
    LoraRegistered,
    PairToDecide,
    ProposedCaption,
    Publish,
    TrainingFinished,
    TrainingNote,
    TrainingProgress,
)
from core.grimoire import Project, inside
from core.intent import Intent
from core.settings import Settings
from core.store import Store, open_store
from core.studio import gpu_memory_gb, model_path
from core.training import dryrun, execute, gate2
from core.training.configs import Backend, default_backend
from core.training.execute import Note
from core.training.params import Preset
from core.training.progress import ProgressState
from core.training.vram import detect_available_gb


class Job(BaseModel):
    """A job the engine wants run: its function's name, a stable id, and plain arguments."""

    name: str
    id: str
    session: str
    project: str
    args: dict = {}


def job_id(name: str, project: str, *inputs: object) -> str:
    """Same job, same inputs → same id (so a queue runs it once); any new input → a new id."""
    digest = hashlib.sha256(repr(inputs).encode()).hexdigest()[:16]
    return f"{name}:{project}:{digest}"


def inbox(settings: Settings, session: str) -> Path:
    """Where adapters put an artist's uploads before the worker checks and imports them."""
    return settings.grimoire / "inbox" / session


async def dataset_check(settings: Settings, job: Job, publish: Publish) -> DatasetChecked:
    """Import any uploads waiting in the inbox, audit the dataset, find duplicates, write the Gate 1
    report, and publish the findings."""
    project = Project.existing(settings, job.project)
    intent = intents.load(project)
    common = _about(job)
    staged = [inside(settings.grimoire, Path(p)) for p in job.args.get("staged", [])]
    staged = [p for p in staged if p.is_file()]  # a re-run finds them imported and gone
    await publish(JobStarted(id=f"{job.id}:started", text=f"Checking your pictures ({len(staged)} new)…", **common))
    async with open_store(settings.database_path) as store:
        results = []
        if staged:
            await publish(JobProgress(id=f"{job.id}:import", text="Importing", done=0, total=3, **common))
            results = await import_paths(project, staged, settings, store, intent.resolution)
        await publish(JobProgress(id=f"{job.id}:audit", text="Checking every picture", done=1, total=3, **common))
        snapshot = await take(project, intent, settings, store)
        await publish(JobProgress(id=f"{job.id}:report", text="Writing the report", done=2, total=3, **common))
        gate, report = await write_report(snapshot, curate(snapshot), store)
    pairs = []
    for pair in snapshot.unresolved:
        sha_a, sha_b = snapshot.inspections[pair.a].sha256, snapshot.inspections[pair.b].sha256
        picture = project.root / "review" / f"pair-{sha_a[:12]}-{sha_b[:12]}.jpg"
        side_by_side(project.dataset_dir / pair.a, project.dataset_dir / pair.b, picture, ("Left", "Right"))
        pairs.append(PairToDecide(a=pair.a, b=pair.b, sha_a=sha_a, sha_b=sha_b, kind=pair.kind, picture=str(picture)))
    for path in staged:
        path.unlink(missing_ok=True)
    added = sum(r.status == "added" for r in results)
    imported = [f"Added {added} of {len(results)} file(s)."] if results else []
    imported += [f"{r.original}: {r.message}" for r in results if r.status != "added"]
    event = DatasetChecked(
        id=f"{job.id}:checked",
        job=job.id,
        session=job.session,
        project=job.project,
        imported=imported,
        audit=audit_lines(snapshot.audit, intent.resolution),
        pairs=pairs,
        gate_passed=gate.passed,
        gate_reasons=gate.reasons,
        gate_fixes=gate.fixes,
        report=report,
        usable=len(snapshot.usable),
        captioned=len(snapshot.captioned()),
    )
    await publish(event)
    return event


SAMPLES = 5  # captions the artist reviews before the rest are written (the seed's rule)


async def caption_samples(settings: Settings, job: Job, publish: Publish) -> None:
    """Propose captions for the few uncaptioned pictures that best cover the dataset's variety."""
    project = Project.existing(settings, job.project)
    intent = intents.load(project)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intent, settings, store)
        todo = [f for f in snapshot.usable if f not in snapshot.captioned()]
        samples = most_varied(snapshot, todo, SAMPLES)
        proposals = await _propose(settings, store, project, intent, samples, job, publish, "Writing sample captions")
        for p in proposals:
            await store.record_caption(project.name, p.file, p.caption, p.source, "proposed")
    samples_out = [ProposedCaption(**p.model_dump(), picture=str(project.dataset_dir / p.file)) for p in proposals]
    await publish(CaptionsProposed(id=f"{job.id}:proposed", samples=samples_out, **_about(job)))


async def caption_batch(settings: Settings, job: Job, publish: Publish) -> None:
    """Caption every usable picture still without a caption, with the approved samples as examples.
    Pictures captioned since (a re-run, or the artist's own) are left as they are."""
    project = Project.existing(settings, job.project)
    intent = intents.load(project)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intent, settings, store)
        todo = [f for f in snapshot.usable if read_caption(project, f) is None]
        proposals = await _propose(settings, store, project, intent, todo, job, publish, "Captioning")
        for p in proposals:
            write_caption(project, p.file, p.caption, intent.trigger)
            await store.record_caption(project.name, p.file, p.caption, p.source, "batch")
    problems = [f"{p.file}: {p.problem}" for p in proposals if p.problem]
    await publish(CaptionsWritten(id=f"{job.id}:written", written=len(proposals), problems=problems, **_about(job)))


def _about(job: Job) -> dict:
    return {"session": job.session, "project": job.project, "job": job.id}


async def _propose(settings: Settings, store: Store, project: Project, intent: Intent, files: list[str], job: Job,
                   publish: Publish, doing: str) -> list[Proposal]:  # fmt: skip
    """Caption proposals for ``files``, with the approved captions as examples, reporting progress."""
    await publish(JobStarted(id=f"{job.id}:started", text=doing, total=len(files), **_about(job)))

    async def progress(done: int, total: int) -> None:
        await publish(JobProgress(id=f"{job.id}:progress:{done}", text=doing, done=done, total=total, **_about(job)))

    examples = await store.approved_examples(project.name)
    return await propose(settings, store, project, intent, files, examples, job.args.get("offline", False), progress)


async def configure(settings: Settings, job: Job, publish: Publish) -> None:
    """Gate 2: settings from the chosen preset, the backend's files, config.md."""
    project = Project.existing(settings, job.project)
    intent = intents.load(project)
    backend = Backend(job.args.get("backend") or default_backend(intent.family))
    model = job.args.get("model") or model_path(settings.grimoire, intent.family)
    async with open_store(settings.database_path) as store:
        available = gpu_memory_gb(settings.grimoire) or detect_available_gb()
        done = await gate2.configure_preset(project, intent, store, Preset(job.args["preset"]), backend, model,
                                            available)  # fmt: skip
    summary = "GO — the settings fit the GPU and every value is in its safe range." if done.gate.passed else "NO-GO"
    await publish(GateDecided(id=f"{job.id}:gate", gate=2, passed=done.gate.passed, summary=summary,
                              fixes=done.gate.reasons, record=done.record, **_about(job)))  # fmt: skip


async def check_environment(settings: Settings, job: Job, publish: Publish) -> None:
    """Gate 3: this worker's GPU, driver, CUDA, PyTorch, disk and trainer, checked for the project."""
    project = Project.existing(settings, job.project)
    async with open_store(settings.database_path) as store:
        env = await gate3.probe_project(settings, project, store)
        gate = await gate3.decide(env, project, store)
    fixes = [f"{p.problem} {p.fix}" for p in env.problems if p.blocking]
    await publish(GateDecided(id=f"{job.id}:gate", gate=3, passed=gate.passed, summary=gate.summary, fixes=fixes,
                              record=str(project.path("environment.md")), **_about(job)))  # fmt: skip


async def dry_run_job(settings: Settings, job: Job, publish: Publish) -> None:
    """Gate 4: a few real training steps with the configured trainer."""
    project = Project.existing(settings, job.project)
    await publish(JobStarted(id=f"{job.id}:started", text="Dry run", total=dryrun.STEPS, **_about(job)))
    async with open_store(settings.database_path) as store:
        gate = await dryrun.dry_run(project, store)
    status = str(project.path("status.md"))
    await publish(GateDecided(id=f"{job.id}:gate", gate=4, passed=gate.passed, summary=gate.summary,
                              fixes=gate.adjustments, record=status, **_about(job)))  # fmt: skip


def reporter(job: Job, publish: Publish) -> execute.Report:
    """A run's progress and notes as events: the progress message edited in place, the notes posted."""

    async def report(item: ProgressState | Note) -> None:
        stamp = time.time_ns()  # progress ids need not be stable: a repeated edit does no harm
        if isinstance(item, Note):
            await publish(TrainingNote(id=f"{job.id}:note:{stamp}", text=item.text, ping=item.ping,
                                       picture=item.picture, **_about(job)))  # fmt: skip
        else:
            total = item.epochs or item.total_steps or 1
            done = item.epoch if item.epochs else item.step
            await publish(TrainingProgress(id=f"{job.id}:progress:{stamp}", headline=item.title(),
                                           details=item.details(), done=done, total=total, **_about(job)))  # fmt: skip

    return report


async def train_job(settings: Settings, job: Job, publish: Publish) -> None:
    """Training, on the GPU worker: the gates are checked again here, on this machine, before any GPU
    time is spent; a run whose worker died before is resumed from its last checkpoint."""
    project = Project.existing(settings, job.project)
    async with open_store(settings.database_path) as store:
        report, fresh = reporter(job, publish), job.args.get("fresh", False)
        result = await execute.train(settings, project, store, report, fresh=fresh, job=job.id)
    await publish(TrainingFinished(id=f"{job.id}:finished", status=result.status, message=result.message,
                                   lora=result.lora, curve=result.curve, progress=result.progress,
                                   **_about(job)))  # fmt: skip


async def evaluate_job(settings: Settings, job: Job, publish: Publish) -> None:
    """The strength grid of the finished LoRA (and its checkpoints side by side when asked), on the GPU."""
    from core.evaluation.evaluate import evaluate  # torch and diffusers load only in the worker that draws
    from core.evaluation.prompts import WEIGHTS

    project = Project.existing(settings, job.project)
    await publish(JobStarted(id=f"{job.id}:started", text="Drawing the strength grid", total=1, **_about(job)))
    async with open_store(settings.database_path) as store:
        weights = tuple(job.args.get("weights") or WEIGHTS)
        result = await evaluate(settings, project, store, compare=job.args.get("compare", False),
                                steps=settings.eval_steps, weights=weights)  # fmt: skip
    await publish(JobProgress(id=f"{job.id}:drawn", text="Drawing the strength grid", done=1, total=1,
                              **_about(job)))  # fmt: skip
    await publish(EvaluationReady(id=f"{job.id}:ready", **result.model_dump(exclude={"checkpoint", "prompts"}),
                                  **_about(job)))  # fmt: skip


async def register_job(settings: Settings, job: Job, publish: Publish) -> None:
    """The LoRA in studio.md at the weight the artist chose."""
    from core.evaluation.evaluate import register

    project = Project.existing(settings, job.project)
    async with open_store(settings.database_path) as store:
        studio = await register(settings, project, store, float(job.args["weight"]))
    await publish(LoraRegistered(id=f"{job.id}:registered", weight=float(job.args["weight"]), studio=str(studio),
                                 **_about(job)))  # fmt: skip


async def cloud_offers_job(settings: Settings, job: Job, publish: Publish) -> None:
    """Rented GPUs that fit the project's run, each with the run's estimated cost, for the artist to choose."""
    from core.cloud.providers import CloudError, keyed, provider
    from core.cloud.quotes import quotes
    from core.cloud.run import cloud_plan

    project = Project.existing(settings, job.project)
    async with open_store(settings.database_path) as store:
        details = await cloud_plan(settings, project, store)
    found, problems = [], []
    for name in keyed(settings):
        try:
            found += await quotes(settings, project, details, [provider(settings, name)], job.args.get("gpu"))
        except CloudError as err:
            problems.append(str(err))
    if not found and not problems:
        problems.append("No offer fits this run right now (its memory and disk); try again in a while.")
    chosen = sorted(found, key=lambda q: q.usd)[:3]
    await publish(CloudOffers(id=f"{job.id}:offers", cap_usd=settings.cloud_max_usd, note=" ".join(problems) or None,
                              quotes=[CloudQuote(provider=q.offer.provider, gpu=q.offer.gpu, usd=q.usd, text=q.text(),
                                                 quote=q.model_dump(mode="json")) for q in chosen],
                              **_about(job)))  # fmt: skip


async def cloud_train_job(settings: Settings, job: Job, publish: Publish) -> None:
    """Training on a rented GPU (the artist confirmed its cost): the gates there, the run, the grid, the
    results home, and the instance destroyed whatever happens."""
    from core.cloud.cost import Estimate
    from core.cloud.providers import provider
    from core.cloud.run import train_in_cloud

    project = Project.existing(settings, job.project)
    quote = Estimate.model_validate(job.args["quote"])
    async with open_store(settings.database_path) as store:
        result, grid = await train_in_cloud(settings, project, store, provider(settings, quote.offer.provider), quote,
                                            reporter(job, publish), run_id=job.id, session=job.session)  # fmt: skip
    await publish(TrainingFinished(id=f"{job.id}:finished", status=result.status, message=result.message,
                                   lora=result.lora, curve=result.curve, progress=result.progress,
                                   grid_follows=grid is not None, **_about(job)))  # fmt: skip
    if grid is not None:
        shown = {k: v for k, v in grid.items() if k not in ("checkpoint", "prompts")}
        await publish(EvaluationReady(id=f"{job.id}:ready", **shown, **_about(job)))


JOBS = {
    "dataset_check": dataset_check,
    "caption_samples": caption_samples,
    "caption_batch": caption_batch,
    "configure": configure,
    "check_environment": check_environment,
    "dry_run": dry_run_job,
    "train": train_job,
    "evaluate": evaluate_job,
    "register": register_job,
    "cloud_offers": cloud_offers_job,
    "cloud_train": cloud_train_job,
}
DOING = {  # what each job does, for its failure message
    "dataset_check": "checking your pictures",
    "caption_samples": "writing sample captions",
    "caption_batch": "captioning your pictures",
    "configure": "writing the training settings",
    "check_environment": "checking the training machine",
    "dry_run": "running the dry run",
    "train": "training",
    "evaluate": "drawing the strength grid",
    "register": "registering your LoRA",
    "cloud_offers": "looking for a GPU to rent",
    "cloud_train": "training on the rented GPU",
}
FAILED = "Something went wrong while {doing}. Your pictures and decisions are safe; please try again in a moment."


def failure(job: Job, message: str | None = None) -> JobFailed:
    """The event telling the artist a job stopped; one id per job, so however many places report the
    same failure, a relay posts it once."""
    text = message or FAILED.format(doing=DOING.get(job.name, "working on your project"))
    return JobFailed(id=f"{job.id}:failed", session=job.session, project=job.project, job=job.id, message=text)


async def run_job(settings: Settings, job: Job, publish: Publish, last_try: bool = True) -> None:
    """Run a job by name. A problem the artist can fix, or the last try of any other failure, is
    published as a plain ``JobFailed``; other failures are raised so the queue can retry."""
    try:
        await JOBS[job.name](settings, job, publish)
    except UserError as err:
        await publish(failure(job, str(err)))
    except Exception:
        if last_try:
            await publish(failure(job))
        raise
