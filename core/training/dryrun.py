"""Gate 4, the dry run: the configured trainer really loads the model, reads the dataset and takes a
few training steps — the cheapest way to find a wrong path, an unreadable caption or a memory limit
before hours of GPU time are booked.

Any backend: the trainer is started as real training will be (``core.training.launch``) with a step
limit and a scratch output folder, its output read by the same monitor, out-of-memory errors recovered
the same way (``core.training.retries``). The result is recorded with a fingerprint of everything it
depended on (Gates 1–3 and the batch size it ran at), so changing any of them voids it; the measured
time per step is kept for the estimate shown before training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from core import intent as intents
from core.errors import UserError
from core.grimoire import Project
from core.store import Store
from core.training.configs import Backend
from core.training.launch import Run
from core.training.monitor import Monitor
from core.training.retries import diagnosis, with_memory_retries

STEPS = 3  # the seed's 2–5 real steps


class Gate4(BaseModel):
    passed: bool
    summary: str  # "Dry run passed — model loaded, 3 steps completed, no errors" or the diagnosis
    adjustments: list[str]  # each out-of-memory recovery, in plain words
    steps: int
    fingerprint: str
    seconds_per_step: float | None = None


def inputs_fingerprint(gates: dict[int, dict | None], config: dict) -> str:
    """What the dry run depended on: the fingerprints Gates 1–3 were decided on, and how it ran."""
    parts = {n: (gates.get(n) or {}).get("fingerprint") for n in (1, 2, 3)}
    return hashlib.sha256(json.dumps([parts, config], sort_keys=True).encode()).hexdigest()


async def dry_run(project: Project, store: Store) -> Gate4:
    config_gate = await store.gate(project.name, 2)
    if config_gate is None:
        raise UserError(f"There are no training settings yet. Write them first: loratrain config {project.name} ...")
    backend = Backend(config_gate["details"]["backend"])
    files = [Path(f) for f in config_gate["details"]["files"]]
    family = intents.load(project).family
    scratch = project.root / "dryrun"
    shutil.rmtree(scratch, ignore_errors=True)  # a trainer that resumes by itself must start from nothing
    log = project.root / "logs" / "dryrun.log"
    log.unlink(missing_ok=True)
    gates = {n: await store.gate(project.name, n) for n in (1, 2, 3)}
    attempt = await with_memory_retries(backend, files, project, family, Run(steps=STEPS), log,
                                        lambda: Monitor(str(backend), total_steps=STEPS))  # fmt: skip
    steps = attempt.monitor.step or 0
    problem = diagnosis(attempt)
    if problem is None and steps >= 2:
        summary = f"Dry run passed — model loaded, {steps} steps completed, no errors."
    else:
        summary = f"Dry run failed — {problem or f'only {steps} step(s) completed.'} The trainer's output: {log}"
    ran = {"backend": str(backend), "batch_size": attempt.run.batch_size}
    gate = Gate4(passed=summary.startswith("Dry run passed"), summary=summary, adjustments=attempt.adjustments,
                 steps=steps, fingerprint=inputs_fingerprint(gates, ran),
                 seconds_per_step=attempt.monitor.seconds_per_step)  # fmt: skip
    await store.record_gate(project.name, 4, gate.passed, gate.fingerprint,
                            {"summary": summary, "adjustments": gate.adjustments, "steps": steps, "config": ran,
                             "seconds_per_step": gate.seconds_per_step,
                             "inputs": {n: (g or {}).get("fingerprint") for n, g in gates.items()}})  # fmt: skip
    project.write("status.md", _status(project, gate))
    return gate


def _status(project: Project, gate: Gate4) -> str:
    lines = [f"# Status: {project.name}", f"- **Gate 4 (dry run)**: {'PASSED' if gate.passed else 'FAILED'}",
             f"- **Result**: {gate.summary}"]  # fmt: skip
    lines += [f"- **Memory recovery**: {a}" for a in gate.adjustments]
    return "\n".join(lines) + "\n"
