"""Whether a project may train now: the four gates judged against their inputs as they are today.

The terminal, the engine and the worker all ask here, and the worker asks again just before it
spends GPU time, so a picture added or a setting changed after the gates passed always stops a run.
"""

from __future__ import annotations

from pathlib import Path

from core import intent as intents
from core.dataset.snapshot import take
from core.environment import gate3
from core.gates import GateState, ledger
from core.grimoire import Project
from core.settings import Settings
from core.store import Store
from core.training import gate2
from core.training.dryrun import inputs_fingerprint

FIX = {  # what to do when a gate stands in the way, per gate
    1: "check the dataset again (type **check**, or `loratrain report NAME`)",
    2: "choose the settings again (a preset, or `loratrain config NAME`)",
    3: "check the machine again (`loratrain env --backend B`), after fixing what it found",
    4: "run the dry run again (`loratrain dryrun NAME`)",
}


async def current_fingerprints(settings: Settings, project: Project, store: Store) -> dict[int, str | None]:
    """The inputs of the four gates as they are now: the dataset and captions, the config files, this
    machine (probed again, as the settings' trainer and memory need it), and the dry run's inputs."""
    intent = intents.load(project)
    current: dict[int, str | None] = {1: (await take(project, intent, settings, store)).fingerprint()}
    config = (await store.gate(project.name, 2) or {}).get("details", {})
    files = [Path(f) for f in config.get("files", [])]
    current[2] = gate2.fingerprint(files) if files and all(f.is_file() for f in files) else None
    current[3] = gate3.fingerprint(await gate3.probe_project(settings, project, store))
    dry = (await store.gate(project.name, 4) or {}).get("details", {}).get("config")
    if dry is not None:
        gates = {n: await store.gate(project.name, n) for n in (1, 2, 3)}
        current[4] = inputs_fingerprint(gates, dry)
    return current


async def readiness(settings: Settings, project: Project, store: Store) -> list[GateState]:
    return await ledger(project.name, store, await current_fingerprints(settings, project, store))


def refusal(states: list[GateState]) -> str | None:
    """Why training may not start, naming the first gate in the way and what to do; None when all pass."""
    blocking = next((s for s in states if s.state != "passed"), None)
    if blocking is None:
        return None
    return (
        f"Training can't start: Gate {blocking.number} ({blocking.name}) is {blocking.state} — {blocking.why}. "
        f"To go on, {FIX[blocking.number]}. Nothing overrides a gate: each one catches a problem before it "
        "costs hours of GPU time."
    )
