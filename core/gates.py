"""The gate ledger: the four gates' state at a glance, judged against their inputs as they are now.

A gate counts only if it passed on the inputs that exist today: its recorded fingerprint is compared
with the current one (the dataset and captions for Gate 1, the config files for Gate 2, the machine
for Gate 3, Gates 1–3 and the dry-run config for Gate 4). A gate whose inputs changed is stale, and
so is every gate after a gate that is not passing: no flag, button or conversation changes that.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from core.store import Store

NAMES = {1: "Dataset", 2: "Config", 3: "Environment", 4: "Dry run"}
State = Literal["passed", "failed", "stale", "not run"]
MARK = {"passed": "✅", "failed": "❌", "stale": "⚠️", "not run": "⏸"}


class GateState(BaseModel):
    number: int
    name: str
    state: State
    why: str


async def ledger(project: str, store: Store, current: dict[int, str | None]) -> list[GateState]:
    """Each gate's state. ``current`` holds each gate's input fingerprint as of now (None: unknown,
    taken as unchanged — the caller could not recompute it)."""
    states: list[GateState] = []
    blocked = False
    for number, name in NAMES.items():
        record = await store.gate(project, number)
        if record is None:
            state, why = "not run", "not checked yet"
        elif blocked:
            state, why = "stale", "an earlier gate is not passing, so this one must be checked again after it"
        elif current.get(number) not in (None, record["fingerprint"]):
            state, why = "stale", "what it checked has changed since; check it again"
        elif not record["passed"]:
            state, why = (
                "failed",
                "; ".join(record["details"].get("reasons", [])) or record["details"].get("summary", "did not pass"),
            )
        else:
            state, why = "passed", f"passed on {record['decided_at']}"
        blocked = blocked or state != "passed"
        states.append(GateState(number=number, name=name, state=state, why=why))
    return states


def at_a_glance(states: list[GateState]) -> str:
    """'✅ Dataset ✅ Config ❌ Environment ⏸ Dry run'."""
    return " ".join(f"{MARK[s.state]} {s.name}" for s in states)


def all_passed(states: list[GateState]) -> bool:
    return all(s.state == "passed" for s in states)
