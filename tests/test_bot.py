"""The Discord adapter, driven through its real handlers with fake Discord objects
(``tests/discord_fakes.py``), a real SQLite store, the real engine, a real Redis for the job queue
and the event stream, and the real jobs (the dataset check, the sample captions and the batch)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import time
from types import SimpleNamespace

import discord
import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr
from redis.asyncio import Redis

from bot.buttons import AdjustCaption
from bot.main import HEARTBEAT_TTL_S, RELAY_STALE_S, LoraBot, beat, check, health_key, run, serve
from bot.relay import Relay
from bot.render import Renderer, split
from bot.train import train
from core.captions.formats import read_caption
from core.engine import ANALYZER_ONLY, CAPTIONS_NEXT, Progress, Text
from core.errors import UserError
from core.events import JobStarted, RedisStream
from core.grimoire import Project
from core.jobs import Job, inbox, run_job
from core.samples import variant
from tests.conftest import jpeg_bytes
from tests.discord_fakes import (
    Attachment,
    Bot,
    Interaction,
    Message,
    TextChannel,
    Thread,
    User,
    World,
    file_names,
    http_error,
    press,
    submit,
)

PROJECT = "mira-style-1"
PAIR = re.compile(r"Left: `(?P<left>[^`]+)` · Right: `(?P<right>[^`]+)`")
OBJECT = "mira-object-1"  # the teapot project of the caption tests
SAMPLE = re.compile(r"Sample (?P<number>[0-9]) of 5: `(?P<file>[^`]+)`")
CAPTION = re.compile(r"\*\*Caption\*\*: `(?P<caption>[^`]*)`")
NOT_YOURS = "This isn't your session — type /train to start your own."


@pytest.fixture
def bot_settings(settings, redis_url):
    return settings.model_copy(update={"redis_url": redis_url})


@pytest.fixture
def world():
    return World()


@pytest.fixture
async def bot(bot_settings, world):
    bot = Bot(bot_settings, world)
    await bot.open()
    yield bot
    await bot.close()


@pytest.fixture
def mira(world):
    return User(world, "Mira")


class Worker:
    """Plays `loratrain worker` and the bot's relay: runs each queued job once, as the worker would,
    then relays everything the jobs published from the real event stream."""

    def __init__(self) -> None:
        self.ran: set[str] = set()

    async def run(self, bot: Bot) -> list[str]:
        """Run the jobs queued since the last call and relay their events; returns the jobs' names."""
        stream = RedisStream(bot.redis, bot.settings.events_stream)
        names = []
        for definition in await queued(bot):
            job = Job.model_validate(definition.args[0])
            if job.id not in self.ran:
                self.ran.add(job.id)
                names.append(job.name)
                await run_job(bot.settings, job, stream.publish)
        relay = Relay(bot, stream)
        while await relay.step(block_ms=50):
            pass
        return names


@pytest.fixture
def worker():
    return Worker()


async def slash_train(bot: Bot, user: User, channel=None) -> Interaction:
    interaction = Interaction(bot.world, bot, user, channel or TextChannel(bot.world))
    await train.callback(interaction)
    return interaction


def calls_of(world: World, since: int) -> list[str]:
    return [name for name, _ in world.log[since:]]


def threads(world: World) -> list[Thread]:
    return [c for c in world.channels.values() if isinstance(c, Thread)]


def asking(thread: Thread) -> Message:
    """The latest message with buttons."""
    return next(m for m in reversed(thread.messages) if m.components)


async def say(bot: Bot, thread: Thread, user: User, text: str = "", attachments=()) -> Message:
    message = Message(bot.world, thread, user, text, attachments=list(attachments))
    await bot.on_message(message)
    return message


async def interview(bot: Bot, mira: User) -> Thread:
    """/train, then the four questions answered by buttons and typing."""
    await slash_train(bot, mira)
    thread = threads(bot.world)[-1]
    await press(bot, asking(thread), "Style", mira)
    await press(bot, asking(thread), "Stable Diffusion 1.5", mira)
    await say(bot, thread, mira, "Warm, layered landscapes with visible brush strokes")
    await say(bot, thread, mira, "mirastyle")
    return thread


async def queued(bot: LoraBot) -> list:
    return await bot.redis.queued_jobs(queue_name=bot.settings.quick_queue)


async def checked(bot: Bot, mira: User, painting) -> Thread:
    """A thread whose upload (two paintings and a mirrored copy of one) was checked by the real job
    and relayed from the real event stream: the duplicate question is waiting."""
    thread = await interview(bot, mira)
    pictures = [
        Attachment("forest.jpg", jpeg_bytes(painting(1))),
        Attachment("harbour.jpg", jpeg_bytes(painting(2))),
        Attachment("forest-flipped.jpg", jpeg_bytes(variant(painting(1), "mirrored"), quality=90)),
    ]
    await say(bot, thread, mira, attachments=pictures)
    stream = RedisStream(bot.redis, bot.settings.events_stream)
    for definition in await queued(bot):  # what the worker does with each job
        await run_job(bot.settings, Job.model_validate(definition.args[0]), stream.publish)
    assert await Relay(bot, stream).step(block_ms=100) > 0
    return thread


# /train -------------------------------------------------------------------------------------------


async def test_train_opens_a_private_thread_and_asks_the_first_question(bot, world, mira):
    interaction = await slash_train(bot, mira)

    assert calls_of(world, 0) == [
        "response.defer",
        "channel.create_thread",
        "thread.send",
        "thread.add_user",
        "followup.send",
    ]
    assert world.calls("response.defer") == [{"ephemeral": True, "thinking": True}]
    (made,) = world.calls("channel.create_thread")
    assert made["type"] == discord.ChannelType.private_thread and made["auto_archive_duration"] == 10080
    (thread,) = threads(world)
    assert thread.members == [mira] and thread.name == "mira-train-1"
    question = thread.messages[0]
    assert question.content.startswith("Hi Mira! I'll help you teach an image model something new.")
    assert [(b.label, b.custom_id) for b in question.buttons()] == [
        ("Character", f"lt:{thread.id}:type:character"),
        ("Style", f"lt:{thread.id}:type:style"),
        ("Object", f"lt:{thread.id}:type:object"),
    ]
    (answer,) = world.calls("followup.send")
    assert answer == {
        "content": f"I've opened a private thread for your training project: <#{thread.id}>. Everything we decide "
        "is saved, so you can leave and come back any time.",
        "ephemeral": True,
    }
    assert interaction.response.is_done()


async def test_train_again_points_back_to_the_existing_thread(bot, world, mira):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    since = len(world.log)

    await slash_train(bot, mira, TextChannel(world, "general"))

    assert "channel.create_thread" not in calls_of(world, since) and threads(world) == [thread]
    assert thread.messages[-1].content.startswith("Welcome back! We're in the first step")
    answer = world.calls("followup.send")[-1]["content"]
    assert answer.startswith(f"Your training project is waiting for you in <#{thread.id}>")


async def test_train_outside_a_text_channel_explains_where_to_use_it(bot, world, mira):
    voice = SimpleNamespace(id=world.new_id(), type=discord.ChannelType.voice)

    await slash_train(bot, mira, voice)

    assert calls_of(world, 0) == ["response.defer", "followup.send"]
    answer = world.calls("followup.send")[0]["content"]
    assert answer.startswith("Please use /train in one of the server's text channels")
    assert await bot.store.sessions_of(str(mira.id)) == []


async def test_train_without_permission_to_make_threads_says_what_is_missing(bot, world, mira):
    class Locked(TextChannel):
        async def create_thread(self, **kwargs):
            raise http_error(discord.Forbidden, 403, "Missing Permissions")

    await slash_train(bot, mira, Locked(world))

    assert "Create Private Threads" in world.calls("followup.send")[0]["content"]


# The interview ------------------------------------------------------------------------------------


async def test_buttons_and_typed_answers_walk_the_interview_and_write_intent_md(bot, world, mira, bot_settings):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    question = asking(thread)

    since = len(world.log)
    pressed = await press(bot, question, "Style", mira)
    assert calls_of(world, since)[0] == "response.defer" and world.calls("response.defer")[-1] == {}
    buttons = question.buttons()
    assert all(b.disabled for b in buttons)
    assert [b.label for b in buttons if b.style == discord.ButtonStyle.success] == ["Style"]
    assert thread.messages[1].content.startswith("A style LoRA, then.")
    assert pressed.response.is_done()

    models = asking(thread)
    assert models.content == "Which base model do you use?"
    assert "Pony Diffusion V6 XL" in [b.label for b in models.buttons()]
    since = len(world.log)
    await press(bot, models, "Stable Diffusion 1.5", mira)
    assert calls_of(world, since)[0] == "response.defer"
    assert asking(thread).content.startswith("In a sentence, what are you training?")

    await say(bot, thread, mira, "Warm, layered landscapes with visible brush strokes")
    trigger = asking(thread)
    assert "I suggest `mirastyle`" in trigger.content and [b.label for b in trigger.buttons()] == ["Use mirastyle"]
    await say(bot, thread, mira, "mira_gouache")

    intent = Project.existing(bot_settings, PROJECT).path("intent.md").read_text()
    assert "mira_gouache" in intent and "Warm, layered landscapes with visible brush strokes" in intent
    assert any(f"Your project **{PROJECT}** is set up" in said for said in thread.said())
    assert thread.said()[-1].startswith("Now send me your pictures right here")


async def test_someone_else_pressing_a_button_is_told_privately_and_nothing_changes(bot, world, mira):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    posted = len(thread.messages)
    stranger = User(world, "Sam")
    since = len(world.log)

    await press(bot, asking(thread), "Character", stranger)

    assert calls_of(world, since) == ["response.defer", "followup.send"]
    assert world.calls("followup.send")[-1] == {
        "content": "This isn't your session — type /train to start your own.",
        "ephemeral": True,
    }
    assert not any(b.disabled for b in asking(thread).buttons()) and len(thread.messages) == posted
    state = await bot.store.session(str(thread.id))
    assert state["phase"] == "intent" and state["data"]["step"] == "type"


async def test_messages_from_bots_and_outside_session_threads_are_ignored(bot, world, mira):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    elsewhere = Thread(world, "chat", TextChannel(world))
    since = len(world.log)

    await say(bot, thread, User(world, "Helper", bot=True), "style")
    await say(bot, elsewhere, mira, "style")

    assert world.log[since:] == []


# Uploads ------------------------------------------------------------------------------------------


async def test_uploads_stage_pictures_refuse_other_files_and_queue_a_check(bot, world, mira, painting):
    thread = await interview(bot, mira)
    huge = Attachment("huge.png", b"", size=bot.settings.max_upload_bytes + 1)
    files = [
        Attachment("forest.jpg", jpeg_bytes(painting(1))),
        Attachment("notes.jpg", b"remember: ask about the gouache set\n"),
        huge,
    ]

    message = await say(bot, thread, mira, attachments=files)

    session = str(thread.id)
    staged = inbox(bot.settings, session) / f"{message.id}-0" / "forest.jpg"
    assert staged.read_bytes() == files[0].data
    assert not (inbox(bot.settings, session) / f"{message.id}-1").exists()
    assert huge.reads == 0
    refusal = thread.said()[-2]
    assert refusal.startswith("I couldn't take these:\n- ❌ notes.jpg: this isn't a picture")
    assert "huge.png: this file is 52.4 MB, over the 50 MB limit" in refusal
    assert thread.said()[-1] == "Got 1 file(s) — checking them now."
    (job,) = await queued(bot)
    assert job.function == "dataset_check" and job.args[0]["args"] == {"staged": [str(staged)]}
    assert job.job_id == job.args[0]["id"] and job.args[0]["session"] == session


async def test_a_queue_outage_is_told_plainly_and_the_upload_stays_in_the_inbox(bot, world, mira, painting):
    thread = await interview(bot, mira)
    await bot.redis.aclose()
    bot.redis = ArqRedis.from_url("redis://127.0.0.1:1")  # nothing listens there

    message = await say(bot, thread, mira, attachments=[Attachment("forest.jpg", jpeg_bytes(painting(1)))])

    assert (inbox(bot.settings, str(thread.id)) / f"{message.id}-0" / "forest.jpg").is_file()
    assert thread.said()[-1].startswith("I couldn't hand that work to the worker just now")


# Captions -----------------------------------------------------------------------------------------


async def object_interview(bot: Bot, mira: User) -> Thread:
    """/train for an object LoRA on SD 1.5 (10 pictures are enough for one), trigger word `miraobj`."""
    await slash_train(bot, mira)
    thread = threads(bot.world)[-1]
    await press(bot, asking(thread), "Object", mira)
    await press(bot, asking(thread), "Stable Diffusion 1.5", mira)
    await say(bot, thread, mira, "My ceramic teapot, from every side")
    await press(bot, asking(thread), "Use miraobj", mira)
    return thread


async def offered_captions(bot: Bot, mira: User, painting, worker: Worker) -> Thread:
    """A thread whose 10 different pictures were checked by the real job and relayed: no duplicates,
    nothing captioned, so Gate 1 is NO-GO and the captions are offered."""
    thread = await object_interview(bot, mira)
    pictures = [Attachment(f"pot-{n}.jpg", jpeg_bytes(painting(n, (576, 512)))) for n in range(10)]
    await say(bot, thread, mira, attachments=pictures)
    assert await worker.run(bot) == ["dataset_check"]
    return thread


def sample_questions(thread: Thread) -> list[Message]:
    return [m for m in thread.messages if any(":cap:" in b.custom_id for b in m.buttons())]


def sample_file(thread: Thread, question: Message) -> str:
    """The picture a sample question asks about: the one posted just before it."""
    picture = thread.messages[thread.messages.index(question) - 1]
    return SAMPLE.fullmatch(picture.content)["file"]


def ref_of(question: Message) -> str:
    return question.buttons()[0].custom_id.split(":", 2)[2].rsplit(":", 1)[0]


async def samples_shown(bot: Bot, mira: User, painting, worker: Worker) -> tuple[Thread, list[Message]]:
    """Captions started, the sample job run and its five samples relayed."""
    thread = await offered_captions(bot, mira, painting, worker)
    await press(bot, asking(thread), "Start captions", mira)
    assert await worker.run(bot) == ["caption_samples"]
    questions = sample_questions(thread)
    assert len(questions) == 5
    return thread, questions


async def new_jobs(bot: Bot, before: set[str]) -> list[str]:
    return [j.function for j in await queued(bot) if j.job_id not in before]


async def test_start_captions_queues_the_samples_and_each_comes_with_its_picture_and_buttons(
    bot, world, mira, painting, worker, bot_settings
):
    thread = await offered_captions(bot, mira, painting, worker)
    said = "\n".join(thread.said())
    assert "**Gate 1 (dataset): NO-GO**" in said and "images are not captioned yet" in said
    offer = asking(thread)
    assert offer.content == CAPTIONS_NEXT
    assert [(b.label, b.custom_id) for b in offer.buttons()] == [("Start captions", f"lt:{thread.id}:captions:start")]
    before = {j.job_id for j in await queued(bot)}

    since = len(world.log)
    await press(bot, offer, "Start captions", mira)

    assert calls_of(world, since)[0] == "response.defer"
    assert all(b.disabled for b in offer.buttons())
    assert thread.said()[-1].startswith("Writing up to 5 sample captions for you to check first")
    (job,) = [j for j in await queued(bot) if j.job_id not in before]
    assert job.function == "caption_samples"
    assert job.args[0]["session"] == str(thread.id) and job.args[0]["project"] == OBJECT

    posted = len(thread.messages)
    assert await worker.run(bot) == ["caption_samples"]

    shown = thread.messages[posted:]
    assert ANALYZER_ONLY in [m.content for m in shown]  # no Claude key in tests: the local analyzer writes them
    pictures = [m for m in shown if m.file]
    assert [SAMPLE.fullmatch(m.content)["number"] for m in pictures] == ["1", "2", "3", "4", "5"]
    files = [SAMPLE.fullmatch(m.content)["file"] for m in pictures]
    project = Project.existing(bot_settings, OBJECT)
    assert len(set(files)) == 5 and all((project.dataset_dir / f).is_file() for f in files)
    assert [m.file.filename for m in pictures] == files  # the picture itself, from the dataset
    questions = sample_questions(thread)
    assert [shown.index(q) for q in questions] == [shown.index(p) + 1 for p in pictures]
    refs = []
    for question in questions:
        assert [b.label for b in question.buttons()] == ["Approve", "Adjust", "Skip"]
        ids = [re.fullmatch(rf"lt:{thread.id}:(cap:[0-9a-f]{{16}}):(\w+)", b.custom_id) for b in question.buttons()]
        assert [m[2] for m in ids] == ["approve", "adjust", "skip"] and len({m[1] for m in ids}) == 1
        refs.append(ids[0][1])
        assert CAPTION.search(question.content)["caption"].startswith("miraobj, ")
        assert question.content.endswith("Does this capture both what's in the image AND how it's painted?")
    assert sorted(await bot.store.open_choices(str(thread.id), "cap:")) == sorted(set(refs))
    assert any(m.content == "✅ Samples written ▓▓▓▓▓▓▓▓▓▓ 5/5" for m in thread.messages)
    assert list(project.dataset_dir.glob("*.txt")) == []  # nothing is written before the artist says so


async def test_adjust_opens_the_caption_box_first_and_its_wording_is_written_with_the_trigger_word(
    bot, world, mira, painting, worker, bot_settings
):
    thread, questions = await samples_shown(bot, mira, painting, worker)
    question, session = questions[0], str(thread.id)
    file, proposed = sample_file(thread, question), CAPTION.search(question.content)["caption"]
    project = Project.existing(bot_settings, OBJECT)
    before = {j.job_id for j in await queued(bot)}

    since = len(world.log)
    pressed = await press(bot, question, "Adjust", mira)

    assert calls_of(world, since) == ["response.send_modal"]  # the box is the first answer: no defer before it
    modal = pressed.response.modal
    assert isinstance(modal, AdjustCaption)
    (box,) = modal.children
    assert isinstance(box, discord.ui.TextInput) and box.value == proposed
    shown = modal.to_dict()  # what Discord is sent
    assert shown["title"] == "Adjust the caption"
    assert shown["components"] == [
        {
            "type": 1,
            "components": [
                {
                    "type": 4,
                    "custom_id": box.custom_id,
                    "label": "Caption",
                    "style": discord.TextStyle.long.value,
                    "required": True,
                    "value": proposed,  # pre-filled with the sample's caption
                    "max_length": 4000,
                }
            ],
        }
    ]
    assert proposed == (await bot.store.open_choice(session, ref_of(question)))["caption"]
    assert not any(b.disabled for b in question.buttons()) and read_caption(project, file) is None

    since = len(world.log)
    await submit(bot, modal, mira, question, "  a blue teapot on a shelf,\n gouache, soft light ")

    assert calls_of(world, since) == ["response.defer", "interaction.edit_original_response", "thread.send"]
    written = "miraobj, a blue teapot on a shelf, gouache, soft light"
    assert read_caption(project, file) == written
    assert thread.said()[-1] == (
        f"Noted — I'll use your wording for the rest: `{written}` "
        "(I put the trigger word `miraobj` first: every caption starts with it.)"
    )
    buttons = question.buttons()
    assert all(b.disabled for b in buttons)
    assert [b.label for b in buttons if b.style == discord.ButtonStyle.success] == ["Adjust"]
    assert modal.is_finished()
    history = await bot.store.caption_history(OBJECT, file)
    assert history[-1]["text"] == written and (history[-1]["source"], history[-1]["status"]) == ("artist", "adjusted")
    assert len(await bot.store.open_choices(session, "cap:")) == 4 and await new_jobs(bot, before) == []

    since = len(world.log)  # a second press (a stale client) opens no box: the sample is decided
    again = await press(bot, question, "Adjust", mira)
    assert calls_of(world, since) == ["response.defer", "followup.send"] and again.response.modal is None
    assert world.calls("followup.send")[-1] == {
        "content": "You've already decided about that caption.",
        "ephemeral": True,
    }
    assert read_caption(project, file) == written


async def test_someone_else_pressing_adjust_gets_no_box_and_nothing_is_written(
    bot, world, mira, painting, worker, bot_settings
):
    thread, questions = await samples_shown(bot, mira, painting, worker)
    question = questions[2]
    posted = len(thread.messages)
    stranger = User(world, "Sam")

    since = len(world.log)
    pressed = await press(bot, question, "Adjust", stranger)

    assert calls_of(world, since) == ["response.defer", "followup.send"]
    assert pressed.response.modal is None and world.calls("response.send_modal") == []
    assert world.calls("followup.send")[-1] == {"content": NOT_YOURS, "ephemeral": True}
    assert len(thread.messages) == posted and not any(b.disabled for b in question.buttons())
    project = Project.existing(bot_settings, OBJECT)
    assert list(project.dataset_dir.glob("*.txt")) == []
    assert ref_of(question) in await bot.store.open_choices(str(thread.id), "cap:")
    history = await bot.store.caption_history(OBJECT, sample_file(thread, question))
    assert [h["status"] for h in history] == ["proposed"]  # only the proposal is on record


async def test_once_every_sample_is_decided_the_rest_are_captioned_and_gate_one_is_go(
    bot, world, mira, painting, worker, bot_settings
):
    thread, questions = await samples_shown(bot, mira, painting, worker)
    project = Project.existing(bot_settings, OBJECT)
    files = [sample_file(thread, q) for q in questions]
    proposed = [CAPTION.search(q.content)["caption"] for q in questions]
    before = {j.job_id for j in await queued(bot)}

    adjusting = await press(bot, questions[0], "Adjust", mira)
    await submit(bot, adjusting.response.modal, mira, questions[0], "miraobj, a teapot on a windowsill")
    for question in questions[1:3]:
        await press(bot, question, "Approve", mira)
        assert thread.said()[-1] == f"Approved: `{CAPTION.search(question.content)['caption']}`"
    await press(bot, questions[3], "Skip", mira)
    assert thread.said()[-1] == f"Skipped `{files[3]}` as a sample; it will be captioned with the rest."
    assert await new_jobs(bot, before) == []  # one sample is still open
    await press(bot, questions[4], "Approve", mira)

    assert all(all(b.disabled for b in q.buttons()) for q in questions)
    assert thread.said()[-1] == (
        "Samples done — captioning the rest now, in the wording we agreed. I'll tell you when it's done."
    )
    assert await new_jobs(bot, before) == ["caption_batch"]
    assert read_caption(project, files[0]) == "miraobj, a teapot on a windowsill"
    assert [read_caption(project, f) for f in files[1:3]] == proposed[1:3]
    assert read_caption(project, files[3]) is None

    assert await worker.run(bot) == ["caption_batch"]
    said = "\n".join(thread.said())
    assert "Captioned 6 more picture(s)." in said  # the skipped sample is captioned with the rest
    assert "Checking the dataset again now." in said
    assert await worker.run(bot) == ["dataset_check"]

    said = "\n".join(thread.said())
    assert "**Gate 1 (dataset): GO** — 10 pictures, captioned and checked." in said
    assert file_names(world)[-1] == "dataset-report.md"
    captions = [p.read_text(encoding="utf-8").strip() for p in project.dataset_dir.glob("*.txt")]
    assert len(captions) == 10 and all(c.startswith("miraobj, ") for c in captions)
    assert await bot.store.open_choices(str(thread.id)) == ["preset"]  # no new offer of captions: settings next
    assert await worker.run(bot) == []


async def test_caption_buttons_posted_before_a_restart_still_work(bot, world, mira, painting, worker, bot_settings):
    thread, questions = await samples_shown(bot, mira, painting, worker)
    files = [sample_file(thread, q) for q in questions[:2]]
    proposed = [CAPTION.search(q.content)["caption"] for q in questions[:2]]
    await bot.close()

    restarted = Bot(bot_settings, world)
    await restarted.open()
    try:
        since = len(world.log)
        pressed = await press(restarted, questions[0], "Adjust", mira)
        assert calls_of(world, since) == ["response.send_modal"]
        (box,) = pressed.response.modal.children
        assert box.default == proposed[0]  # from SQLite: the new bot never saw the sample
        await submit(restarted, pressed.response.modal, mira, questions[0], "a teapot, gouache")
        await press(restarted, questions[1], "Approve", mira)
    finally:
        await restarted.close()

    project = Project.existing(bot_settings, OBJECT)
    assert read_caption(project, files[0]) == "miraobj, a teapot, gouache"
    assert read_caption(project, files[1]) == proposed[1]
    assert thread.said()[-2].startswith("Noted — I'll use your wording for the rest: `miraobj, a teapot, gouache`")
    assert thread.said()[-1] == f"Approved: `{proposed[1]}`"
    assert all(b.disabled for q in questions[:2] for b in q.buttons())


# The relay ----------------------------------------------------------------------------------------


async def test_a_dataset_check_is_relayed_with_the_side_by_side_and_keep_buttons_once(bot, world, mira, painting):
    thread = await checked(bot, mira, painting)
    said = "\n".join(thread.said())

    progress = [m for m in thread.messages if m.content.startswith(("⏳", "✅"))]
    assert len(progress) == 1  # one message per job, edited in place
    assert "Got 3 files. Here's what I found:" in said and "Added 3 of 3 file(s)." in said
    assert "Training on duplicates makes the model memorise" in said
    (picture,) = file_names(world)
    assert picture.startswith("pair-") and picture.endswith(".jpg")
    assert PAIR.search(said)
    keep = asking(thread)
    assert keep.content == "Which should I keep?"
    assert [b.label for b in keep.buttons()] == ["Keep left", "Keep right", "Keep both"]
    assert all(re.fullmatch(rf"lt:{thread.id}:dup:[0-9a-f]{{16}}:(a|b|both)", b.custom_id) for b in keep.buttons())

    posted = len(world.calls("thread.send"))
    await bot.close()
    restarted = Bot(bot.settings, world)
    await restarted.open()
    try:
        await restarted.store.save_stream_cursor(restarted.settings.events_stream, "0-0")  # read it all again
        stream = RedisStream(restarted.redis, restarted.settings.events_stream)
        assert await Relay(restarted, stream).step(block_ms=100) > 0
    finally:
        await restarted.close()
    assert len(world.calls("thread.send")) == posted


async def test_a_button_posted_before_a_restart_still_decides(bot, world, mira, painting, bot_settings):
    thread = await checked(bot, mira, painting)
    pair = PAIR.search("\n".join(thread.said()))
    keep = asking(thread)
    before = {j.job_id for j in await queued(bot)}
    await bot.close()

    restarted = Bot(bot_settings, world)
    await restarted.open()
    try:
        since = len(world.log)
        await press(restarted, keep, "Keep left", mira)
        after = {j.job_id for j in await queued(restarted)}
    finally:
        await restarted.close()

    assert calls_of(world, since)[0] == "response.defer"
    project = Project.existing(bot_settings, PROJECT)
    assert (project.excluded_dir / pair["right"]).is_file() and not (project.dataset_dir / pair["right"]).exists()
    assert (project.dataset_dir / pair["left"]).is_file()
    assert f"Keeping `{pair['left']}`; `{pair['right']}` is set aside in excluded/" in thread.said()[-2]
    assert thread.said()[-1] == "All duplicates decided — updating the dataset report."
    assert all(b.disabled for b in keep.buttons())
    assert len(after - before) == 1  # the report is brought up to date


async def test_the_relay_skips_a_deleted_thread_and_carries_on(bot, world, mira, caplog):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    del world.channels[thread.id]
    stream = RedisStream(bot.redis, bot.settings.events_stream)
    event = JobStarted(id="j:started", session=str(thread.id), project=PROJECT, job="dataset_check", text="Checking")
    await stream.publish(event)

    with caplog.at_level(logging.WARNING):
        assert await Relay(bot, stream).step(block_ms=100) == 1

    assert "is gone or hidden from the bot" in caplog.text
    assert await bot.store.stream_cursor(bot.settings.events_stream) != "0-0"
    assert not await bot.store.mark_relayed("j:started")


async def test_the_relay_waits_out_a_redis_outage(bot, caplog):
    relay = Relay(bot, RedisStream(Redis.from_url("redis://127.0.0.1:1"), bot.settings.events_stream))
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    assert "Event stream unreachable" in caplog.text


async def test_a_relay_asked_to_stop_finishes_its_batch_and_after_a_restart_posts_only_what_is_new(
    bot, world, mira, bot_settings
):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    stream = RedisStream(bot.redis, bot.settings.events_stream)

    def started(n: int) -> JobStarted:
        return JobStarted(id=f"j{n}:started", session=str(thread.id), project=PROJECT, job=f"j{n}", text=f"Step {n}")

    for n in range(3):
        await stream.publish(started(n))
    deliver = bot.deliver

    async def stopped_while_showing(thread, outcome, private=None) -> None:
        bot.relay.stop()  # the stop comes while the first of the three is being shown
        await deliver(thread, outcome, private)

    bot.deliver = stopped_while_showing
    await asyncio.wait_for(bot.relay.run(), 5)
    assert [m for m in thread.said() if m.startswith("⏳")] == [f"⏳ Step {n} ░░░░░░░░░░ 0/3" for n in range(3)]

    idle = Relay(bot, stream)  # waiting for events (up to 5 s a read), it stops at once
    following = asyncio.create_task(idle.run())
    await asyncio.sleep(0.2)
    idle.stop()
    await asyncio.wait_for(following, 0.5)

    for n in (3, 4):
        await stream.publish(started(n))
    await bot.close()
    restarted = Bot(bot_settings, world)
    await restarted.open()
    try:
        assert await restarted.relay.step(block_ms=100) == 2
        assert await restarted.relay.step(block_ms=100) == 0
    finally:
        await restarted.close()
    assert [m for m in thread.said() if m.startswith("⏳")] == [f"⏳ Step {n} ░░░░░░░░░░ 0/3" for n in range(5)]


# Rendering ----------------------------------------------------------------------------------------


async def test_progress_is_one_message_edited_in_place_throttled_and_after_a_restart(bot, world):
    thread = Thread(world, "t", TextChannel(world))
    renderer = Renderer(bot.store, progress_every=0.2)
    step = [Progress(key="check", text="Checking", done=n, total=3) for n in range(4)]

    await renderer.show(thread, [step[0]])
    await renderer.show(thread, [step[1]])
    await renderer.show(thread, [step[2]])
    assert len(thread.messages) == 1 and world.calls("message.edit") == []  # too soon to edit
    await asyncio.sleep(0.3)
    assert [c["content"] for c in world.calls("message.edit")] == ["⏳ Checking ▓▓▓▓▓▓▓░░░ 2/3"]

    await Renderer(bot.store, progress_every=0.2).show(thread, [step[3]])  # a new bot edits the same message
    assert len(thread.messages) == 1 and thread.said() == ["✅ Checking ▓▓▓▓▓▓▓▓▓▓ 3/3"]
    await renderer.close()


async def test_training_progress_shows_its_details_and_pings_reach_the_artist(bot, world):
    thread = Thread(world, "t", TextChannel(world))
    await bot.store.save_session(str(thread.id), "4242", "pots", "training", {})
    details = "loss 0.0712 (started 0.0891) · 27 min elapsed · ~18 min left\ncheckpoints: pots-epoch005.safetensors"
    progress = Progress(key="train:pots", text="Training pots — epoch 9/15", done=9, total=15, details=details)
    await bot.renderer.show(thread, [progress, Text(text="Checkpoint saved at epoch 10.", ping=True),
                                     Text(text="Just so you know.")])  # fmt: skip
    assert thread.said() == [
        f"⏳ Training pots — epoch 9/15 ▓▓▓▓▓▓░░░░ 9/15\n{details}",
        "<@4242> Checkpoint saved at epoch 10.",
        "Just so you know.",
    ]


async def test_a_discord_error_on_one_reply_is_logged_and_the_rest_go_out(bot, world, caplog):
    thread = Thread(world, "t", TextChannel(world))
    thread.fail_with = http_error(discord.Forbidden, 403, "Missing Permissions")

    with caplog.at_level(logging.WARNING):
        await bot.renderer.show(thread, [Text(text="lost"), Text(text="shown")])

    assert thread.said() == ["shown"] and "Discord refused a text reply" in caplog.text


def test_long_text_is_split_between_lines():
    text = "\n".join(f"line {n:04d} " + "x" * 40 for n in range(100))
    chunks = split(text)
    assert len(chunks) == 3 and all(len(c) <= 2000 for c in chunks)
    assert "\n".join(chunks) == text
    assert split("y" * 4500) == ["y" * 2000, "y" * 2000, "y" * 500]
    assert split("\n\n") == []


# Running ------------------------------------------------------------------------------------------


def test_the_bot_refuses_to_start_without_a_token(settings, cli, monkeypatch):
    for token in (None, SecretStr("  ")):
        with pytest.raises(UserError, match="LORATRAIN_DISCORD_TOKEN"):
            run(settings.model_copy(update={"discord_token": token}), argparse.Namespace(check=False))
    monkeypatch.delenv("LORATRAIN_DISCORD_TOKEN", raising=False)
    code, _, err = cli("bot")
    assert code == 2 and "No Discord bot token is set" in err


async def test_stopping_lets_actions_in_flight_finish_ignores_new_messages_and_happens_once(bot, world, mira):
    await slash_train(bot, mira)
    (thread,) = threads(world)
    session = str(thread.id)

    async def action_in_flight() -> str:
        async with bot.session_lock(session):
            await asyncio.sleep(0.2)
            return (await bot.store.session(session))["owner"]  # the store is still open

    acting = asyncio.create_task(action_in_flight())
    await asyncio.sleep(0)
    await asyncio.gather(bot.close(), bot.close())
    assert acting.done() and acting.result() == str(mira.id)
    assert bot.is_closed() and bot.stopping
    before = len(world.log)
    await say(bot, thread, mira, "hello?")  # the store is closed: a handled message would fail here
    assert len(world.log) == before
    await bot.close()  # the fixture closes it once more


async def test_the_health_check_reads_the_heartbeat_the_bot_writes(bot, bot_settings, capsys, monkeypatch):
    async def checked() -> tuple[int, str]:
        code = await check(bot_settings)
        return code, capsys.readouterr().out

    assert await checked() == (1, "The bot is not running: it has written no heartbeat in the last 45 s.\n")
    await beat(bot)  # Discord not connected yet
    assert await checked() == (1, "The bot is running but not connected to Discord.\n")
    monkeypatch.setattr(bot, "is_ready", lambda: True)
    await beat(bot)
    code, out = await checked()
    assert code == 1 and "its relay is not reading the workers' events" in out
    await bot.relay.step(block_ms=10)
    await beat(bot)
    assert await checked() == (0, "The bot is connected to Discord; its relay read the events 0 s ago.\n")
    assert 0 < await bot.redis.ttl(health_key(bot_settings)) <= HEARTBEAT_TTL_S

    bot.relay.last_read = time.time() - RELAY_STALE_S - 1  # a relay stuck on something
    await beat(bot)
    assert (await checked())[0] == 1
    await bot.close()
    assert (await checked())[0] == 1  # a stopped bot leaves no heartbeat


async def test_sigterm_stops_the_running_bot_gracefully(bot_settings, world, monkeypatch, capsys, caplog):
    class Connected(Bot):
        """The real bot with everything but Discord's gateway, which stands still until closed."""

        async def start(self, token: str, *, reconnect: bool = True) -> None:
            await self.setup_hook()
            await asyncio.Event().wait()

    async def no_sync(**_) -> list:
        return []

    async def health() -> str:
        await check(bot_settings)
        return capsys.readouterr().out

    bot = Connected(bot_settings, world)
    monkeypatch.setattr(bot.tree, "sync", no_sync)
    serving = asyncio.create_task(serve(bot, "token"))
    async with asyncio.timeout(5):  # up, with its heartbeat written
        while "not connected to Discord" not in await health():
            await asyncio.sleep(0.05)
    with caplog.at_level(logging.INFO):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, 10)
    assert bot.is_closed() and bot._relay_task.done()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("bot")] == [
        "Bot stopping",
        "Relay stopped",
        "Bot stopped",
    ]
    assert "The bot is not running" in await health()  # its heartbeat went with it


def test_the_bot_check_needs_no_token_and_says_when_redis_is_down(cli, redis_url, monkeypatch):
    monkeypatch.delenv("LORATRAIN_DISCORD_TOKEN", raising=False)
    monkeypatch.setenv("LORATRAIN_REDIS_URL", redis_url)
    assert cli("bot", "--check") == (1, "The bot is not running: it has written no heartbeat in the last 45 s.\n", "")
    monkeypatch.setenv("LORATRAIN_REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    code, out, err = cli("bot", "--check")
    assert code == 1 and out == "The bot's health is unknown: Redis at LORATRAIN_REDIS_URL can't be reached.\n"
