"""The engine: a whole dataset-phase conversation, decisions included, without any transport."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.chat import chat
from core.engine import Attachment, Choice, Decide, Engine, Picture, Progress, Say, Text, Upload
from core.errors import UserError
from core.events import JobFailed
from core.runner import InProcessRunner
from core.samples import variant
from core.store import open_store
from core.uploads import stage_upload
from tests.conftest import jpeg_bytes


class Conversation:
    """One artist talking to the engine, with jobs run in-process; keeps everything shown."""

    def __init__(self, settings, store, session="t1", owner="u1"):
        self.settings, self.session, self.owner = settings, session, owner
        self.engine = Engine(settings, store)
        self.shown = []
        self.history = []  # everything shown, for tests that read the whole conversation
        self.runner = InProcessRunner(settings, self.engine, self._show)

    async def _show(self, reply):
        self.shown.append(reply)
        self.history.append(reply)

    async def start(self):
        await self.runner.deliver(await self.engine.start(self.session, self.owner, "Mira"))
        return self.take()

    async def act(self, action, actor=None):
        await self.runner.deliver(await self.engine.handle(self.session, actor or self.owner, action))
        return self.take()

    def take(self):
        shown, self.shown = self.shown, []
        return shown

    def upload(self, files: dict[str, bytes], upload_id="m1") -> Upload:
        staged, refused = [], []
        for name, data in files.items():
            result = stage_upload(self.settings, self.session, upload_id, name, data)
            (staged if isinstance(result, Path) else refused).append(result)
        return Upload(staged=staged, refused=refused)


def choices(replies):
    return [r for r in replies if isinstance(r, Choice)]


def text(replies):
    return "\n".join(r.text for r in replies if isinstance(r, Text))


async def interview(c: Conversation, kind="object", family="sd15"):
    first = await c.start()
    assert choices(first)[0].ref == "type"
    assert [o.label for o in choices(first)[0].options] == ["Character", "Style", "Object"]
    after_type = await c.act(Decide(ref="type", value=kind))
    assert "resources/dataset/dataset-sizes.md" in text(after_type)
    assert "most common reason" in text(after_type)  # the content-style problem, surfaced early
    assert choices(after_type)[0].ref == "model"
    after_model = await c.act(Decide(ref="model", value=family))
    assert choices(after_model)[0].ref == "description"
    after_description = await c.act(Say(text="My ceramic teapot, from every side"))
    trigger = choices(after_description)[0]
    assert trigger.ref == "trigger" and trigger.options[0].value == "miraobj"
    return await c.act(Decide(ref="trigger", value=trigger.options[0].value))


async def test_the_interview_writes_intent_md(settings):
    async with open_store(settings.database_path) as store:
        done = await interview(Conversation(settings, store))
    intent = (settings.training_root / "mira-object-1" / "intent.md").read_text()
    assert "- **Type**: object" in intent and "- **Trigger word**: miraobj" in intent
    assert "- **Description**: My ceramic teapot, from every side" in intent
    assert "send me your pictures" in text(done)


async def test_a_bad_trigger_word_is_explained_and_asked_again(settings):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await c.start()
        await c.act(Decide(ref="type", value="style"))
        await c.act(Decide(ref="model", value="sdxl"))
        await c.act(Decide(ref="description", value="skip"))
        refused = await c.act(Say(text="two words"))
        assert "can't be used" in text(refused)
        done = await c.act(Say(text="my_word"))
    assert "trigger word `my_word`" in text(done)


async def test_the_whole_dataset_phase_with_a_duplicate_decision(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        files = {f"teapot {i}.jpg": jpeg_bytes(painting(i, (576, 512))) for i in range(10)}
        files["teapot 3 flipped.jpg"] = jpeg_bytes(variant(painting(3, (576, 512)), "mirrored"))
        files["notes.jpg"] = b"just some text"
        checked = await c.act(c.upload(files))
        assert "notes.jpg: this isn't a picture" in text(checked)
        assert any(isinstance(r, Progress) for r in checked)
        assert "Got 11 files. Here's what I found:" in text(checked)
        assert "Training on duplicates makes the model memorise" in text(checked)
        picture = next(r for r in checked if isinstance(r, Picture))
        assert Path(picture.path).is_file() and "teapot-3-flipped.jpg" in picture.caption
        pair = choices(checked)[-1]
        assert [o.label for o in pair.options] == ["Keep left", "Keep right", "Keep both"]
        assert not any(isinstance(r, Attachment) for r in checked)  # the report waits for the decision

        decided = await c.act(Decide(ref=pair.ref, value="b"))
        assert "`teapot-3-flipped.jpg` is set aside" in text(decided)
        assert "Gate 1 (dataset): NO-GO" in text(decided) and "images are not captioned yet" in text(decided)
        report = next(r for r in decided if isinstance(r, Attachment))
        assert "- Duplicates found: 1 (removed: 1)" in Path(report.path).read_text()

        again = await c.act(Decide(ref=pair.ref, value="a"))
        assert again == [Text(text="You've already decided about that pair.", private=True)]
    project = settings.training_root / "mira-object-1"
    assert sorted(p.name for p in (project / "excluded").iterdir()) == ["teapot-3-flipped.jpg"]
    assert len(list((project / "dataset").glob("*.jpg"))) == 10
    assert not any((settings.grimoire / "inbox").rglob("*.jpg"))  # staged uploads were taken in


async def test_pictures_sent_before_the_questions_are_done_are_kept_for_later(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await c.start()
        early = await c.act(c.upload({"early.jpg": jpeg_bytes(painting(1))}))
        assert "as soon as we've finished the questions" in text(early)
        await c.act(Decide(ref="type", value="object"))
        await c.act(Decide(ref="model", value="sd15"))
        await c.act(Decide(ref="description", value="skip"))
        done = await c.act(Decide(ref="trigger", value="miraobj"))
    assert "Got 1 file. Here's what I found:" in text(done)
    assert (settings.training_root / "mira-object-1" / "dataset" / "early.jpg").is_file()


async def test_only_the_owner_can_act_and_stale_buttons_are_harmless(settings):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await c.start()
        stranger = await c.act(Decide(ref="type", value="style"), actor="someone-else")
        assert stranger == [Text(text="This isn't your session — type /train to start your own.", private=True)]
        await c.act(Decide(ref="type", value="style"))
        stale = await c.act(Decide(ref="type", value="object"))
        assert stale == [Text(text="That question has already been answered.", private=True)]
        forged = await c.act(Decide(ref="../../etc", value="x"))
        assert forged[0].private


async def test_the_conversation_survives_a_restart(settings):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await c.start()
        await c.act(Decide(ref="type", value="character"))
    async with open_store(settings.database_path) as store:  # a new process, the same database
        c = Conversation(settings, store)
        resumed = await c.start()
        assert "Welcome back!" in text(resumed)
        after = await c.act(Decide(ref="model", value="pony"))
    assert choices(after)[0].ref == "description"


async def test_a_failed_job_closes_its_progress_and_becomes_a_plain_message(settings):
    async with open_store(settings.database_path) as store:
        engine = Engine(settings, store)
        await engine.start("t1", "u1", "Mira")
        outcome = await engine.on_event(
            JobFailed(id="j:failed", session="t1", project="p", job="j",
                      message="Something went wrong while checking your pictures.")
        )  # fmt: skip
    assert outcome.replies == [
        Progress(key="j", text="Stopped", done=0, total=3),
        Text(text="Something went wrong while checking your pictures."),
    ]


async def test_terminal_chat_runs_the_same_conversation(settings, painting, tmp_path):
    folder = tmp_path / "my pics"
    folder.mkdir()
    for i in range(3):
        painting(i, (576, 512)).save(folder / f"pic {i}.jpg")
    lines = iter(["3", "7", "A teapot", "9", str(folder), "status", "quit"])
    out: list[str] = []
    await chat(settings, "terminal-mira", "mira", lines, out.append)
    said = "\n".join(out)
    assert "[1] Character" in said and "[9] Use miraobj" in said
    assert "Got 3 file(s) — checking them now." in said
    assert "Gate 1 (dataset): NO-GO" in said and "Project **mira-object-1**" in said


@pytest.mark.parametrize("name,data,why", [
    ("huge.jpg", b"\xff\xd8\xff" + bytes(200), "over the 0.0001 MB limit"),
    ("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(40), "HEIC"),
    ("notes.png", b"hello", "isn't a picture"),
])  # fmt: skip
def test_uploads_are_refused_at_the_door_in_plain_words(settings, name, data, why):
    settings = settings.model_copy(update={"max_upload_mb": 0.0001})
    result = stage_upload(settings, "t1", "m1", name, data)
    assert isinstance(result, str) and why in result and result.startswith(name)


def test_uploaded_names_cannot_escape_the_inbox(settings, painting):
    path = stage_upload(settings, "t1", "m1/../../x", "../../../evil.jpg", jpeg_bytes(painting(1)))
    assert isinstance(path, Path)
    assert path.resolve().is_relative_to((settings.grimoire / "inbox" / "t1").resolve())
    assert path.name == "evil.jpg"


async def test_check_takes_in_uploads_left_in_the_inbox(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        left = stage_upload(settings, c.session, "lost-1", "left behind.jpg", jpeg_bytes(painting(4)))
        assert isinstance(left, Path)  # staged, but its job never ran (say the queue was down)
        checked = await c.act(Say(text="check"))
    assert "Added 1 of 1 file(s)." in text(checked)
    assert (settings.training_root / "mira-object-1" / "dataset" / "left-behind.jpg").is_file()
    assert not left.exists()


RECOMMENDS = re.compile(
    r"\b(aim for|work best|should|I suggest|keep one|upscale|leave \w+ out|add at least|caption the|choose|"
    r"remove or replace|consider)\b",
    re.IGNORECASE,
)
REASON = re.compile(r"\b(because|so|why)\b|—|: ", re.IGNORECASE)


async def test_every_recommendation_in_the_scripted_conversation_says_why_and_where_from(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        files = {f"pot {i}.jpg": jpeg_bytes(painting(i, (576, 512))) for i in range(4)}
        files["pot 2 copy.jpg"] = jpeg_bytes(variant(painting(2, (576, 512)), "resized"))
        checked = await c.act(c.upload(files))
        pair = choices(checked)[-1]
        await c.act(Decide(ref=pair.ref, value="b"))
    shown = c.history
    said = [r.text for r in shown if isinstance(r, Text)] + [r.prompt for r in shown if isinstance(r, Choice)]
    recommendations = [s for s in said if RECOMMENDS.search(s) and not s.rstrip().endswith("?")]
    assert len(recommendations) >= 5  # sizes, content-style, trigger, the audit, duplicates, the gate's fixes
    for text_ in recommendations:
        assert REASON.search(text_), f"no reason given: {text_!r}"
        assert "resources/" in text_, f"no source cited: {text_!r}"


async def test_captions_samples_first_then_the_rest_then_gate_one_passes(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)  # an object LoRA for SD 1.5: 10 pictures are enough
        files = {f"pot {i}.jpg": jpeg_bytes(painting(i, (576, 512))) for i in range(10)}
        checked = await c.act(c.upload(files))
        start = choices(checked)[-1]
        assert start.ref == "captions" and "resources/dataset/captioning-guide.md" in start.prompt

        proposed = await c.act(Decide(ref="captions", value="start"))
        samples = [r for r in choices(proposed) if r.ref.startswith("cap:")]
        assert len(samples) == 5
        assert "without Claude" in text(proposed)  # no key in tests: the local analyzer describes the style
        assert all(s.prompt.startswith("**Caption**: `miraobj, ") for s in samples)
        assert all("Does this capture both what's in the image AND how it's painted?" in s.prompt for s in samples)
        assert len([r for r in proposed if isinstance(r, Picture)]) == 5

        approved = await c.act(Decide(ref=samples[0].ref, value="approve"))
        assert text(approved).startswith("Approved: `miraobj, ")
        adjusted = await c.act(Decide(ref=samples[1].ref, value="adjust", text="a blue teapot, gouache, soft light"))
        assert "I put the trigger word `miraobj` first" in text(adjusted)
        await c.act(Decide(ref=samples[2].ref, value="adjust", text="miraobj teapot on a shelf"))
        await c.act(Decide(ref=samples[3].ref, value="skip"))
        again = await c.act(Decide(ref=samples[3].ref, value="approve"))
        assert again[0].private  # decided once only
        finished = await c.act(Decide(ref=samples[4].ref, value="approve"))

    project = settings.training_root / "mira-object-1"
    captions = {p.stem: p.read_text(encoding="utf-8").strip() for p in (project / "dataset").glob("*.txt")}
    assert len(captions) == 10 and all(v.startswith("miraobj, ") for v in captions.values())
    assert "miraobj, a blue teapot, gouache, soft light" in captions.values()
    assert "miraobj, teapot on a shelf" in captions.values()
    assert "Samples done — captioning the rest now" in text(finished)
    assert "Captioned 6 more picture(s)." in text(finished)  # the skipped sample is captioned with the rest
    assert "**Gate 1 (dataset): GO**" in text(finished)


async def test_the_artist_can_rewrite_any_caption_later(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        await c.act(c.upload({"pot.jpg": jpeg_bytes(painting(1, (576, 512)))}))
        saved = await c.act(Say(text='caption pot.jpg: a teapot, "glazed", ünïcode'))
        assert "Saved the caption of `pot.jpg`" in text(saved)
        refused = await c.act(Say(text="caption ../../etc/passwd: nope"))
        assert "Saved" not in text(refused)
        history = await store.caption_history("mira-object-1", "pot.jpg")
    caption = (settings.training_root / "mira-object-1" / "dataset" / "pot.txt").read_text(encoding="utf-8")
    assert caption.rstrip("\n") == 'miraobj, a teapot, "glazed", ünïcode' and caption.count("\n") <= 1
    assert history[-1]["source"] == "artist" and history[-1]["status"] == "adjusted"


async def test_captions_are_offered_only_while_a_picture_lacks_one(settings, painting):
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        checked = await c.act(c.upload({f"pot {i}.jpg": jpeg_bytes(painting(i, (576, 512))) for i in range(3)}))
        assert choices(checked)[-1].ref == "captions"
        for i in range(3):
            await c.act(Say(text=f"caption pot-{i}.jpg: a teapot"))
        rechecked = await c.act(Say(text="check"))
    assert "fewer than the 10 an object LoRA needs" in text(rechecked)  # still NO-GO: too few pictures
    assert not [r for r in choices(rechecked) if r.ref == "captions"]  # but nothing left to caption


async def test_after_gate_one_the_settings_machine_and_dry_run_gates_follow(settings, painting, tmp_path):
    from core.training.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny", "sd15")
    settings.grimoire.mkdir(parents=True, exist_ok=True)
    (settings.grimoire / "studio.md").write_text(
        f"# Studio\n\n## Models\n- **Tiny SD 1.5** (sd15): {model}\n\n## GPU\n- **Local**: NVIDIA RTX 4090, 24 GB\n"
    )
    async with open_store(settings.database_path) as store:
        c = Conversation(settings, store)
        await interview(c)
        await c.act(c.upload({f"pot {i}.jpg": jpeg_bytes(painting(i, (576, 512))) for i in range(10)}))
        for i in range(10):
            await c.act(Say(text=f"caption pot-{i}.jpg: a teapot, view {i}"))
        checked = await c.act(Say(text="check"))
        preset = choices(checked)[-1]
        assert preset.ref == "preset" and "resources/training/presets.md" in preset.prompt
        assert [o.label for o in preset.options] == ["Quick", "Standard", "Thorough"]
        configured = await c.act(Decide(ref="preset", value="standard"))
        assert "✅ **Gate 2 (settings)**: GO" in text(configured)
        confirm = choices(configured)[-1]
        assert confirm.ref == "settings" and [o.label for o in confirm.options] == [
            "Use these settings",
            "Choose another preset",
        ]
        assert "- **Preset**: Standard" in confirm.prompt and "(resources/training/presets.md)" in confirm.prompt
        assert any(r.path.endswith("config.md") for r in configured if isinstance(r, Attachment))
        again = await c.act(Decide(ref="settings", value="other"))  # the artist wants to see the presets again
        assert choices(again)[-1].ref == "preset"
        await c.act(Decide(ref="preset", value="standard"))
        gates = await c.act(Decide(ref="settings", value="use"))
    said = text(gates)
    assert "✅ **Gate 3 (environment)**: GO for this small test model" in said  # no GPU here; the tiny model
    assert "✅ **Gate 4 (dry run)**: Dry run passed — model loaded, 3 steps completed, no errors." in said
    assert "✅ Dataset ✅ Config ✅ Environment ✅ Dry run" in said
    assert choices(gates)[-1].ref == "train" and choices(gates)[-1].prompt.startswith("Ready to train: 10 pictures")
    records = [r.path for r in gates if isinstance(r, Attachment)]
    assert any(p.endswith("environment.md") for p in records) and any(p.endswith("status.md") for p in records)


async def test_when_the_gates_pass_the_artist_confirms_training_and_hears_how_it_went(settings, ready):
    settings.eval_steps = 2  # the tiny model's grid: a couple of sampling steps show what is needed
    async with open_store(settings.database_path) as store:
        await store.save_session("t1", "u1", "pots", "gates", {})
        c = Conversation(settings, store)
        offer = choices(await c.act(Say(text="train")))[0]
        assert offer.ref == "train" and offer.prompt.startswith("Ready to train: 10 pictures, Stable Diffusion 1.5")
        assert [o.label for o in offer.options] == ["Start training", "Not yet"]

        shown = await c.act(Decide(ref="train", value="start"))  # embedded mode: the job runs right here
        assert choices(shown)[0].ref == "cancel" and [o.label for o in choices(shown)[0].options] == ["Cancel training"]
        progress = [r for r in shown if isinstance(r, Progress) and r.text.startswith("Training")]
        assert progress[-1].text == "Training pots — epoch 6/6" and "loss " in progress[-1].details, text(shown)
        pings = [r.text for r in shown if isinstance(r, Text) and r.ping]
        assert any("Checkpoint saved at epoch 5" in p for p in pings) and "Training finished" in pings[-1]
        assert any(isinstance(r, Picture) for r in shown)
        assert any(isinstance(r, Attachment) and r.path.endswith("progress.md") for r in shown)
        # the strength grid follows by itself, with the evidence and the weights to choose from
        grid = [r for r in shown if isinstance(r, Picture) and "five strengths" in r.caption]
        assert grid and Path(grid[0].path).is_file(), text(shown)
        assert "Weight 0.3:" in text(shown) and "Weight 1.0:" in text(shown)
        weight = choices(shown)[-1]
        assert weight.ref == "weight" and weight.options[-1].label == "Compare checkpoints"
        compared = await c.act(Decide(ref="weight", value="compare"))
        assert any(isinstance(r, Picture) and "checkpoints side by side" in r.caption for r in compared)
        narrowed = await c.act(Say(text="between 0.5 and 0.7"))  # draw the weight in between, same seed
        assert "Drawing weight 0.6" in text(narrowed) and "Weight 0.6:" in text(narrowed)
        assert "0.6" in [o.value for o in choices(narrowed)[-1].options]
        pick = choices(narrowed)[-1].options[0].value
        registered = await c.act(Decide(ref="weight", value=pick))
        assert f"Registered **pots** in your studio at weight {pick}" in text(registered)
        assert "### LoRA: pots" in (settings.grimoire / "studio.md").read_text()
        assert (await store.session("t1"))["phase"] == "registered"
        diagnosis = await c.act(Say(text="it looks fried at high strength"))
        assert "Likely cause: Overtrained" in text(diagnosis) and "Next step:" in text(diagnosis)

        assert "already been answered" in text(await c.act(Decide(ref="train", value="start")))  # a second press
        assert "No training is running" in text(await c.act(Say(text="cancel")))


async def test_training_is_not_offered_while_a_gate_is_stale(settings, ready):
    (ready.dataset_dir / "pot4.txt").unlink()  # Gate 1's inputs changed after it passed
    async with open_store(settings.database_path) as store:
        await store.save_session("t1", "u1", "pots", "gates", {})
        c = Conversation(settings, store)
        await c.act(Say(text="check"))  # the dataset is checked again: a picture lacks its caption now
        said = await c.act(Say(text="train"))
    assert not choices(said) and "Training can't start: Gate 1 (Dataset)" in text(said)


async def test_the_assistant_can_diagnose_but_not_draw_before_training(settings):
    async with open_store(settings.database_path) as store:
        early = Conversation(settings, store, session="t0")
        await early.start()
        with pytest.raises(UserError, match="no project yet"):
            await early.engine.tool_diagnose(early.session, "burnt")
        c = Conversation(settings, store)
        await interview(c)
        said = await c.engine.tool_diagnose(c.session, "the pictures look fried")
        assert "Likely cause: Overtrained" in text(said.replies) and "Next step:" in text(said.replies)
        with pytest.raises(UserError, match="couldn't tell which problem"):
            await c.engine.tool_diagnose(c.session, "I like it")
        with pytest.raises(UserError, match="training comes first"):
            await c.engine.tool_evaluate(c.session, compare=False)
