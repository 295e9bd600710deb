"""The conversation once the four gates pass (phases 10–13): the training confirmation, Start and
Cancel, the end of a run, the strength grid and the weight chosen with buttons, narrowing between two
weights, the diagnosis, and the registration. Mixed into ``core.engine.Engine``, whose store, settings,
``_job`` and ``_save`` it uses; like the rest of the engine it decides, and jobs do the work.
"""

from __future__ import annotations

import re

from core import intent as intents
from core.errors import UserError
from core.evaluation import diagnose
from core.evaluation.diagnose_commands import facts_of
from core.evaluation.prompts import between
from core.events import EvaluationReady, LoraRegistered, TrainingFinished
from core.gates import ledger
from core.grimoire import Project
from core.jobs import Job
from core.replies import Attachment, Choice, Option, Outcome, Picture, Reply, Text
from core.settings import Settings
from core.store import Store
from core.training.execute import alive, plan

EVALUATING = (
    "Now let's see what it learned: I'm drawing it at weights 0.3, 0.5, 0.7, 0.9 and 1.0 beside the base model "
    "alone, with one seed, for test prompts of your LoRA's type (resources/evaluation/eval-methodology.md)."
)
NARROW = re.compile(r"(?:between|try)\s+(\d?\.\d+|1(?:\.0+)?)(?:\s+and\s+(\d?\.\d+|1(?:\.0+)?))?", re.IGNORECASE)
CHOOSE_WEIGHT = (
    "Which strength should I record as recommended? The numbers above are evidence, not a verdict: your eye "
    "decides (resources/evaluation/strength-guide.md). To see a weight in between, type e.g. **between 0.5 and "
    "0.7** or **try 0.65**."
)
START_TRAINING = [Option(value="start", label="Start training"), Option(value="later", label="Not yet")]
CANCEL_TRAINING = [Option(value="stop", label="Cancel training")]


class AfterGates:
    settings: Settings
    store: Store

    async def after_gates_text(self, state: dict, text: str) -> Outcome | None:
        """The artist's words for these phases: train, cancel, a weight to narrow to, a problem to diagnose;
        None when the text is none of them."""
        words = text.lower()
        if words in ("train", "start training"):
            return Outcome(replies=[await self._offer_training(state)])
        if words in ("cancel", "stop", "stop training", "cancel training"):
            return await self._cancel_training(state)
        if state["phase"] in ("evaluated", "registered") and (narrow := NARROW.search(text)):
            return await self._narrow(state, [float(w) for w in narrow.groups() if w])
        if state["phase"] in ("trained", "evaluated", "registered"):
            if words in ("diagnose", "something's wrong", "something is wrong", "problem"):
                return Outcome(replies=[await self._offer_symptoms(state)])
            if key := diagnose.match(text):
                return await self._diagnose(state, key, offered=False)
        return None

    # Phase 10: training -------------------------------------------------------------------------

    async def _offer_training(self, state: dict) -> Reply:
        """The final confirmation (pictures, model, trainer, measured time), or why it can't start yet.
        The gates are judged on their records here; the GPU worker judges them again on its machine."""
        project = Project.existing(self.settings, state["project"])
        run = await self.store.latest_run(project.name)
        if run and run["status"] == "running" and alive(run):
            return Text(text="The training is running now: its progress message above is kept up to date. Type "
                        "**cancel** to stop it.")  # fmt: skip
        try:
            ready = await plan(project, self.store, await ledger(project.name, self.store, {}))
        except UserError as err:
            return Text(text=str(err))
        await self.store.offer_choice(state["id"], "train", {})
        return Choice(ref="train", prompt=ready.text(), options=START_TRAINING)

    async def _start_training(self, state: dict, value: str) -> Outcome:
        if await self.store.take_choice(state["id"], "train") is None:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        if value != "start":
            return Outcome(replies=[Text(text="Fine — nothing is spent until you say so. Type **train** when you're "
                                              "ready.")])  # fmt: skip
        state["data"]["training_round"] = state["data"].get("training_round", 0) + 1
        state["phase"] = "training"
        await self._save(state)
        await self.store.offer_choice(state["id"], "cancel", {})
        job = self._job("train", state, state["data"]["training_round"])
        return Outcome(
            replies=[
                Choice(
                    ref="cancel",
                    prompt="Starting the training. I'll keep one message up to date and ping "
                    "you at each checkpoint and at the end. You can stop it at any time; the last "
                    "checkpoint is kept.",
                    options=CANCEL_TRAINING,
                )
            ],  # fmt: skip
            jobs=[job],
        )

    async def _cancel_training(self, state: dict) -> Outcome:
        run = await self.store.request_cancel(state["project"])
        if run is None:
            return Outcome(replies=[Text(text="No training is running for this project, so there's nothing to stop.")])
        return Outcome(replies=[Text(text="Stopping the training: it finishes its current step and keeps the last "
                                          "checkpoint.")])  # fmt: skip

    async def _trained(self, state: dict, event: TrainingFinished) -> Outcome:
        await self.store.take_choice(state["id"], "cancel")
        replies: list[Reply] = [Text(text=event.message, ping=True)]
        if event.curve:
            replies.append(Picture(path=event.curve, caption="The loss over the whole run."))
        replies.append(Attachment(path=event.progress, caption="The run's record (progress.md)."))
        if event.status != "finished":
            replies.append(Text(text="Type **train** to try again: a stopped run picks up from its last checkpoint."))
            state["phase"] = "gates"
            await self._save(state)
            return Outcome(replies=replies)
        state["phase"] = "trained"
        if event.grid_follows:  # the rented GPU drew it before it was given back; it follows as its own event
            await self._save(state)
            return Outcome(replies=replies)
        replies.append(Text(text=EVALUATING))
        return Outcome(replies=replies, jobs=[await self._evaluate(state)])

    # Phases 11–13: evaluation, diagnosis, registration ----------------------------------------------

    async def _evaluate_again(self, state: dict, compare: bool) -> Outcome:
        return Outcome(replies=[Text(text=EVALUATING)], jobs=[await self._evaluate(state, compare)])

    async def _evaluate(self, state: dict, compare: bool = False, weights: list[float] | None = None) -> Job:
        """The grid job, under a new round (saved with the session), so each request is its own job."""
        state["data"]["eval_round"] = state["data"].get("eval_round", 0) + 1
        await self._save(state)
        job = self._job("evaluate", state, state["data"]["eval_round"])
        job.args.update(compare=compare, weights=weights)
        return job

    async def _narrow(self, state: dict, weights: list[float]) -> Outcome:
        """'between 0.5 and 0.7' draws 0.6; 'try 0.65' draws 0.65 — the same seed, beside the base model."""
        weight = between(*weights) if len(weights) == 2 else weights[0]
        if not 0 < weight <= 1.0:
            return Outcome(replies=[Text(text="Weights go from 0.1 to 1.0; which should I draw?")])
        await self.store.take_choice(state["id"], "weight")
        return Outcome(replies=[Text(text=f"Drawing weight {weight:g} with the same seed and prompts…")],
                       jobs=[await self._evaluate(state, weights=[weight])])  # fmt: skip

    async def _evaluated(self, state: dict, event: EvaluationReady) -> Outcome:
        replies: list[Reply] = []
        if event.grid:
            replies.append(Picture(path=event.grid, caption="Your LoRA at five strengths, same seed, same prompts "
                                   "(one row per prompt; the first column is the base model alone)."))  # fmt: skip
        if event.checkpoints:
            replies.append(Picture(path=event.checkpoints, caption="The checkpoints side by side at the suggested "
                                   "weight: the middle one is often the best."))  # fmt: skip
        lines = [f"- {line}" for line in event.comparison] + [f"- ⚠️ {line}" for line in event.suggestions]
        if event.note:
            lines.append(event.note)
        replies.append(Text(text="\n".join(lines) or "No grid could be drawn."))
        state["phase"] = "evaluated"
        if event.options:
            options = [Option(value=f"{w:g}", label=f"{w:g}") for w in event.options]
            if event.can_compare and not event.checkpoints:
                options.append(Option(value="compare", label="Compare checkpoints"))
            await self.store.offer_choice(state["id"], "weight", {})
            replies.append(Choice(ref="weight", prompt=CHOOSE_WEIGHT, options=options))
        await self._save(state)
        return Outcome(replies=replies)

    async def _choose_weight(self, state: dict, value: str) -> Outcome:
        if await self.store.take_choice(state["id"], "weight") is None:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        if value == "compare":
            return Outcome(replies=[Text(text="Drawing the kept checkpoints side by side…")],
                           jobs=[await self._evaluate(state, compare=True)])  # fmt: skip
        job = self._job("register", state, value)
        job.args["weight"] = float(value)
        return Outcome(replies=[Text(text=f"Recording weight {value} in your studio…")], jobs=[job])

    async def _registered(self, state: dict, event: LoraRegistered) -> Outcome:
        intent = intents.load(Project.existing(self.settings, state["project"]))
        state["phase"] = "registered"
        await self._save(state)
        return Outcome(replies=[Text(text=f"Registered **{state['project']}** in your studio at weight "
                                          f"{event.weight:g}. The /art tool will use it whenever you mention this "
                                          f"{intent.type}, with the trigger word `{intent.trigger}` added for you. 🎨 "
                                          "If something looks wrong in use, type **diagnose**.")])  # fmt: skip

    async def _offer_symptoms(self, state: dict) -> Choice:
        await self.store.offer_choice(state["id"], "symptom", {})
        return Choice(ref="symptom", prompt="What does the LoRA do wrong? (from resources/training/failure-modes.md)",
                      options=[Option(value=key, label=label) for key, label in diagnose.symptoms()])  # fmt: skip

    async def _diagnose(self, state: dict, key: str, offered: bool = True) -> Outcome:
        if offered and await self.store.take_choice(state["id"], "symptom") is None:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        project = Project.existing(self.settings, state["project"])
        found = diagnose.diagnose(key, await facts_of(self.settings, project))
        return Outcome(
            replies=[
                Text(
                    text=f"**{found.symptom}**\nLikely cause: {found.cause}\nFix: {found.fix}\n"
                    f"Next step: {found.next_step}\n(from resources/training/failure-modes.md)"
                )
            ]
        )
