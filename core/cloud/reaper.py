"""The reaper: no rented GPU keeps billing after its run, its worker or its budget is gone.

A cloud run destroys its instance in a ``finally``; this catches what a ``finally`` cannot — a worker killed
outright, a machine that lost power, a destroy call that failed. The worker runs it every few minutes;
``loratrain cloud teardown`` is the same by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from core.cloud import ledger
from core.cloud.cost import spent
from core.cloud.providers import CloudError, Provider, provider
from core.events import InstanceDestroyed, Publish
from core.settings import Settings
from core.store import Store, open_store
from core.training.execute import alive

EVERY_S = 300  # how often the worker's reaper looks
QUIET_S = 600  # an instance whose driving job has not been heard from this long (elsewhere) is abandoned
GRACE_S = 120  # after its run ended, the run's own teardown has this long before the reaper steps in

Tell = Callable[[dict, str], Awaitable[None]]  # (instance, plain sentence) → the artist hears it


def _quiet_s(instance: dict) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(instance["updated_at"])).total_seconds()


async def why_reap(store: Store, instance: dict) -> str | None:
    """Why this RUNNING instance should be destroyed now, in plain words; None when its run still needs it."""
    cost = spent(instance["usd_per_hour"], instance["started_at"])
    if cost >= instance["cap_usd"]:
        return f"it reached your spending cap (${cost:.2f} of ${instance['cap_usd']:.2f})"
    run = await store.run_status(instance["run"])
    if run and run["status"] != "running" and _quiet_s(instance) > GRACE_S:
        return f"its run is over ({run['status']})"
    if not alive({"worker": instance["worker"], "updated_at": instance["updated_at"]}) or _quiet_s(instance) > QUIET_S:
        return "the worker driving it stopped"
    return None


async def give_back(settings: Settings, store: Store, provider: Provider, instance: dict,
                    **details: object) -> tuple[dict, float]:  # fmt: skip
    """Destroy a recorded instance (already gone counts as done) and record it TERMINATED, in the store and
    studio.md; the ended instance and what it cost in all. ``CloudError`` when the provider can't be reached:
    the record stays RUNNING, so the reaper tries again."""
    await asyncio.to_thread(provider.destroy, instance["id"])
    await store.end_instance(instance["provider"], instance["id"], **details)
    ended = next(i for i in await store.instances(run=instance["run"]) if i["id"] == instance["id"])
    ledger.record(settings.grimoire, [ended])
    return ended, spent(ended["usd_per_hour"], ended["started_at"], ended["ended_at"])


async def destroy(settings: Settings, store: Store, provider: Provider, instance: dict, why: str, tell: Tell) -> bool:
    """Destroy one recorded instance (already gone counts as done), record it, and tell the artist. False
    when the provider could not be reached: the instance stays RUNNING in the record, for the next pass."""
    try:
        ended, cost = await give_back(settings, store, provider, instance, reaped=why)
    except CloudError as err:
        await tell(instance, f"⚠️ Instance {instance['id']} on {provider.title} should be destroyed ({why}), but "
                             f"that failed: {err} I'll try again in a few minutes.")  # fmt: skip
        return False
    await tell(ended, f"Destroyed the {ended['gpu']} on {provider.title} (instance {ended['id']}) because {why}; "
                      f"it cost about ${cost:.2f} in all.")  # fmt: skip
    return True


async def reap(settings: Settings, store: Store, providers: Callable[[str], Provider], tell: Tell) -> list[dict]:
    """One pass over the recorded RUNNING instances; returns those destroyed."""
    destroyed = []
    for instance in await store.instances("RUNNING"):
        why = await why_reap(store, instance)
        if why:
            provider = providers(instance["provider"])
            if await destroy(settings, store, provider, instance, why, tell):
                destroyed.append(instance)
    return destroyed


async def reap_and_tell(settings: Settings, publish: Publish) -> int:
    """The worker's periodic pass: reap, and tell each instance's artist in their thread. Returns how many
    instances were destroyed."""

    async def tell(instance: dict, text: str) -> None:
        if instance["session"]:
            await publish(InstanceDestroyed(id=f"reaper:{instance['provider']}:{instance['id']}:{instance['status']}",
                                            session=instance["session"], project=instance["project"],
                                            job=instance["run"], text=text))  # fmt: skip

    async with open_store(settings.database_path) as store:
        return len(await reap(settings, store, lambda name: provider(settings, name), tell))
