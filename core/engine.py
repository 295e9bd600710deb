"""The Training Specialist's workflow for one project, transport-neutral.

Input: what the artist did — ``Say`` (a message), ``Upload`` (files staged in the inbox), ``Decide``
(a button: an offered choice and the option picked). Output: an ``Outcome`` — replies to show (text,
a choice with options, an image, a file, a progress update) and jobs to run. The Discord bot and the
terminal chat only translate; every decision is made here, and every state change is in SQLite, so a
restart resumes where the conversation stood.

Phases follow the seed (``PHASES``): here the intent interview, the dataset, captions and the four
gates; what follows the gates (training, evaluation, diagnosis, registration) is ``core.after_gates``.
The artist's actions and the replies are ``core.replies`` (re-exported here for the adapters).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol

from core import intent as intents
from core import resources
from core.after_gates import AfterGates
from core.captions.formats import with_trigger, write_caption
from core.cloud_talk import CLOUD_WORDS, SUGGEST, CloudTalk
from core.dataset.snapshot import set_aside
from core.errors import UserError
from core.evaluation import diagnose
from core.events import (
    CaptionsProposed,
    CaptionsWritten,
    CloudOffers,
    DatasetChecked,
    EvaluationReady,
    Event,
    GateDecided,
    InstanceDestroyed,
    JobFailed,
    JobProgress,
    JobStarted,
    LoraRegistered,
    TrainingFinished,
    TrainingNote,
    TrainingProgress,
)
from core.families import FAMILIES, Family
from core.gates import all_passed, at_a_glance, ledger
from core.grimoire import Project
from core.intent import DATASET_TARGETS, LoraType, with_article
from core.jobs import SAMPLES, Job, inbox, job_id
from core.names import check_project_name, check_trigger_word, suggest_trigger_word
from core.replies import (  # noqa: F401 — the adapters import the replies from here
    Attachment,
    Choice,
    Decide,
    Option,
    Outcome,
    Picture,
    Progress,
    Reply,
    Say,
    Text,
    Upload,
)
from core.settings import Settings
from core.store import Store
from core.studio import studio_models

PHASES = (
    "intent", "audit", "duplicates", "captions", "curation", "dataset report", "config", "environment",
    "dry run", "training", "evaluation", "diagnosis", "registration",
)  # fmt: skip
CHOICE_REF = re.compile(r"[a-z]+(:[0-9a-f]{1,16})?")  # what a button may carry: short, and safe in a custom id


# The conversation --------------------------------------------------------------------------------

TYPE_TEXT = {
    LoraType.character: "**A character** — one specific person or creature: face, body, outfit.",
    LoraType.style: "**A style** — how you paint: brushwork, colour palette, lighting, composition.",
    LoraType.object: "**An object or concept** — a specific thing, like a logo or a prop.",
}
PRESETS_NEXT = (
    "Now the training settings. I suggest **Standard** (15 passes over your pictures) — a good balance. "
    "**Quick** (5) is a fast test of the dataset; **Thorough** (25) is best but slowest, because more passes "
    "teach more but cost more time (resources/training/presets.md)."
)
USE_SETTINGS = [Option(value="use", label="Use these settings"), Option(value="other", label="Choose another preset")]
NOT_READY = (
    "Training can't start until all four gates pass — nothing overrides this, because each gate catches a problem "
    "before it costs hours of GPU time (resources/training/training-concepts.md)."
)
CAPTION_EDIT = re.compile(r"caption\s+(?P<file>[^\s:]+)\s*:\s*(?P<caption>.+)", re.IGNORECASE | re.DOTALL)
CAPTIONS_NEXT = (
    "Next come the captions: each one says what is in the picture and how it is made, with your trigger word "
    "first, so the model can tell your subject from your technique (resources/dataset/captioning-guide.md). "
    "When all your pictures are in, shall I start?"
)
ANALYZER_ONLY = (
    "I'm captioning without Claude, so I can describe how each picture is made (palette, light, edges, texture) "
    "but not what is in it. Press Adjust to add what's in the picture; I'll follow your wording for the rest."
)
DUPLICATES_HURT = (
    "Training on duplicates makes the model memorise those exact pictures instead of learning what they "
    'share, so let\'s keep one of each (from resources/dataset/curation-guide.md, "Duplicates: why they go").'
)
QUALITY_WHY = 'Why these matter, and what to do about each: resources/dataset/curation-guide.md, "Quality problems".'
GATES_WHY = (
    "No training starts until all four gates pass (dataset, settings, environment, dry run): each one catches "
    "a problem before it costs hours of GPU time (from resources/training/training-concepts.md, "
    '"What the four gates protect against").'
)


def _settings_summary(config_md: str | None) -> str:
    """The settings for the artist to agree to: config.md's facts and each choice with its reason."""
    lines = Path(config_md).read_text(encoding="utf-8").splitlines() if config_md else []
    bullets = [line for line in lines if line.startswith("- **") and "Config file" not in line]
    return "\n".join(["Here are the settings, each with its reason:", *bullets, "Shall I use them?"])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:20] or "artist"


class Assistant(Protocol):
    """Something that can hold the conversation for the engine (Claude, in ``core.assistant``): it may
    answer free text using the engine's ``tool_*`` methods, or return None to let the scripted
    conversation answer."""

    async def converse(self, engine: Engine, state: dict, text: str) -> Outcome | None: ...


class Engine(AfterGates, CloudTalk):
    def __init__(self, settings: Settings, store: Store, assistant: Assistant | None = None):
        self.settings, self.store, self.assistant = settings, store, assistant

    # Entry points ------------------------------------------------------------------------------

    async def start(self, session: str, owner: str, owner_name: str) -> Outcome:
        """``/train`` (or ``loratrain chat``): begin a project, or say where an existing one stands."""
        state = await self.store.session(session)
        if state is None:
            await self.store.save_session(session, owner, None, "intent", {"step": "type", "owner_name": owner_name})
            return Outcome(replies=[self._ask_type(session, owner_name)])
        return Outcome(replies=[Text(text="Welcome back! " + await self._where_we_are(state))])

    async def handle(self, session: str, actor: str, action: Say | Upload | Decide) -> Outcome:
        state = await self.store.session(session)
        if state is None:
            return Outcome(
                replies=[Text(text="There is no training session here. Type /train to start one.", private=True)]
            )
        if actor != state["owner"]:
            return Outcome(
                replies=[Text(text="This isn't your session — type /train to start your own.", private=True)]
            )
        try:
            if isinstance(action, Decide):
                return await self._decide(state, action)
            if isinstance(action, Upload):
                return await self._upload(state, action)
            if self.assistant is not None:
                outcome = await self.assistant.converse(self, state, action.text.strip())
                if outcome is not None:
                    return outcome
            return await self.scripted(state, action.text.strip())
        except UserError as err:
            return Outcome(replies=[Text(text=str(err))])

    async def on_event(self, event: Event) -> Outcome:
        """A worker's event, turned into what the artist should see."""
        state = await self.store.session(event.session)
        if state is None:
            return Outcome()
        if isinstance(event, JobStarted):
            return Outcome(replies=[Progress(key=event.job, text=event.text, done=0, total=event.total)])
        if isinstance(event, JobProgress):
            return Outcome(replies=[Progress(key=event.job, text=event.text, done=event.done, total=event.total)])
        if isinstance(event, JobFailed):
            return Outcome(replies=[Progress(key=event.job, text="Stopped", done=0, total=3), Text(text=event.message)])
        if isinstance(event, CaptionsProposed):
            return await self._proposed(state, event)
        if isinstance(event, CaptionsWritten):
            return await self._written(state, event)
        if isinstance(event, GateDecided):
            return await self._gate_decided(state, event)
        if isinstance(event, TrainingProgress):
            return Outcome(replies=[Progress(key=event.job, text=event.headline, done=event.done, total=event.total,
                                             details=event.details)])  # fmt: skip
        if isinstance(event, TrainingNote):
            replies: list[Reply] = [Text(text=event.text, ping=event.ping)]
            if event.picture:
                replies.append(Picture(path=event.picture, caption="The loss so far: lower is learning."))
            return Outcome(replies=replies)
        if isinstance(event, TrainingFinished):
            return await self._trained(state, event)
        if isinstance(event, EvaluationReady):
            return await self._evaluated(state, event)
        if isinstance(event, LoraRegistered):
            return await self._registered(state, event)
        if isinstance(event, CloudOffers):
            return await self._cloud_offered(state, event)
        if isinstance(event, InstanceDestroyed):
            return await self._instance_destroyed(state, event)
        return await self._checked(state, event)

    # Phase 1: the intent interview -------------------------------------------------------------

    def _ask_type(self, session: str, name: str) -> Choice:
        return Choice(
            ref="type",
            prompt=f"Hi {name}! I'll help you teach an image model something new. "
            f"{resources.quote('training/training-concepts.md')}\n\nFirst: what do you want it to learn?\n"
            + "\n".join(f"- {t}" for t in TYPE_TEXT.values()),
            options=[Option(value=t.value, label=t.value.capitalize()) for t in TYPE_TEXT],
        )

    async def _decide(self, state: dict, action: Decide) -> Outcome:
        if not CHOICE_REF.fullmatch(action.ref):
            return Outcome(replies=[Text(text="That button isn't one of mine.", private=True)])
        if action.ref.startswith("dup:"):
            return await self._decide_duplicate(state, action)
        if action.ref.startswith("cap:"):
            return await self._decide_caption(state, action)
        if action.ref == "captions":
            return await self._start_captions(state)
        if action.ref == "preset":
            return await self._configure(state, action.value)
        if action.ref == "settings":
            return await self._confirm_settings(state, action.value)
        if action.ref == "train":
            return await self._start_training(state, action.value)
        if action.ref == "cancel":
            return await self._cancel_training(state)
        if action.ref == "weight":
            return await self._choose_weight(state, action.value)
        if action.ref == "symptom":
            return await self._diagnose(state, action.value)
        if action.ref == "rent":
            return await self._rent(state, action.value)
        step = state["data"].get("step") if state["phase"] == "intent" else None
        if action.ref != step:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        if step == "description" and action.value == "skip":
            return await self._answer(state, "")
        return await self._answer(state, action.value)

    async def scripted(self, state: dict, text: str) -> Outcome:
        """The scripted answer to free text; an assistant that can't answer uses it, with its note in front."""
        if state["phase"] == "intent":
            if state["data"]["step"] in ("description", "trigger", "model", "type"):
                return await self._answer(state, text)
        if text.lower() in ("status", "where are we", "?"):
            return Outcome(replies=[Text(text=await self._where_we_are(state))])
        if (edit := CAPTION_EDIT.fullmatch(text)) and state["project"]:
            return await self._edit_caption(state, edit["file"], edit["caption"])
        if state["project"] and (answer := await self.after_gates_text(state, text)):
            return answer
        if state["project"] and text.lower() in CLOUD_WORDS:
            return await self._cloud_offers(state)
        if text.lower() in ("check", "report", "recheck") and state["project"]:
            left = sorted(p for p in inbox(self.settings, state["id"]).rglob("*") if p.is_file())
            return self._check(state, staged=left)
        if state["phase"] == "collect":
            return Outcome(
                replies=[
                    Text(
                        text="Send me your pictures right here (drag and drop; several at a "
                        "time is fine). Type **check** to check everything again, or "
                        "**status** to see where we are."
                    )
                ]
            )
        return Outcome(replies=[Text(text=await self._where_we_are(state))])

    async def _answer(self, state: dict, value: str) -> Outcome:
        data, step = state["data"], state["data"]["step"]
        session = state["id"]
        if step == "type":
            kind = next((t for t in LoraType if value.lower().startswith(t.value[:4])), None)
            if kind is None:
                return Outcome(replies=[self._ask_type(session, data["owner_name"])])
            data.update(type=kind.value, step="model")
            await self._save(state)
            target = DATASET_TARGETS[kind]
            models: dict[Family, str] = {}  # one button per family (button ids must differ)
            for name, family in studio_models(self.settings.grimoire):
                models.setdefault(family, name)
            return Outcome(replies=[
                Text(text=f"{with_article(kind).capitalize()} LoRA, then. For {with_article(kind)}, aim for "
                          f"{target}: {target.why}. " + resources.quote("dataset/dataset-sizes.md")),
                Text(text="One thing to know now, because it's the most common reason LoRAs fail: "
                          + resources.quote("dataset/content-style.md")),
                Choice(ref="model", prompt="Which base model do you use?",
                       options=[Option(value=family.value, label=name) for family, name in models.items()]),
            ])  # fmt: skip
        if step == "model":
            family = next((f for f in Family if value.lower() in (f.value, FAMILIES[f].display.lower())), None)
            if family is None:
                names = ", ".join(f"{FAMILIES[f].display} ({f.value})" for f in Family)
                return Outcome(replies=[Text(text=f"I know these base models: {names}. Which one?")])
            data.update(family=family.value, step="description")
            await self._save(state)
            return Outcome(replies=[
                Choice(ref="description", prompt="In a sentence, what are you training? (Type it, or skip.)",
                       options=[Option(value="skip", label="Skip")]),
            ])  # fmt: skip
        if step == "description":
            data.update(description=value, step="trigger")
            await self._save(state)
            suggestion = self._suggest_trigger(data)
            return Outcome(replies=[
                Choice(ref="trigger", prompt=f"Last question: the trigger word, the word that switches your LoRA "
                       f"on in a prompt. I suggest `{suggestion}` — press the button, or type your own. It should be a "
                       f"made-up word, because a real one already means something to the model and would pull "
                       f"that meaning in (from resources/training/training-concepts.md, \"The trigger word\").",
                       options=[Option(value=suggestion, label=f"Use {suggestion}")]),
            ])  # fmt: skip
        trigger = check_trigger_word(value.strip().lower())
        return await self._create_project(state, trigger)

    def _suggest_trigger(self, data: dict) -> str:
        suffix = {"style": "style", "character": "char", "object": "obj"}[data["type"]]
        return suggest_trigger_word(f"{_slug(data['owner_name']).replace('-', '')}{suffix}")

    async def _create_project(self, state: dict, trigger: str) -> Outcome:
        data = state["data"]
        name = self._free_project_name(f"{_slug(data['owner_name'])}-{data['type']}")
        project = Project.at(self.settings, name)
        intent = intents.create(
            project, LoraType(data["type"]), Family(data["family"]), trigger, data.get("description", "")
        )
        waiting = data.pop("waiting_uploads", [])
        data.update(step="done")
        state.update(project=name, phase="collect")
        await self._save(state)
        replies: list[Reply] = [
            Text(text=f"Your project **{name}** is set up: {with_article(intent.type)} LoRA for "
                      f"{FAMILIES[intent.family].display}, trigger word `{trigger}`. I've written it down in "
                      f"`{project.path('intent.md').relative_to(self.settings.grimoire.resolve())}`."),
            Text(text="Now send me your pictures right here (drag and drop; several at a time is fine). I'll "
                      "check each batch as it arrives."),
        ]  # fmt: skip
        outcome = Outcome(replies=replies)
        if waiting:
            outcome.jobs += self._check(state, [Path(p) for p in waiting]).jobs
        return outcome

    def _free_project_name(self, base: str) -> str:
        base = check_project_name(base[:40])
        n = 1
        while (self.settings.training_root / (name := f"{base}-{n}")).exists():
            n += 1
        return name

    # Phases 2, 3, 5, 6: the dataset -------------------------------------------------------------

    async def _upload(self, state: dict, action: Upload) -> Outcome:
        replies: list[Reply] = []
        if action.refused:
            replies.append(Text(text="I couldn't take these:\n" + "\n".join(f"- ❌ {r}" for r in action.refused)))
        if not action.staged:
            return Outcome(replies=replies)
        if not state["project"]:  # pictures before the questions are done: keep them for later
            state["data"].setdefault("waiting_uploads", []).extend(str(p) for p in action.staged)
            await self._save(state)
            replies.append(
                Text(
                    text=f"Got {len(action.staged)} file(s) — I'll check them as soon as we've finished the questions."
                )
            )
            return Outcome(replies=replies)
        outcome = self._check(state, action.staged)
        replies.append(Text(text=f"Got {len(action.staged)} file(s) — checking them now."))
        return Outcome(replies=replies, jobs=outcome.jobs)

    def _check(self, state: dict, staged: list[Path]) -> Outcome:
        revision = state["data"].get("revision", 0)
        staged_names = sorted(str(p) for p in staged)
        job = Job(
            name="dataset_check",
            id=job_id("dataset_check", state["project"], staged_names, revision),
            session=state["id"],
            project=state["project"],
            args={"staged": staged_names},
        )
        return Outcome(jobs=[job])

    async def _checked(self, state: dict, event: DatasetChecked) -> Outcome:
        replies: list[Reply] = [Progress(key=event.job, text="Checked", done=3, total=3)]
        if event.imported:
            replies.append(Text(text="\n".join(event.imported)))
        replies.append(Text(text="\n".join([*event.audit, QUALITY_WHY])))
        if event.pairs:
            if not state["data"].get("explained_duplicates"):
                replies.append(Text(text=DUPLICATES_HURT))
                state["data"]["explained_duplicates"] = True
            for pair in event.pairs:
                ref = f"dup:{pair.sha_a[:8]}{pair.sha_b[:8]}"
                await self.store.offer_choice(state["id"], ref, pair.model_dump())
                what = "identical copies" if pair.kind == "exact" else "the same picture, altered"
                replies.append(Picture(path=pair.picture, caption=f"Left: `{pair.a}` · Right: `{pair.b}` — {what}."))
                replies.append(Choice(ref=ref, prompt="Which should I keep?", options=[
                    Option(value="a", label="Keep left"), Option(value="b", label="Keep right"),
                    Option(value="both", label="Keep both")]))  # fmt: skip
            state["phase"] = "duplicates"
        else:
            replies += self._gate_summary(event)
            state["phase"] = "collect"
            uncaptioned = event.usable - event.captioned
            if event.gate_passed:
                replies.append(await self._offer_presets(state))
            elif uncaptioned > 0 and not await self.store.open_choices(state["id"], "cap"):
                ref = "captions"
                await self.store.offer_choice(state["id"], ref, {})
                replies.append(
                    Choice(ref=ref, prompt=CAPTIONS_NEXT, options=[Option(value="start", label="Start captions")])
                )
        await self._save(state)
        return Outcome(replies=replies)

    def _gate_summary(self, event: DatasetChecked) -> list[Reply]:
        if event.gate_passed:
            head = f"**Gate 1 (dataset): GO** — {event.usable} pictures, captioned and checked."
        else:
            head = "**Gate 1 (dataset): NO-GO** — " + "; ".join(event.gate_reasons) + "."
            head += "\n" + "\n".join(f"{i}. {fix}" for i, fix in enumerate(event.gate_fixes, 1))
            head += "\n" + GATES_WHY
        return [Text(text=head), Attachment(path=event.report, caption="The full dataset report.")]

    async def _decide_duplicate(self, state: dict, action: Decide) -> Outcome:
        pair = await self.store.take_choice(state["id"], action.ref)
        if pair is None:
            return Outcome(replies=[Text(text="You've already decided about that pair.", private=True)])
        if action.value not in ("a", "b", "both"):
            await self.store.offer_choice(state["id"], action.ref, pair)
            return Outcome(replies=[Text(text="Please choose left, right or both.", private=True)])
        project = Project.existing(self.settings, state["project"])
        said = await set_aside(
            project, self.store, (pair["a"], pair["sha_a"]), (pair["b"], pair["sha_b"]), action.value
        )  # type: ignore[arg-type]
        said = said.replace(pair["a"], f"`{pair['a']}`").replace(pair["b"], f"`{pair['b']}`")
        outcome = Outcome(replies=[Text(text=said)])
        if not await self.store.open_choices(state["id"], "dup:"):
            state["data"]["revision"] = state["data"].get("revision", 0) + 1
            state["phase"] = "collect"
            await self._save(state)
            outcome.replies.append(Text(text="All duplicates decided — updating the dataset report."))
            outcome.jobs = self._check(state, []).jobs
        return outcome

    # Phase 4: captions ---------------------------------------------------------------------------

    async def _start_captions(self, state: dict) -> Outcome:
        if await self.store.take_choice(state["id"], "captions") is None or not state["project"]:
            return Outcome(replies=[Text(text="Captioning has already started.", private=True)])
        state["data"]["caption_round"] = state["data"].get("caption_round", 0) + 1
        state["phase"] = "captions"
        await self._save(state)
        job = self._job("caption_samples", state, state["data"]["caption_round"])
        why = (
            f"Writing up to {SAMPLES} sample captions for you to check first: the pictures that differ most from each "
            "other, so we agree on the wording for every kind of picture (resources/dataset/captioning-guide.md)."
        )
        return Outcome(replies=[Text(text=why)], jobs=[job])

    async def _proposed(self, state: dict, event: CaptionsProposed) -> Outcome:
        if not event.samples:  # every picture got a caption meanwhile (the artist's own, or a re-run)
            state["phase"] = "collect"
            await self._save(state)
            return Outcome(replies=[Text(text="Every picture already has a caption. Type **check** to update "
                                              "the dataset report.")])  # fmt: skip
        replies: list[Reply] = [Progress(key=event.job, text="Samples written", done=len(event.samples),
                                         total=len(event.samples))]  # fmt: skip
        if any(s.source == "analyzer" for s in event.samples):
            replies.append(Text(text=ANALYZER_ONLY))
        for number, sample in enumerate(event.samples, 1):
            ref = f"cap:{hashlib.sha256(f'{event.id}:{sample.file}'.encode()).hexdigest()[:16]}"
            await self.store.offer_choice(state["id"], ref, sample.model_dump())
            note = f"\n⚠️ {sample.problem}" if sample.problem else ""
            replies.append(
                Picture(path=sample.picture, caption=f"Sample {number} of {len(event.samples)}: `{sample.file}`")
            )
            content = ", ".join(sample.content) or "(not described yet)"
            style = ", ".join(sample.style) or "(not described yet)"
            prompt = (
                f"**Caption**: `{sample.caption}`\n**What's in it**: {content}\n**How it's made**: {style}{note}\n"
                "Does this capture both what's in the image AND how it's painted?"
            )
            options = [Option(value=v, label=v.capitalize()) for v in ("approve", "adjust", "skip")]
            replies.append(Choice(ref=ref, prompt=prompt, options=options))
        state["phase"] = "captions"
        await self._save(state)
        return Outcome(replies=replies)

    async def caption_offered(self, session: str, ref: str, actor: str) -> str | None:
        """The caption a sample's Adjust starts from (the Discord box is filled with it); None when
        ``actor`` may not adjust it (not the owner, or already decided), so the press goes the usual way."""
        state = await self.store.session(session)
        sample = await self.store.open_choice(session, ref) if state and state["owner"] == actor else None
        return sample["caption"] if sample else None

    async def _decide_caption(self, state: dict, action: Decide) -> Outcome:
        sample = await self.store.take_choice(state["id"], action.ref)
        if sample is None:
            return Outcome(replies=[Text(text="You've already decided about that caption.", private=True)])
        if action.value == "adjust" and not (action.text or "").strip():
            await self.store.offer_choice(state["id"], action.ref, sample)
            return Outcome(replies=[Text(text="Type the caption as you'd like it.", private=True)])
        if action.value not in ("approve", "adjust", "skip"):
            await self.store.offer_choice(state["id"], action.ref, sample)
            return Outcome(replies=[Text(text="Please choose Approve, Adjust or Skip.", private=True)])
        project = Project.existing(self.settings, state["project"])
        trigger = intents.load(project).trigger
        file = sample["file"]
        if action.value == "skip":
            await self.store.record_caption(project.name, file, sample["caption"], sample["source"], "skipped")
            replies = [Text(text=f"Skipped `{file}` as a sample; it will be captioned with the rest.")]
        else:
            caption, prefixed = with_trigger(action.text or sample["caption"], trigger)
            write_caption(project, file, caption, trigger)
            source = "artist" if action.value == "adjust" else sample["source"]
            status = "adjusted" if action.value == "adjust" else "approved"
            await self.store.record_caption(project.name, file, caption, source, status)
            said = "Approved" if status == "approved" else "Noted — I'll use your wording for the rest"
            replies = [
                Text(
                    text=f"{said}: `{caption}`"
                    + (
                        f" (I put the trigger word `{trigger}` first: every caption starts with it.)"
                        if prefixed
                        else ""
                    )
                )
            ]
        if await self.store.open_choices(state["id"], "cap:"):
            return Outcome(replies=replies)
        job = self._job("caption_batch", state, state["data"].get("caption_round", 0))
        replies.append(Text(text="Samples done — captioning the rest now, in the wording we agreed. I'll tell you "
                                 "when it's done."))  # fmt: skip
        return Outcome(replies=replies, jobs=[job])

    async def _edit_caption(self, state: dict, file: str, caption: str) -> Outcome:
        """The artist rewrites any caption, any time ('caption FILE: text'); Gate 1 sees the change."""
        project = Project.existing(self.settings, state["project"])
        trigger = intents.load(project).trigger
        caption, _ = with_trigger(caption, trigger)
        write_caption(project, file, caption, trigger)
        await self.store.record_caption(project.name, file, caption, "artist", "adjusted")
        return Outcome(replies=[Text(text=f"Saved the caption of `{file}`: `{caption}`. Type **check** to update "
                                          "the dataset report.")])  # fmt: skip

    async def _written(self, state: dict, event: CaptionsWritten) -> Outcome:
        replies: list[Reply] = [Progress(key=event.job, text="Captioned", done=event.written, total=event.written),
                                Text(text=f"Captioned {event.written} more picture(s).")]  # fmt: skip
        if event.problems:
            replies.append(Text(text="For these I used my own picture analysis, as Claude couldn't help:\n"
                                     + "\n".join(f"- {p}" for p in event.problems)))  # fmt: skip
        replies.append(Text(text="Every caption is in a .txt file beside its picture; you can change any of them "
                                 "by typing `caption FILE: new caption`. Checking the dataset again now."))  # fmt: skip
        state["data"]["revision"] = state["data"].get("revision", 0) + 1
        state["phase"] = "collect"
        await self._save(state)
        return Outcome(replies=replies, jobs=self._check(state, []).jobs)

    def _job(self, name: str, state: dict, *inputs: object) -> Job:
        return Job(name=name, id=job_id(name, state["project"], *inputs), session=state["id"],
                   project=state["project"], args={"offline": bool(state["data"].get("offline"))})  # fmt: skip

    # Phases 7–9: settings (Gate 2), the machine (Gate 3), the dry run (Gate 4) ------------------

    async def _offer_presets(self, state: dict) -> Choice:
        await self.store.offer_choice(state["id"], "preset", {})
        return Choice(ref="preset", prompt=PRESETS_NEXT, options=[
            Option(value="quick", label="Quick"), Option(value="standard", label="Standard"),
            Option(value="thorough", label="Thorough")])  # fmt: skip

    async def _configure(self, state: dict, preset: str) -> Outcome:
        if await self.store.take_choice(state["id"], "preset") is None or preset not in (
            "quick",
            "standard",
            "thorough",
        ):
            return Outcome(replies=[Text(text="The settings are already being worked out.", private=True)])
        state["data"]["config_round"] = state["data"].get("config_round", 0) + 1
        state["phase"] = "config"
        await self._save(state)
        job = self._job("configure", state, preset, state["data"]["config_round"])
        job.args["preset"] = preset
        return Outcome(replies=[Text(text=f"{preset.capitalize()} it is. Working out the settings and checking "
                                          "they fit the graphics card (Gate 2)…")], jobs=[job])  # fmt: skip

    async def _gate_decided(self, state: dict, event: GateDecided) -> Outcome:
        name = {2: "settings", 3: "environment", 4: "dry run"}[event.gate]
        text = f"{'✅' if event.passed else '❌'} **Gate {event.gate} ({name})**: {event.summary}"
        if event.fixes:
            text += "\n" + "\n".join(f"- {fix}" for fix in event.fixes)
        replies: list[Reply] = [Text(text=text)]
        if event.record:
            replies.append(Attachment(path=event.record, caption=f"The full record of Gate {event.gate}."))
        rounds = (state["data"].get("config_round", 0),)
        if event.gate == 2 and event.passed:
            await self.store.offer_choice(state["id"], "settings", {})
            replies.append(Choice(ref="settings", prompt=_settings_summary(event.record), options=USE_SETTINGS))
            return Outcome(replies=replies)
        if event.gate == 3 and event.passed:
            return Outcome(replies=replies, jobs=[self._job("dry_run", state, *rounds)])
        states = await ledger(state["project"], self.store, {})
        replies.append(Text(text=at_a_glance(states) + ("" if all_passed(states) else "\n" + NOT_READY)))
        if event.gate == 2:  # settings that don't fit: let the artist pick again
            replies.append(await self._offer_presets(state))
        if event.gate == 3 and self.cloud_ready():  # this machine can't train it: a rented one can
            replies.append(Text(text=SUGGEST))
        state["phase"] = "gates"
        await self._save(state)
        if all_passed(states):
            replies.append(await self._offer_training(state))
        return Outcome(replies=replies)

    async def _confirm_settings(self, state: dict, value: str) -> Outcome:
        """The artist has read the settings: on to the machine check (and the dry run after it), or back
        to the presets."""
        if await self.store.take_choice(state["id"], "settings") is None:
            return Outcome(replies=[Text(text="That question has already been answered.", private=True)])
        if value != "use":
            return Outcome(replies=[await self._offer_presets(state)])
        job = self._job("check_environment", state, state["data"].get("config_round", 0))
        return Outcome(replies=[Text(text="Settings agreed. Checking the training machine (Gate 3), then a few real "
                                          "training steps as a dry run (Gate 4)…")], jobs=[job])  # fmt: skip

    # What an assistant may do: the same validated steps the buttons take, and nothing more -------
    # (No tool marks a gate passed or starts training: gates are decided by the jobs that check them, and
    # training starts only from the artist's own Start button.)

    async def tool_create_intent(self, session: str, kind: str, family: str, trigger: str, description: str) -> Outcome:
        """Phase 1's result: the project and its intent.md. Refused unless the interview is still open."""
        state = await self._state(session)
        if state["project"]:
            raise UserError(f"This session already has its project, {state['project']}.")
        if kind not in LoraType.__members__ or family not in Family.__members__:
            raise UserError(
                f"The type must be one of {', '.join(LoraType)} and the base model one of {', '.join(Family)}."
            )
        state["data"].update(type=kind, family=family, description=" ".join(description.split())[:500])
        return await self._create_project(state, check_trigger_word(trigger.strip().lower()))

    async def tool_check_dataset(self, session: str) -> Outcome:
        """Audit, duplicates, curation and the Gate 1 report, as a job (uploads waiting are taken in)."""
        state = await self._state(session)
        if not state["project"]:
            raise UserError("There is no project yet: the intent interview comes first.")
        return await self.scripted(state, "check")

    async def tool_choose_preset(self, session: str, preset: str) -> Outcome:
        """Gate 2 from a preset, then Gates 3 and 4 as jobs; refused until Gate 1 has passed on today's dataset."""
        state = await self._state(session)
        dataset_gate = await self.store.gate(state["project"], 1) if state["project"] else None
        if not (dataset_gate and dataset_gate["passed"]):
            raise UserError("The training settings come after the dataset passes Gate 1; it hasn't yet.")
        await self.store.offer_choice(session, "preset", {})
        return await self._configure(state, preset)

    async def tool_offer_training(self, session: str) -> Outcome:
        """Show the artist the training confirmation (with its Start button); it starts only when they press
        it. Refused, with the gate in the way, unless all four gates pass."""
        state = await self._state(session)
        if not state["project"]:
            raise UserError("There is no project yet: the intent interview comes first.")
        offer = await self._offer_training(state)
        if isinstance(offer, Text):
            raise UserError(offer.text)
        return Outcome(replies=[offer])

    async def tool_offer_cloud_gpus(self, session: str, gpu: str | None) -> Outcome:
        """Rented GPUs that fit the run, with their cost, as buttons (a job asks the providers). Refused before
        Gate 1 passes and a preset is chosen, or when no provider key is set."""
        state = await self._state(session)
        if not state["project"]:
            raise UserError("There is no project yet: the intent interview comes first.")
        return await self._cloud_offers(state, gpu)

    async def tool_cancel_training(self, session: str) -> Outcome:
        """Ask the running training to stop (its last checkpoint is kept)."""
        state = await self._state(session)
        if not state["project"]:
            raise UserError("There is no project yet, so no training to stop.")
        return await self._cancel_training(state)

    async def tool_evaluate(self, session: str, compare: bool) -> Outcome:
        """Draw the strength grid again (or the checkpoints side by side); the artist then picks the weight
        with a button. Refused until a training run has finished."""
        state = await self._state(session)
        if state["phase"] not in ("trained", "evaluated", "registered"):
            raise UserError("There is no finished LoRA to look at yet: training comes first.")
        return await self._evaluate_again(state, compare)

    async def tool_diagnose(self, session: str, symptom: str) -> Outcome:
        """What a symptom means for this LoRA and the next step (a key from diagnose.symptoms(), or the
        artist's own words)."""
        state = await self._state(session)
        if not state["project"]:
            raise UserError("There is no project yet, so nothing to diagnose.")
        key = symptom if symptom in dict(diagnose.symptoms()) else diagnose.match(symptom)
        if key is None:
            raise UserError("I couldn't tell which problem that is; the symptoms I know: "
                            + "; ".join(f"{k} ({label})" for k, label in diagnose.symptoms()))  # fmt: skip
        return await self._diagnose(state, key, offered=False)

    async def tool_status(self, session: str) -> dict:
        """Facts about the session for the assistant's context: phase, project, intent, Gate 1."""
        state = await self._state(session)
        facts: dict = {"phase": state["phase"], "project": state["project"], "answers": state["data"]}
        if state["project"]:
            project = Project.existing(self.settings, state["project"])
            facts["intent"] = intents.load(project).model_dump(mode="json")
            facts["gates"] = {n: await self.store.gate(state["project"], n) for n in (1, 2, 3, 4)}
            facts["duplicates_waiting"] = len(await self.store.open_choices(session, "dup:"))
            facts["training"] = await self.store.latest_run(state["project"])
        return facts

    async def _state(self, session: str) -> dict:
        state = await self.store.session(session)
        if state is None:
            raise UserError("There is no training session here. Type /train to start one.")
        return state

    # Bookkeeping --------------------------------------------------------------------------------

    async def _save(self, state: dict) -> None:
        await self.store.save_session(state["id"], state["owner"], state["project"], state["phase"], state["data"])

    async def _where_we_are(self, state: dict) -> str:
        if state["phase"] == "intent":
            return "We're in the first step: what you want to teach the model. Answer the question above to go on."
        pending = await self.store.open_choices(state["id"], "dup:")
        if pending:
            return (
                f"Welcome back! Project **{state['project']}**: {len(pending)} duplicate pair(s) are waiting "
                "for your choice (the buttons above)."
            )
        return (
            f"Welcome back! Project **{state['project']}**: send more pictures, or type **check** to check "
            "everything again. Next step after the dataset: captions."
        )
