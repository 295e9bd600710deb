"""The conversation about renting a GPU: offers with their cost as buttons, the rental only on the artist's
press, and the instance's news (rented, destroyed) in the thread. Mixed into ``core.engine.Engine`` like
``AfterGates``; jobs do the work (``cloud_offers``, ``cloud_train``), this decides what is asked and when.
"""

from __future__ import annotations

from core.after_gates import CANCEL_TRAINING
from core.cloud.cost import about
from core.cloud.providers import TITLES, keyed
from core.errors import UserError
from core.events import CloudOffers, InstanceDestroyed
from core.jobs import Job
from core.replies import Choice, Option, Outcome, Text
from core.settings import Settings
from core.store import Store

CLOUD_WORDS = ("cloud", "rent", "rent a gpu", "cloud gpu", "rent a cloud gpu")
NOT_NOW = Option(value="no", label="Not now")
SUGGEST = ("No suitable graphics card here? Type **cloud** and I'll show rented GPUs that fit (Vast.ai, RunPod) with "
           "what the run would cost — nothing is rented until you press a button.")  # fmt: skip


class CloudTalk:
    settings: Settings
    store: Store

    def cloud_ready(self) -> bool:
        """Whether any provider's API key is set, so a rental can be offered at all."""
        return bool(keyed(self.settings))

    async def _cloud_offers(self, state: dict, gpu: str | None = None) -> Outcome:
        """Look for rented GPUs that fit (a job: the providers are asked by the cloud worker)."""
        if not self.cloud_ready():
            raise UserError("Renting a GPU needs a Vast.ai or RunPod API key in the bot's settings (LORATRAIN_"
                            "VAST_API_KEY or LORATRAIN_RUNPOD_API_KEY); ask whoever runs the bot.")  # fmt: skip
        gate = await self.store.gate(state["project"], 1)
        if not (gate and gate["passed"]) or await self.store.gate(state["project"], 2) is None:
            raise UserError("A rented GPU is chosen to fit your settings, so the dataset (Gate 1) and the settings "
                            "(a preset) come first.")  # fmt: skip
        state["data"]["cloud_round"] = state["data"].get("cloud_round", 0) + 1
        await self._save(state)
        job = self._job("cloud_offers", state, state["data"]["cloud_round"])
        job.args["gpu"] = gpu
        return Outcome(replies=[Text(text="Looking for rented GPUs that fit your run…")], jobs=[job])

    async def _cloud_offered(self, state: dict, event: CloudOffers) -> Outcome:
        """The offers as buttons, each with the run's whole estimated cost; only those under the cap."""
        affordable = [q for q in event.quotes if q.usd <= event.cap_usd]
        lines = [f"{i}. {q.text}" for i, q in enumerate(event.quotes, 1)]
        if not affordable:
            why = event.note or f"none stays under your cap of ${event.cap_usd:.2f} per run"
            return Outcome(replies=[Text(text="\n".join([*lines, f"I can't offer a rental: {why}."]))])
        await self.store.offer_choice(state["id"], "rent", {"quotes": [q.model_dump() for q in affordable]})
        prompt = "\n".join([
            "These fit your run (time and cost are estimates; the instance is destroyed as soon as your results "
            "are safe here, and a run that reaches your cap is stopped):", *lines,
            *([event.note] if event.note else []), "Press one to rent it and train there."])  # fmt: skip
        options = [Option(value=str(i), label=f"Rent {q.gpu} — {about(q.usd)}") for i, q in enumerate(affordable)]
        return Outcome(replies=[Choice(ref="rent", prompt=prompt, options=[*options, NOT_NOW])])

    async def _rent(self, state: dict, value: str) -> Outcome:
        """The artist pressed a rental: the cloud job rents, trains, grids, brings home, destroys."""
        offered = await self.store.take_choice(state["id"], "rent")
        if offered is None:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        if value == NOT_NOW.value or not value.isdigit() or int(value) >= len(offered["quotes"]):
            return Outcome(replies=[Text(text="Nothing rented. Type **cloud** when you want to see offers again.")])
        chosen = offered["quotes"][int(value)]
        state["data"]["training_round"] = state["data"].get("training_round", 0) + 1
        state["phase"] = "training"
        await self._save(state)
        await self.store.offer_choice(state["id"], "cancel", {})
        job: Job = self._job("cloud_train", state, "cloud", state["data"]["training_round"])
        job.args["quote"] = chosen["quote"]
        prompt = (f"Renting {chosen['gpu']} on {TITLES[chosen['provider']]} ({about(chosen['usd'])}). I'll run the "
                  "four gates there, then train, keep one message up to date, ping you at checkpoints, draw the "
                  "strength grid, bring everything home and destroy the machine. You can stop it at any time; the "
                  "last checkpoint is kept.")  # fmt: skip
        return Outcome(replies=[Choice(ref="cancel", prompt=prompt, options=CANCEL_TRAINING)], jobs=[job])

    async def _instance_destroyed(self, state: dict, event: InstanceDestroyed) -> Outcome:
        return Outcome(replies=[Text(text=event.text, ping=True)])
