"""Captions: Claude vision through the real SDK against the local Messages API stub (the picture sent,
the forced tool, the prompt, retries, refusals and malformed answers, usage), the local style analyzer
on pictures with known looks, the formats per family, the caption files and the caption history."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from anthropic.types import Usage
from PIL import Image, ImageDraw
from pydantic import SecretStr

from core import claude_api
from core import intent as intents
from core.captions.analyzer import analyse
from core.captions.claude import MALFORMED, REFUSED, UNAVAILABLE, encode
from core.captions.formats import compose, formats, read_caption, starts_with_trigger, with_trigger, write_caption
from core.captions.proposals import Proposal, propose
from core.dataset.snapshot import take
from core.errors import UserError
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.store import open_store
from tests.messages_stub import MessagesStub, text, tool

TRIGGER = "mirastyle"
ANSWER = {
    "content": ["a fox curled up in tall grass", "mirastyle", "early morning"],
    "style": ["gouache painting", "soft dappled light", "muted greens"],
    "caption": "otherword, a fox in grass",  # a model's own caption and trigger are never trusted
}


@pytest.fixture
async def store(settings):
    async with open_store(settings.database_path) as s:
        yield s


@pytest.fixture
def project(settings) -> Project:
    project = Project.at(settings, "mira-style")
    intents.create(project, LoraType.style, Family.sdxl, TRIGGER, "gouache landscapes")
    return project


@pytest.fixture
def intent(project):
    return intents.load(project)


@pytest.fixture
async def api():
    async with MessagesStub().running() as stub:
        yield stub


@pytest.fixture
def online(settings, api):
    return settings.model_copy(
        update={"anthropic_api_key": SecretStr("test-key"), "anthropic_base_url": api.url, "anthropic_max_retries": 3}
    )


def add(project: Project, name: str, img: Image.Image) -> str:
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    img.save(project.dataset_dir / name, quality=92)
    return name


def sent_image(request: dict) -> Image.Image:
    block = request["messages"][0]["content"][0]
    assert block["type"] == "image" and block["source"]["media_type"] == "image/jpeg"
    return Image.open(io.BytesIO(base64.b64decode(block["source"]["data"])))


# Claude vision ------------------------------------------------------------------------------------


async def test_claude_sees_a_fitted_jpeg_and_the_artists_words_and_answers_through_the_tool(
    online, store, project, intent, api, painting
):
    (online.grimoire / "eye.md").write_text("## Words I use\n- gouache, never 'oil painting'\n", encoding="utf-8")
    big = add(project, "big.png", painting(3, (600, 400)).resize((3000, 2000)))
    api.reply(tool("record_caption", ANSWER), input_tokens=1800, output_tokens=90)
    example = "mirastyle, gouache painting of a dense forest path, dappled golden light"

    (proposal,) = await propose(online, store, project, intent, [big], [example])

    (request,) = api.requests
    assert request["tool_choice"] == {"type": "tool", "name": "record_caption"}
    assert [t["name"] for t in request["tools"]] == ["record_caption"]
    picture = sent_image(request)
    assert picture.format == "JPEG" and max(picture.size) <= 1568 and picture.width * picture.height <= 1_150_000
    assert abs(picture.width / picture.height - 1.5) < 0.01 and picture.width > 1200  # fitted, not shrunk further
    assert request["system"][0]["cache_control"] == {"type": "ephemeral"}  # the same for every picture of a batch
    system = request["system"][0]["text"]
    assert f"Trigger word: {TRIGGER}" in system and example in system and "never 'oil painting'" in system
    assert "## Content elements and style elements" in system and "| pony | tags | comma |" in system
    hints = request["messages"][0]["content"][1]["text"]
    assert "local analyzer measured" in hints and "values" in hints

    assert proposal == Proposal(
        file="big.png",
        caption="mirastyle, a fox curled up in tall grass, early morning, gouache painting, soft dappled light, "
        "muted greens",
        content=["a fox curled up in tall grass", "early morning"],
        style=ANSWER["style"],
        source="claude",
    )
    usage = await store.usage_total("mira-style")
    assert (usage["calls"], usage["input_tokens"], usage["output_tokens"]) == (1, 1800, 90)
    assert usage["cost_usd"] == pytest.approx((1800 * 3.0 + 90 * 15.0) / 1e6)


def test_prompt_cache_tokens_count_as_input_at_their_own_price(settings):
    usage = Usage(input_tokens=100, cache_creation_input_tokens=1000, cache_read_input_tokens=2000, output_tokens=10)
    assert claude_api.input_tokens(usage) == 3100
    assert claude_api.cost_usd(settings, usage) == pytest.approx(((100 + 1.25 * 1000 + 0.1 * 2000) * 3 + 10 * 15) / 1e6)


async def test_a_busy_api_is_retried_then_answers(online, store, project, intent, api, painting):
    name = add(project, "a.jpg", painting(1, (320, 288)))
    api.error(429, "rate_limit_error", {"retry-after": "0"})
    api.error(529, "overloaded_error", {"retry-after-ms": "10"})
    api.reply(tool("record_caption", ANSWER))
    (proposal,) = await propose(online, store, project, intent, [name], [])
    assert len(api.requests) == 3 and proposal.source == "claude" and proposal.problem is None


@pytest.mark.parametrize(
    "answer,problem",
    [
        (tool("record_caption", {"content": ["a fox"], "caption": "mirastyle, a fox"}), MALFORMED),  # no style
        (tool("record_caption", {**ANSWER, "style": "gouache, soft light"}), MALFORMED),  # not a list
        (tool("record_caption", {**ANSWER, "content": ["  "]}), MALFORMED),  # nothing in it
        (text("Here is a lovely fox in the grass."), MALFORMED),  # words instead of the tool
        (text("I can't help with that picture."), REFUSED),  # stop reason "refusal", below
    ],
)
async def test_an_unusable_answer_gives_the_analyzers_caption_and_says_why(
    online, store, project, intent, api, painting, answer, problem
):
    name = add(project, "a.jpg", painting(2, (320, 288)))
    api.reply(answer, stop_reason="refusal" if problem == REFUSED else None)
    (proposal,) = await propose(online, store, project, intent, [name], [])
    style = analyse(project.dataset_dir / name)
    assert proposal == Proposal(
        file=name, caption=compose(Family.sdxl, TRIGGER, [], style), content=[], style=style, source="analyzer",
        problem=problem,
    )  # fmt: skip
    assert (await store.usage_total("mira-style"))["calls"] == 1  # the call still cost tokens


async def test_an_outage_falls_back_for_the_whole_batch_without_hammering_the_api(
    online, store, project, intent, api, painting
):
    names = [add(project, f"{i}.jpg", painting(i, (256, 256))) for i in range(6)]
    for _ in range(6):
        api.error(500, "api_error")
    settings = online.model_copy(update={"anthropic_max_retries": 0})
    proposals = await propose(settings, store, project, intent, names, [])
    assert [p.file for p in proposals] == names
    assert all(p.source == "analyzer" and p.problem == UNAVAILABLE for p in proposals)
    assert len(api.requests) <= 4  # the calls already in flight; the rest went straight to the analyzer


async def test_offline_or_without_a_key_the_analyzer_captions_and_progress_is_reported(
    online, settings, store, project, intent, api, painting
):
    names = [add(project, f"{i}.jpg", painting(i, (256, 256))) for i in range(3)]
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    for how in ({"settings": online, "offline": True}, {"settings": settings}):
        seen.clear()
        proposals = await propose(
            how["settings"], store, project, intent, names, [], offline=how.get("offline", False), progress=progress
        )
        assert [p.source for p in proposals] == ["analyzer"] * 3 and all(p.problem is None for p in proposals)
        assert all(p.caption.startswith(f"{TRIGGER}, ") and p.content == [] and p.style for p in proposals)
        assert seen == [(1, 3), (2, 3), (3, 3)]
    assert api.requests == []


async def test_pictures_outside_the_dataset_are_refused(settings, store, project, intent):
    with pytest.raises(UserError):
        await propose(settings, store, project, intent, ["../intent.md"], [])


def test_the_picture_sent_is_upright_and_transparency_lies_on_white(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers turn it 90° clockwise
    Image.new("RGB", (300, 200), "red").save(tmp_path / "turned.jpg", exif=exif.tobytes())
    assert Image.open(io.BytesIO(encode(tmp_path / "turned.jpg"))).size == (200, 300)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    sent = Image.open(io.BytesIO(encode(tmp_path / "clear.png")))
    assert sent.format == "JPEG" and min(sent.getpixel((32, 32))) > 250


# The local style analyzer ----------------------------------------------------------------------------


def gradient(top, bottom, size=(384, 384)) -> Image.Image:
    t = np.linspace(0, 1, size[1])[:, None, None]
    rows = np.array(top, float) * (1 - t) + np.array(bottom, float) * t
    return Image.fromarray(np.broadcast_to(rows, (size[1], size[0], 3)).astype(np.uint8))


def warm_high_contrast() -> Image.Image:
    img = Image.new("RGB", (384, 384), (235, 120, 25))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 270, 384, 384], fill=(15, 10, 5))
    draw.ellipse([115, 75, 270, 230], fill=(255, 245, 225))
    return img


def line_drawing() -> Image.Image:
    rng = np.random.default_rng(7)
    img = Image.new("RGB", (1024, 1024), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        draw.line([tuple(rng.uniform(0, 1024, 2)) for _ in range(4)], fill="black", width=4)
    return img


def soft_gradient() -> Image.Image:
    y, x = np.mgrid[0:384, 0:384] / 384
    r = np.hypot(x - 0.5, y - 0.5)[..., None]
    return Image.fromarray((np.array([240, 200, 150]) * (1 - r) + np.array([120, 90, 140]) * r).astype(np.uint8))


def grainy() -> Image.Image:
    noise = np.random.default_rng(0).normal(0, 30, (384, 384, 1))
    return Image.fromarray(np.clip(np.asarray(soft_gradient(), float) + noise, 0, 255).astype(np.uint8))


def test_a_warm_high_contrast_picture_and_a_cool_muted_one_are_told_apart():
    warm, cool = analyse(warm_high_contrast()), analyse(gradient((112, 124, 146), (134, 146, 160)))
    assert "vivid oranges" in warm and "predominantly warm colours" in warm and "strong light-dark contrast" in warm
    assert "muted blues" in cool and "predominantly cool colours" in cool and "soft low contrast" in cool
    assert not any("warm" in p for p in cool) and not any("cool" in p for p in warm)


def test_line_work_and_a_soft_gradient_are_told_apart():
    lines, soft = analyse(line_drawing()), analyse(soft_gradient())
    assert "crisp line work" in lines and "black and white" in lines
    assert "soft blended edges" in soft and "smooth gradients" in soft
    assert "crisp line work" not in soft and "soft blended edges" not in lines


def test_grain_and_a_smooth_surface_are_told_apart():
    rough, smooth = analyse(grainy()), analyse(soft_gradient())
    assert "visible grain and texture" in rough and "smooth gradients" not in rough
    assert "smooth gradients" in smooth and "visible grain and texture" not in smooth


def test_composition_cues_only_where_they_are_clear():
    centred = Image.new("RGB", (384, 384), (200, 205, 190))
    ImageDraw.Draw(centred).ellipse([146, 146, 238, 238], fill=(150, 40, 40))
    horizon = gradient((150, 190, 230), (170, 200, 235), (384, 288))
    ImageDraw.Draw(horizon).rectangle([0, 225, 384, 288], fill=(70, 110, 50))
    y, x = np.mgrid[0:384, 0:384]
    stripes = Image.fromarray(
        np.where(((x + y) // 40 % 2)[..., None] == 1, [40, 60, 90], [220, 210, 180]).astype(np.uint8)
    )
    assert "centred subject" in analyse(centred)
    assert "low horizon" in analyse(horizon)
    assert "strong diagonals" in analyse(stripes)
    cues = {"centred subject", "off-centre subject", "low horizon", "high horizon", "strong diagonals"}
    assert cues.isdisjoint(analyse(soft_gradient())) and cues.isdisjoint(analyse(grainy()))


def test_the_analyzer_is_deterministic_and_reads_files(tmp_path, painting):
    painting(5, (640, 576)).save(tmp_path / "p.jpg", quality=90)
    first = analyse(tmp_path / "p.jpg")
    assert first == analyse(str(tmp_path / "p.jpg")) and len(first) >= 6
    assert all(p and "," not in p for p in first)  # each phrase stays one tag when captions are split at commas


# Formats ----------------------------------------------------------------------------------------------


def test_the_families_formats_come_from_the_reference_table():
    assert {f: style for f, (style, _) in formats().items()} == {
        Family.sdxl: "tags", Family.flux: "sentences", Family.pony: "tags", Family.sd15: "tags"
    }  # fmt: skip


def test_tags_for_pony_sdxl_and_sd15_sentences_for_flux():
    content = ["A fox, tall_grass", "Mirastyle", "early\nmorning", "score_9", "a fox"]
    style = ["gouache painting", "muted greens.", "tall grass"]
    tags = "mirastyle, score_9, a fox, tall grass, early morning, gouache painting, muted greens"
    assert compose(Family.pony, TRIGGER, content, style) == tags
    assert compose(Family.sd15, TRIGGER, content, style) == tags
    assert compose(Family.sdxl, TRIGGER, content, style) == tags
    content, style = ["a fox curled up in tall_grass", "Mirastyle", "early\nmorning,"], ["gouache , , paint", "greens."]
    sentences = "mirastyle, a fox curled up in tall grass, early morning. Gouache, paint, greens."
    assert compose(Family.flux, TRIGGER, content, style) == sentences
    assert compose(Family.flux, TRIGGER, [], ["soft light"]) == "mirastyle, soft light."
    assert compose(Family.pony, TRIGGER, [], []) == TRIGGER
    for family in Family:
        caption = compose(family, TRIGGER, ["kaomoji ^_^", "a,,b"], ["x"])
        assert caption.startswith(f"{TRIGGER}, ") and "\n" not in caption and ",," not in caption


def test_write_caption_refuses_a_caption_without_the_trigger_first_or_a_picture_outside_the_dataset(project):
    name = add(project, "a.png", Image.new("RGB", (8, 8)))
    for caption in ("a fox, mirastyle", "mirastyles, a fox", "", "  \n  "):
        with pytest.raises(UserError, match="trigger word|empty"):
            write_caption(project, name, caption, TRIGGER)
    for file in ("../intent.md", "../../outside.png", "missing.png"):
        with pytest.raises(UserError):
            write_caption(project, file, "mirastyle, a fox", TRIGGER)
    assert read_caption(project, name) is None
    for caption, written in [
        ("mirastyle", "mirastyle"),
        ("mirastyle painting of a fox", "mirastyle, painting of a fox"),  # the comma the rule needs is added
        ("Mirastyle, a fox", "Mirastyle, a fox"),
    ]:
        write_caption(project, name, caption, TRIGGER)
        assert read_caption(project, name) == written and starts_with_trigger(written, TRIGGER)


def test_one_rule_for_a_caption_that_starts_with_the_trigger_word():
    for caption in ("mirastyle", "mirastyle, a fox", "mirastyle , a fox", "  mirastyle,a fox", "MiraStyle, a fox"):
        assert starts_with_trigger(caption, TRIGGER), caption
    assert starts_with_trigger("mirastyle, a fox", "MIRASTYLE")
    for caption in ("", "   ", ",mirastyle", "mirastyle painting of a fox", "mirastyles, a fox", "xmirastyle, a",
                    "a fox, mirastyle", "mirastyle-ish, a fox", "mirastyle. a fox"):  # fmt: skip
        assert not starts_with_trigger(caption, TRIGGER), caption


def test_with_trigger_puts_a_caption_in_the_form_the_rule_counts():
    assert with_trigger("mirastyle, a fox", TRIGGER) == ("mirastyle, a fox", False)
    assert with_trigger("  mirastyle painting of a fox,\n soft light ", TRIGGER) == (
        "mirastyle, painting of a fox, soft light",
        False,
    )
    assert with_trigger("Mirastyle painting", TRIGGER) == ("mirastyle, painting", False)
    assert with_trigger("mirastyle", TRIGGER) == ("mirastyle", False)
    assert with_trigger("a fox, mirastyle", TRIGGER) == ("mirastyle, a fox, mirastyle", True)
    assert with_trigger("mirastyles, a fox", TRIGGER) == ("mirastyle, mirastyles, a fox", True)
    assert with_trigger("", TRIGGER) == ("mirastyle", True)
    for caption in ("mirastyle painting", "a fox", "mirastyles a", "MIRASTYLE", ""):
        assert starts_with_trigger(with_trigger(caption, TRIGGER)[0], TRIGGER)


async def test_a_caption_write_caption_accepts_is_one_gate_1_counts(settings, painting):
    project = Project.at(settings, "gate-agrees")
    intents.create(project, LoraType.style, Family.sd15, TRIGGER, "gouache landscapes")
    typed = ["mirastyle painting of a fox", "mirastyle, a fox", "MIRASTYLE hills at dusk", "mirastyle"]
    for seed, caption in enumerate(typed):
        name = add(project, f"p{seed}.jpg", painting(seed, (576, 512)))
        write_caption(project, name, caption, TRIGGER)
    add(project, "refused.jpg", painting(9, (576, 512)))
    for caption in ("mirastyles, a fox", "a fox mirastyle"):
        with pytest.raises(UserError, match="trigger word"):
            write_caption(project, "refused.jpg", caption, TRIGGER)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
    assert sorted(snapshot.usable) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "refused.jpg"]
    assert sorted(snapshot.captioned()) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]
    assert snapshot.captions["p0.jpg"] == "mirastyle, painting of a fox"
    assert snapshot.captions["p2.jpg"] == "mirastyle, hills at dusk"


def test_quotes_commas_unicode_survive_and_newlines_are_flattened(project):
    name = add(project, "fox.png", Image.new("RGB", (8, 8)))
    path = write_caption(project, name, 'mirastyle, a "quoted" fox, café ☕ 日本語\nsecond line\r\n\tthird', TRIGGER)
    assert path == project.dataset_dir / "fox.txt"
    assert path.read_text(encoding="utf-8") == 'mirastyle, a "quoted" fox, café ☕ 日本語 second line third\n'
    assert read_caption(project, name) == 'mirastyle, a "quoted" fox, café ☕ 日本語 second line third'
    assert sorted(p.name for p in project.dataset_dir.iterdir()) == ["fox.png", "fox.txt"]  # no temp files left


# History -----------------------------------------------------------------------------------------------


async def test_caption_history_and_approved_examples(store):
    await store.record_caption("p", "a.png", "mirastyle, a", "claude", "proposed")
    await store.record_caption("p", "b.png", "mirastyle, b", "analyzer", "proposed")
    await store.record_caption("p", "a.png", "mirastyle, a fox", "artist", "adjusted")
    await store.record_caption("p", "b.png", "mirastyle, b", "analyzer", "skipped")
    await store.record_caption("p", "c.png", "mirastyle, c", "claude", "approved")
    await store.record_caption("p", "a.png", "mirastyle, a fox, dusk", "artist", "approved")
    await store.record_caption("p", "d.png", "mirastyle, d", "claude", "batch")
    await store.record_caption("other", "e.png", "otherstyle, e", "claude", "approved")

    history = await store.caption_history("p", "a.png")
    assert [(h["text"], h["source"], h["status"]) for h in history] == [
        ("mirastyle, a", "claude", "proposed"),
        ("mirastyle, a fox", "artist", "adjusted"),
        ("mirastyle, a fox, dusk", "artist", "approved"),
    ]
    assert await store.approved_examples("p") == ["mirastyle, a fox, dusk", "mirastyle, c"]  # newest first
    assert await store.approved_examples("p", limit=1) == ["mirastyle, a fox, dusk"]
    await store.forget_project("p")
    assert await store.caption_history("p", "a.png") == [] and await store.approved_examples("other") == [
        "otherstyle, e"
    ]
