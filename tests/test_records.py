"""Records: names, settings, the grimoire's atomic files, intent.md and the SQLite store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core import intent as intents
from core.errors import UserError
from core.families import Family
from core.grimoire import Project, inside, write_atomic
from core.intent import Intent, LoraType
from core.names import check_project_name, check_trigger_word, suggest_trigger_word
from core.settings import Settings
from core.store import MIGRATIONS, open_store


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "..", "x", "UPPER", "with space", "-dash", "a" * 49, ""])
def test_unsafe_project_names_are_refused_in_plain_words(name):
    with pytest.raises(UserError) as err:
        check_project_name(name)
    assert "project name" in str(err.value).lower() or "name" in str(err.value).lower()


@pytest.mark.parametrize("name", ["mira-style", "ab", "char_01"])
def test_ordinary_project_names_pass(name):
    assert check_project_name(name) == name


@pytest.mark.parametrize("word", ["has space", "comma,word", "ab", "Caps", "a" * 33, "dash-word", ""])
def test_trigger_words_must_be_one_safe_token(word):
    with pytest.raises(UserError):
        check_trigger_word(word)


def test_suggested_trigger_word_is_itself_valid():
    assert check_trigger_word(suggest_trigger_word("Mira Style!")) == "mirastyle"
    assert check_trigger_word(suggest_trigger_word("forest")) == "forest_lt"


def test_settings_come_from_prefixed_environment_and_hide_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("LORATRAIN_GRIMOIRE", str(tmp_path / "g"))
    monkeypatch.setenv("LORATRAIN_MAX_UPLOAD_MB", "7")
    monkeypatch.setenv("LORATRAIN_DISCORD_TOKEN", "very-secret-token")
    s = Settings(_env_file=None)
    assert s.grimoire == tmp_path / "g"
    assert s.max_upload_bytes == 7 * 1024 * 1024
    assert s.database_path == tmp_path / "g" / ".loratrain.sqlite3"
    assert s.discord_token.get_secret_value() == "very-secret-token"
    assert "very-secret-token" not in repr(s) and "very-secret-token" not in s.model_dump_json()


def test_atomic_write_replaces_whole_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "report.md"
    write_atomic(path, "first\n")
    write_atomic(path, "second ünïcode\n")
    assert path.read_text(encoding="utf-8") == "second ünïcode\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    write_atomic(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("core.grimoire.os.replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_project_paths_cannot_escape_the_project(settings):
    project = Project.at(settings, "mira")
    with pytest.raises(UserError):
        project.path("../other/intent.md")
    with pytest.raises(UserError):
        inside(project.root, project.root / ".." / "x")
    with pytest.raises(ValueError):
        project.write("notes.txt", "only the seed's files are written through here")


def test_intent_is_written_in_the_seed_format_and_read_back(settings):
    project = Project.at(settings, "mira-style")
    intents.create(project, LoraType.style, Family.pony, "mirastyle", "My gouache\nlandscapes")
    text = project.read("intent.md")
    assert text.splitlines() == [
        "# Training Intent: mira-style",
        "- **Type**: style",
        "- **Base model**: Pony Diffusion V6 XL (pony)",
        "- **Description**: My gouache landscapes",
        "- **Dataset target**: 20–100 images (varied subjects painted with the same technique, so the "
        "technique is what repeats)",
        "- **Trigger word**: mirastyle",
        "- **Content-style notes**: " + intents.CONTENT_STYLE_NOTES[LoraType.style],
    ]
    again = intents.load(project)
    assert again == Intent(
        name="mira-style", type="style", family="pony", trigger="mirastyle", description="My gouache landscapes"
    )
    assert again.resolution == 1024


@pytest.mark.parametrize("kind,target", [("character", "15–40"), ("style", "20–100"), ("object", "10–30")])
def test_dataset_targets_by_type(settings, kind, target):
    project = Project.at(settings, f"p-{kind}")
    intents.create(project, LoraType(kind), Family.sd15, "trig_word")
    assert f"- **Dataset target**: {target} images" in project.read("intent.md")
    assert intents.load(project).resolution == 512


def test_a_project_is_never_overwritten(settings):
    project = Project.at(settings, "mira")
    intents.create(project, LoraType.object, Family.sdxl, "mirapot")
    with pytest.raises(UserError, match="already exists"):
        intents.create(project, LoraType.style, Family.sdxl, "other")
    assert "mirapot" in project.read("intent.md")


def test_a_damaged_intent_file_gets_a_plain_error(settings):
    project = Project.at(settings, "mira")
    intents.create(project, LoraType.object, Family.sdxl, "mirapot")
    project.path("intent.md").write_text("# Training Intent: mira\n- **Type**: banana\n")
    with pytest.raises(UserError, match="intent.md"):
        intents.load(project)


async def test_store_migrates_a_new_database_and_reopens_without_redoing_it(tmp_path: Path):
    db = tmp_path / "state.sqlite3"
    async with open_store(db) as store:
        await store.add_image("p", "a.jpg", "My A.jpg", "sha-a", 10)
        assert await store.migrate() == len(MIGRATIONS)
    async with open_store(db) as store:
        assert await store.original_names("p") == {"a.jpg": "My A.jpg"}
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_store_upgrades_an_old_database_in_place(tmp_path: Path):
    db = tmp_path / "old.sqlite3"
    with sqlite3.connect(db) as raw:  # a database made by the first release: migration 1 only
        raw.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
        raw.execute("INSERT INTO images VALUES ('p', 'a.jpg', 'a.jpg', 'sha', 1, 'then')")
    async with open_store(db) as store:
        await store.record_gate("p", 1, False, "fp", {"reasons": ["x"]})
        assert (await store.gate("p", 1))["details"] == {"reasons": ["x"]}
        assert await store.image_by_sha("p", "sha") == "a.jpg"


async def test_duplicate_decisions_read_the_same_whichever_way_round(tmp_path: Path):
    async with open_store(tmp_path / "s.sqlite3") as store:
        await store.decide_duplicate("p", "zzz", "aaa", "a")  # keep "zzz"
        assert await store.duplicate_decision("p", "zzz", "aaa") == "a"
        assert await store.duplicate_decision("p", "aaa", "zzz") == "b"
        assert await store.duplicate_decision("p", "aaa", "other") is None
        assert await store.duplicate_decisions("p") == 1
        await store.forget_project("p")
        assert await store.duplicate_decisions("p") == 0


def test_the_readme_lists_every_setting_as_the_code_defines_it():
    from core.settings import reference_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert reference_table() in readme
