"""``loratrain add``: safe names, originals recorded, copies skipped, bad files refused, nothing
written outside the project."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from core.dataset.importer import safe_stem
from core.settings import Settings
from core.store import open_store
from tests.conftest import jpeg_bytes


@pytest.fixture
def project(cli):
    assert cli("new", "mira", "--type", "object", "--model", "sd15", "--trigger", "mirapot")[0] == 0
    return "mira"


def dataset(tmp_path: Path) -> Path:
    return tmp_path / "grimoire" / "training" / "mira" / "dataset"


@pytest.mark.parametrize(
    "given,safe",
    [
        ("Café été.JPG", "cafe-ete"),
        ("my picture (final) v2.png", "my-picture-final-v2"),
        ("../../etc/passwd.jpg", "passwd"),
        ("..jpg", "image"),
        ("日本語.png", "image"),
        (".hidden.jpg", "hidden"),
    ],
)
def test_safe_stems(given, safe):
    assert safe_stem(given) == safe


def test_add_imports_under_safe_names_and_records_the_originals(cli, project, tmp_path, painting):
    src = tmp_path / "from artist"
    src.mkdir()
    (src / "Café été.jpg").write_bytes(jpeg_bytes(painting(1)))
    (src / "Café été.png").write_bytes(jpeg_bytes(painting(2)))  # a JPEG with the wrong extension
    (src / ".hidden one.jpg").write_bytes(jpeg_bytes(painting(3)))
    code, out, _ = cli("add", project, str(src))
    assert code == 0
    assert sorted(p.name for p in dataset(tmp_path).iterdir()) == ["cafe-ete-2.jpg", "cafe-ete.jpg", "hidden-one.jpg"]
    assert "Added 3 of 3" in out

    async def originals():
        settings = Settings(grimoire=tmp_path / "grimoire", _env_file=None)
        async with open_store(settings.database_path) as store:
            return await store.original_names("mira")

    assert sorted(asyncio.run(originals()).values()) == [
        "from artist/.hidden one.jpg",
        "from artist/Café été.jpg",
        "from artist/Café été.png",
    ]


def test_exact_copies_are_skipped_even_under_another_name(cli, project, tmp_path, painting):
    data = jpeg_bytes(painting(1))
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "copy of a.jpg").write_bytes(data)
    code, out, _ = cli("add", project, str(tmp_path / "a.jpg"), str(tmp_path / "copy of a.jpg"))
    assert code == 0
    assert [p.name for p in dataset(tmp_path).iterdir()] == ["a.jpg"]
    assert "already in the project as a.jpg" in out
    cli("add", project, str(tmp_path / "a.jpg"))
    assert [p.name for p in dataset(tmp_path).iterdir()] == ["a.jpg"]


def test_files_that_are_not_usable_pictures_are_refused_with_reasons(cli, project, tmp_path, painting):
    whole = jpeg_bytes(painting(1))
    (tmp_path / "notes.jpg").write_text("not a picture")
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "drawing.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    names = ("notes.jpg", "cut.jpg", "empty.png", "drawing.png")
    code, out, _ = cli("add", project, *(str(tmp_path / n) for n in names))
    assert code == 0
    assert not any(dataset(tmp_path).iterdir())
    assert "text file" in out and "cut off partway" in out and "empty" in out and "SVG" in out
    assert "Added 0 of 4" in out


def test_oversized_files_are_refused_before_decoding(cli, project, tmp_path, painting, monkeypatch):
    monkeypatch.setenv("LORATRAIN_MAX_UPLOAD_MB", "0.01")
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(painting(1)))
    code, out, _ = cli("add", project, str(tmp_path / "big.jpg"))
    assert code == 0 and "over the 0.01 MB limit" in out
    assert not any(dataset(tmp_path).iterdir())


def test_links_are_not_followed_out_of_the_artists_folder(cli, project, tmp_path, painting):
    secret = tmp_path / "outside.jpg"
    secret.write_bytes(jpeg_bytes(painting(5)))
    folder = tmp_path / "upload"
    folder.mkdir()
    os.symlink(secret, folder / "innocent.jpg")
    code, out, _ = cli("add", project, str(folder))
    assert code == 0 and "link" in out
    assert not any(dataset(tmp_path).iterdir())


def test_missing_paths_and_unknown_projects_are_plain_errors(cli, project, tmp_path):
    code, _, err = cli("add", project, str(tmp_path / "nowhere"))
    assert code == 2 and "can't find" in err
    code, _, err = cli("add", "nobody", str(tmp_path))
    assert code == 2 and "no training project called 'nobody'" in err
    code, _, err = cli("add", "../x", str(tmp_path))
    assert code == 2 and "slash" in err


def test_an_import_cut_short_after_copying_does_not_copy_twice(cli, project, tmp_path, painting):
    data = jpeg_bytes(painting(1))
    (tmp_path / "pot.jpg").write_bytes(data)
    dataset(tmp_path).mkdir(parents=True, exist_ok=True)
    (dataset(tmp_path) / "pot.jpg").write_bytes(data)  # copied, then the process died before recording it
    code, out, _ = cli("add", project, str(tmp_path / "pot.jpg"))
    assert code == 0 and "Added as pot.jpg." in out
    assert [p.name for p in dataset(tmp_path).iterdir()] == ["pot.jpg"]
    cli("add", project, str(tmp_path / "pot.jpg"))
    assert [p.name for p in dataset(tmp_path).iterdir()] == ["pot.jpg"]
