"""A project's dataset from folder to Gate 1: duplicates decided, variety judged, report written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core import intent as intents
from core.dataset.curate import curate
from core.dataset.report import decide, write_report
from core.dataset.snapshot import resolve, take
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.samples import variant
from core.store import open_store

SEED_HEADINGS = [
    "# Dataset Report: {name}",
    "## Summary",
    "## Diversity Assessment",
    "## Content-Style Balance",
    "## Quality Issues",
    "## Gate 1 Decision: {decision}",
]


def make_project(settings, painting, kind: LoraType, count: int, name: str = "mira") -> Project:
    """A project whose dataset holds ``count`` different paintings (small: SD 1.5 size)."""
    project = Project.at(settings, name)
    intents.create(project, kind, Family.sd15, "mirastyle")
    for seed in range(count):
        painting(seed, (576, 512)).save(project.dataset_dir / f"p{seed:02d}.jpg", quality=92)
    return project


def caption_all(project: Project, first: str = "mirastyle") -> None:
    for image in project.dataset_dir.glob("*.jpg"):
        image.with_suffix(".txt").write_text(f"{first}, a landscape, layered hills, visible brush strokes\n")


async def snapshot_of(project: Project, settings):
    async with open_store(settings.database_path) as store:
        return await take(project, intents.load(project), settings, store)


def headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#") and not line.startswith("###")]


async def test_uncaptioned_dataset_is_no_go_with_captions_among_the_reasons(settings, painting):
    project = make_project(settings, painting, LoraType.object, 11)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
        gate, path = await write_report(snapshot, curate(snapshot), store)
        stored = await store.gate("mira", 1)
    assert not gate.passed and "images are not captioned yet" in gate.reasons
    text = Path(path).read_text()
    assert headings(text) == [h.format(name="mira", decision="NO-GO") for h in SEED_HEADINGS]
    assert "### If NO-GO:" in text and "### If GO:" not in text
    assert "- Images: 11\n- Captioned: 0/11 (0%)\n- Average resolution: 576×512\n" in text
    assert stored["passed"] is False and stored["fingerprint"] == gate.fingerprint


async def test_captioned_varied_dataset_is_go_and_says_what_it_trains_well(settings, painting):
    project = make_project(settings, painting, LoraType.object, 11)
    caption_all(project)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
        gate, path = await write_report(snapshot, curate(snapshot), store)
    assert gate.passed, gate.reasons
    text = Path(path).read_text()
    assert headings(text)[-1] == "## Gate 1 Decision: GO"
    assert "### If GO:" in text and "Trains well" in text
    assert "- Captioned: 11/11 (100%)" in text


async def test_captions_without_the_trigger_word_first_do_not_count(settings, painting):
    project = make_project(settings, painting, LoraType.object, 11)
    caption_all(project, first="a landscape")
    gate = decide(await snapshot_of(project, settings))
    assert not gate.passed
    assert any("no caption starting with `mirastyle`" in r for r in gate.reasons)


async def test_too_few_pictures_and_unusable_files_block_the_gate(settings, painting):
    project = make_project(settings, painting, LoraType.character, 5)
    (project.dataset_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    caption_all(project)
    gate = decide(await snapshot_of(project, settings))
    assert any("fewer than the 15 a character LoRA needs" in r for r in gate.reasons)
    assert any("can't be used" in r for r in gate.reasons)
    assert any("broken.jpg" in f for f in gate.fixes)


async def test_any_change_to_a_picture_or_caption_changes_the_fingerprint(settings, painting):
    project = make_project(settings, painting, LoraType.object, 3)
    caption_all(project)
    before = (await snapshot_of(project, settings)).fingerprint()
    (project.dataset_dir / "p01.txt").write_text("mirastyle, a different caption")
    after_caption = (await snapshot_of(project, settings)).fingerprint()
    painting(99, (576, 512)).save(project.dataset_dir / "p02.jpg", quality=92)
    after_picture = (await snapshot_of(project, settings)).fingerprint()
    assert len({before, after_caption, after_picture}) == 3


async def test_a_duplicate_blocks_the_gate_until_the_artist_decides(settings, painting):
    project = make_project(settings, painting, LoraType.object, 11)
    variant(painting(3, (576, 512)), "mirrored").save(project.dataset_dir / "p03-flipped.jpg", quality=90)
    caption_all(project)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
        assert [(p.a, p.b) for p in snapshot.unresolved] == [("p03-flipped.jpg", "p03.jpg")]
        gate = decide(snapshot)
        assert not gate.passed and any("waiting for your decision" in r for r in gate.reasons)
        assert any("loratrain resolve mira p03-flipped.jpg p03.jpg --keep a|b|both" in f for f in gate.fixes)
        message = await resolve(snapshot, store, "p03-flipped.jpg", "p03.jpg", "b")
        assert "p03-flipped.jpg is set aside" in message
        after = await take(project, intents.load(project), settings, store)
        gate, path = await write_report(after, curate(after), store)
    assert gate.passed, gate.reasons
    assert sorted(p.name for p in project.excluded_dir.iterdir()) == ["p03-flipped.jpg", "p03-flipped.txt"]
    assert "- Duplicates found: 1 (removed: 1)" in Path(path).read_text()


async def test_keeping_both_of_a_pair_is_remembered_and_moves_nothing(settings, painting):
    project = make_project(settings, painting, LoraType.object, 4)
    painting(2, (576, 512)).resize((400, 356)).save(project.dataset_dir / "p02-small.jpg", quality=90)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
        await resolve(snapshot, store, "p02-small.jpg", "p02.jpg", "both")
    again = await snapshot_of(project, settings)
    assert again.unresolved == [] and len(again.duplicates.pairs) == 1
    assert not project.excluded_dir.exists()


async def test_resolving_a_pair_that_is_not_one_is_a_plain_error(settings, painting):
    from core.errors import UserError

    project = make_project(settings, painting, LoraType.object, 3)
    async with open_store(settings.database_path) as store:
        snapshot = await take(project, intents.load(project), settings, store)
        with pytest.raises(UserError, match="not a duplicate pair"):
            await resolve(snapshot, store, "p00.jpg", "p01.jpg", "a")


async def test_curation_flags_look_alikes_and_picks_a_varied_subset_when_there_are_too_many(settings, painting):
    project = make_project(settings, painting, LoraType.object, 30)
    for i, x in enumerate((0.25, 0.5, 0.75)):  # one scene three times, the subject moved: alike, not duplicates
        painting(500, (576, 512), subject="house", subject_at=(x, 0.45), palette=1).save(
            project.dataset_dir / f"same-scene-{i}.jpg", quality=92
        )
    result = curate(await snapshot_of(project, settings))
    assert result.count == 33
    assert ["same-scene-0.jpg", "same-scene-1.jpg", "same-scene-2.jpg"] in [
        [n for n in group if n.startswith("same-scene")] for group in result.too_alike
    ]
    assert result.subset is not None and len(result.subset) == 30
    kept_alike = [n for n in result.subset if n.startswith("same-scene")]
    assert len(kept_alike) < 3  # the subset drops look-alikes first
    assert set(result.left_out) == {
        f"{n}"
        for n in [f"p{i:02d}.jpg" for i in range(30)] + [f"same-scene-{i}.jpg" for i in range(3)]
        if n not in result.subset
    }
    assert all(re.search(r"very like \S+, which is kept|quality warnings", why) for why in result.left_out.values())
    assert {f.aspect for f in result.findings} == {"subjects and layout", "colour", "lighting", "composition"}
    assert all(f.why for f in result.findings)


async def test_regularization_advice_depends_on_the_type(settings, painting):
    character = curate(await snapshot_of(make_project(settings, painting, LoraType.character, 4, "hero"), settings))
    assert character.regularization and "other examples" in character.regularization_why
    style = curate(await snapshot_of(make_project(settings, painting, LoraType.style, 8, "look"), settings))
    assert not style.regularization and "aren't needed" in style.regularization_why
