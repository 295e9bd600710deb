"""The per-file audit against everything an artist might upload by mistake, or an attacker on purpose:
each file gets a clear, plain message and nothing crashes."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.dataset.audit import audit_folder
from core.dataset.inspect import Inspection, Limits, inspect_file
from core.dataset.models import ImageAudit, Issue
from core.samples import scene
from tests.conftest import jpeg_bytes

# Small pictures are enough: the model's training size is set to 256 px so nothing is "too small"
# unless a test means it to be.
LIMITS = Limits(resolution=256, max_pixels=Image.MAX_IMAGE_PIXELS)
EXCEPTION_TEXT = ("Traceback", "Error", "Exception", "errno", "Errno", "PIL", "<class", "\n")
_EXIF_ORIENTATION = 0x0112


# --- making files -------------------------------------------------------------------------------


@cache
def picture(size: tuple[int, int] = (400, 300), seed: int = 1) -> Image.Image:
    return scene(seed, size)


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge 8-bit RGB picture: a classic decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage_after(header: bytes, total: int) -> bytes:
    body = b"garbage!" * ((total - len(header)) // 8)
    return header + body


def jpeg_headers_then_garbage() -> bytes:
    """A JPEG whose headers (quantisation, frame, Huffman tables) are intact up to the scan, then garbage."""
    data = jpeg_bytes(picture())
    return garbage_after(data[: data.index(b"\xff\xda")], len(data))


def sixteen_bit_grey() -> bytes:
    grey = np.asarray(picture().convert("L"), dtype=np.uint16) * 257
    return png_bytes(Image.fromarray(grey))


def with_transparency() -> bytes:
    rgba = np.asarray(picture().convert("RGBA")).copy()
    rgba[:120, :160, 3] = 0  # a see-through corner
    return png_bytes(Image.fromarray(rgba, "RGBA"))


def palette_with_transparent_index() -> bytes:
    pal = picture().convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    return png_bytes(pal, transparency=pal.info["transparency"])


def animated_gif(frames: int = 3, size: tuple[int, int] = (300, 260)) -> bytes:
    images = [scene(seed, size).convert("P") for seed in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()


def rotated_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    return jpeg_bytes(picture((400, 300)), exif=exif.tobytes())


# --- checking results ---------------------------------------------------------------------------


def inspect_bytes(folder: Path, name: str, data: bytes, limits: Limits = LIMITS) -> Inspection:
    path = folder / name
    path.write_bytes(data)
    return inspect_file(path, name, limits)


def audit_bytes(folder: Path, name: str, data: bytes, limits: Limits = LIMITS) -> ImageAudit:
    return inspect_bytes(folder, name, data, limits).audit


def assert_plain_sentence(message: str) -> None:
    assert message.strip(), "empty message"
    assert message[0].isupper() and message.rstrip().endswith((".", ")")), message
    for text in EXCEPTION_TEXT:
        assert text not in message, f"{text!r} in {message!r}"


def assert_well_formed(audit: ImageAudit) -> None:
    """``ok`` is false exactly when an error is present, and every message reads as a plain sentence."""
    assert audit.ok == (not any(i.severity == "error" for i in audit.issues))
    for issue in audit.issues:
        assert_plain_sentence(issue.message)


def the_issue(audit: ImageAudit, code: str) -> Issue:
    found = [i for i in audit.issues if i.code == code]
    assert len(found) == 1, f"expected one {code!r} in {audit.issues}"
    return found[0]


def codes(audit: ImageAudit) -> set[str]:
    return {i.code for i in audit.issues}


# --- files that can't be used: errors -----------------------------------------------------------

REFUSED = [
    # name, contents, code, words the message must contain
    pytest.param("empty.jpg", lambda: b"", "not_an_image", "empty", id="zero-byte file"),
    pytest.param(
        "notes.jpg",
        lambda: b"my shopping list: eggs, milk\n" * 20,
        "not_an_image",
        "text file",
        id="text file named .jpg",
    ),
    pytest.param(
        "drawing.png",
        lambda: (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/'
            b'2000/svg" width="400" height="300"><circle cx="50" cy="50" r="40"/></svg>\n'
        ),
        "unsupported_format",
        "SVG",
        id="SVG with XML prolog named .png",
    ),
    pytest.param(
        "logo.png",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="10" height="10"/></svg>',
        "unsupported_format",
        "SVG",
        id="bare SVG named .png",
    ),
    pytest.param(
        "IMG_0001.jpg",
        lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 2000,
        "unsupported_format",
        "HEIC",
        id="HEIC photo",
    ),
    pytest.param(
        "layers.png",
        lambda: b"8BPS" + b"\x00\x01" + b"\x00" * 2000,
        "unsupported_format",
        "PSD",
        id="Photoshop document",
    ),
    pytest.param("half.jpg", lambda: half(jpeg_bytes(picture())), "truncated", "cut off", id="JPEG cut at half"),
    pytest.param(
        "half-progressive.jpg",
        lambda: half(jpeg_bytes(picture(), progressive=True)),
        "truncated",
        "cut off",
        id="progressive JPEG cut at half",
    ),
    pytest.param("half.png", lambda: half(png_bytes(picture())), "truncated", "cut off", id="PNG cut at half"),
    pytest.param(
        "damaged.jpg",
        lambda: garbage_after(jpeg_bytes(picture())[:20], 40_000),
        "corrupt",
        "damaged",
        id="JPEG header then garbage",
    ),
    pytest.param(
        "scrambled.jpg", jpeg_headers_then_garbage, "corrupt", "damaged", id="JPEG tables intact then garbage scan"
    ),
]


@pytest.mark.parametrize(("name", "make", "code", "words"), REFUSED)
def test_unusable_files_are_refused_with_a_plain_message(tmp_path, name, make, code, words):
    result = inspect_bytes(tmp_path, name, make())
    audit = result.audit
    issue = the_issue(audit, code)
    assert issue.severity == "error"
    assert audit.ok is False
    assert words in issue.message
    assert_well_formed(audit)
    # Nothing was taken from a file that could not be read.
    assert (audit.width, audit.height) == (None, None)
    assert result.phash is None and result.thumb is None


def test_truncated_jpeg_passes_pillow_verify_but_is_still_caught(tmp_path):
    data = half(jpeg_bytes(picture()))
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # Pillow's structural check alone is satisfied
    audit = audit_bytes(tmp_path, "half.jpg", data)
    assert codes(audit) == {"truncated"}


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    data = png_claiming(30_000, 30_000)
    assert len(data) < 200
    audit = audit_bytes(tmp_path, "bomb.png", data)
    issue = the_issue(audit, "decompression_bomb")
    assert issue.severity == "error" and audit.ok is False
    assert audit.width is None and audit.height is None
    assert_well_formed(audit)


def test_a_header_in_pillows_warning_zone_is_refused_as_a_bomb(tmp_path):
    # 100 Mpx: above Pillow's warning threshold (~89 Mpx) but below its hard limit (~179 Mpx).
    audit = audit_bytes(tmp_path, "big.png", png_claiming(10_000, 10_000))
    assert the_issue(audit, "decompression_bomb").severity == "error"
    assert audit.ok is False
    assert_well_formed(audit)


def test_a_real_picture_over_our_pixel_limit_is_refused_as_a_bomb(tmp_path):
    # Well under Pillow's own limits, so only our Limits.max_pixels can catch it.
    limits = Limits(resolution=256, max_pixels=1_000_000)
    audit = audit_bytes(tmp_path, "large.png", png_bytes(picture((1200, 1000))), limits)
    issue = the_issue(audit, "decompression_bomb")
    assert issue.severity == "error" and audit.ok is False
    assert "1200×1000" in issue.message
    assert_well_formed(audit)


def test_the_bomb_message_does_not_contradict_itself(tmp_path):
    """A 1.2-megapixel picture refused for exceeding a 1-megapixel limit must not be described as
    '1 megapixels, beyond the 1 megapixel safety limit'."""
    limits = Limits(resolution=256, max_pixels=1_000_000)
    message = the_issue(
        audit_bytes(tmp_path, "large.png", png_bytes(picture((1200, 1000))), limits), "decompression_bomb"
    ).message
    claimed, limit = (float(n) for n in re.findall(r"([\d.]+) megapixel", message))
    assert claimed > limit, message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_damaged_files_of_every_decodable_format_never_crash(tmp_path, fmt):
    buf = io.BytesIO()
    picture((160, 120)).save(buf, fmt)
    data = buf.getvalue()
    rng = np.random.default_rng(7)
    damaged = [data[:cut] for cut in (8, 16, 40, len(data) // 3, len(data) * 2 // 3, len(data) - 20)]
    for _ in range(8):
        flipped = bytearray(data)
        for at in rng.integers(8, len(data), 12):
            flipped[at] ^= 0xFF
        damaged.append(bytes(flipped))
    for n, contents in enumerate(damaged):
        audit = audit_bytes(tmp_path, f"damaged-{n}.{fmt.lower()}", contents)
        assert_well_formed(audit)
        if n < 5:  # cut well before the end: never passes as a usable picture
            assert audit.ok is False, (n, audit.issues)


# --- files that can be used, with something to know: warnings and notes ------------------------

WARNED = [
    # name, contents, code, mode Pillow reports
    pytest.param("print.jpg", lambda: jpeg_bytes(picture().convert("CMYK")), "color_mode", "CMYK", id="CMYK JPEG"),
    pytest.param("scan16.png", sixteen_bit_grey, "color_mode", "I;16", id="16-bit grayscale PNG"),
    pytest.param("palette.png", lambda: png_bytes(picture().convert("P")), "color_mode", "P", id="palette PNG"),
    pytest.param("grey.png", lambda: png_bytes(picture().convert("L")), "color_mode", "L", id="grayscale PNG"),
    pytest.param("grey.jpg", lambda: jpeg_bytes(picture().convert("L")), "color_mode", "L", id="grayscale JPEG"),
    pytest.param("sticker.png", with_transparency, "alpha", "RGBA", id="RGBA with transparency"),
    pytest.param("cutout.png", palette_with_transparent_index, "alpha", "P", id="palette with transparent colour"),
    pytest.param(
        "panorama.jpg", lambda: jpeg_bytes(scene(2, (3000, 600))), "extreme_aspect", "RGB", id="3000x600 panorama"
    ),
    pytest.param("banner.png", lambda: png_bytes(picture((300, 900))), "extreme_aspect", "RGB", id="tall banner"),
    pytest.param(
        "crunchy.jpg", lambda: jpeg_bytes(picture(), quality=15), "low_quality_jpeg", "RGB", id="JPEG quality 15"
    ),
    pytest.param("thumb.jpg", lambda: jpeg_bytes(picture((200, 150))), "too_small", "RGB", id="too small"),
]


@pytest.mark.parametrize(("name", "make", "code", "mode"), WARNED)
def test_usable_files_with_a_problem_get_a_warning(tmp_path, name, make, code, mode):
    result = inspect_bytes(tmp_path, name, make())
    audit = result.audit
    assert the_issue(audit, code).severity == "warning"
    assert audit.ok is True
    assert audit.mode == mode
    assert audit.width and audit.height
    assert result.phash is not None and result.thumb.shape == (64, 64, 3)
    assert_well_formed(audit)


def test_extreme_aspect_message_names_the_shape(tmp_path):
    audit = audit_bytes(tmp_path, "panorama.jpg", jpeg_bytes(scene(2, (3000, 600))))
    assert (audit.width, audit.height) == (3000, 600)
    assert "very wide (5.0 : 1)" in the_issue(audit, "extreme_aspect").message


def test_a_fully_opaque_rgba_png_has_no_alpha_warning(tmp_path):
    audit = audit_bytes(tmp_path, "opaque.png", png_bytes(picture().convert("RGBA")))
    assert audit.mode == "RGBA"
    assert audit.ok is True and audit.issues == []


def test_a_well_exported_jpeg_is_not_called_low_quality(tmp_path):
    audit = audit_bytes(tmp_path, "clean.jpg", jpeg_bytes(picture(), quality=92))
    assert audit.ok is True and audit.issues == []


def test_an_animated_gif_is_flagged_and_measured(tmp_path):
    audit = audit_bytes(tmp_path, "dance.gif", animated_gif(frames=3, size=(300, 260)))
    issue = the_issue(audit, "animated")
    assert issue.severity == "warning" and "3 frames" in issue.message
    assert audit.ok is True
    assert (audit.width, audit.height, audit.format) == (300, 260, "GIF")
    assert_well_formed(audit)


@pytest.mark.parametrize(("orientation", "upright"), [(6, (300, 400)), (8, (300, 400)), (3, (400, 300))])
def test_an_exif_rotated_photo_is_a_note_and_measured_upright(tmp_path, orientation, upright):
    result = inspect_bytes(tmp_path, "phone.jpg", rotated_jpeg(orientation))
    audit = result.audit
    assert the_issue(audit, "exif_rotated").severity == "info"
    assert audit.ok is True
    assert (audit.width, audit.height) == upright
    assert codes(audit) == {"exif_rotated"}
    assert_well_formed(audit)


def test_a_photo_without_rotation_has_no_note(tmp_path):
    audit = audit_bytes(tmp_path, "phone.jpg", rotated_jpeg(1))
    assert audit.issues == [] and (audit.width, audit.height) == (400, 300)


# --- folders ------------------------------------------------------------------------------------


def audited(folder: Path) -> dict[str, ImageAudit]:
    report, _ = audit_folder(folder, LIMITS, workers=1)
    return {a.file: a for a in report.images}


def test_a_symlink_is_not_followed_or_decoded(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.jpg").write_bytes(jpeg_bytes(picture()))
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "link.jpg").symlink_to(outside / "real.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    found = audited(folder)
    assert set(found) == {"link.jpg", "dangling.jpg"}
    for audit in found.values():
        assert codes(audit) == {"not_an_image"}
        assert audit.ok is False and audit.format is None and audit.width is None
        assert "link" in the_issue(audit, "not_an_image").message
        assert_well_formed(audit)


def test_odd_file_names_are_audited_under_their_relative_names(tmp_path):
    names = ["my holiday pic.jpg", "café été.jpg", ".hidden.jpg", "sub folder/ünïcode ☀.jpg"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(jpeg_bytes(picture()))
    found = audited(tmp_path)
    assert set(found) == set(names)
    for audit in found.values():
        assert audit.ok is True and audit.issues == [] and (audit.width, audit.height) == (400, 300)


def test_a_caption_beside_its_image_is_not_a_file_but_a_stray_text_is(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(jpeg_bytes(picture()))
    (tmp_path / "cat.txt").write_text("a cat sitting on a windowsill", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("remember to ask about the style", encoding="utf-8")
    found = audited(tmp_path)
    assert set(found) == {"cat.jpg", "notes.txt"}
    assert found["cat.jpg"].ok is True
    stray = found["notes.txt"]
    assert codes(stray) == {"not_an_image"} and stray.ok is False
    assert "text file" in the_issue(stray, "not_an_image").message


# --- through the CLI ----------------------------------------------------------------------------

PROBLEM_FOLDER = {
    "good.jpg": lambda: jpeg_bytes(picture((640, 576))),
    "café été.jpg": lambda: jpeg_bytes(picture((576, 640), seed=2)),
    "empty.jpg": lambda: b"",
    "half.jpg": lambda: half(jpeg_bytes(picture())),
    "drawing.png": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "grey.png": lambda: png_bytes(picture().convert("L")),
    "phone.jpg": lambda: rotated_jpeg(6),
}


@pytest.fixture
def problem_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "upload"
    folder.mkdir()
    for name, make in PROBLEM_FOLDER.items():
        (folder / name).write_bytes(make())
    return folder


def test_audit_json_has_the_documented_shape(cli, problem_folder):
    code, out, err = cli("audit", str(problem_folder), "--model-family", "sd15", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"images", "summary"}
    assert sorted(a["file"] for a in report["images"]) == sorted(PROBLEM_FOLDER)
    for image in report["images"]:
        assert set(image) == {"file", "ok", "width", "height", "format", "mode", "issues"}
        for issue in image["issues"]:
            assert set(issue) == {"code", "severity", "message"}
            assert_plain_sentence(issue["message"])
        assert image["ok"] == (not any(i["severity"] == "error" for i in image["issues"]))


def test_audit_json_summary_matches_the_images(cli, problem_folder):
    report = json.loads(cli("audit", str(problem_folder), "--model-family", "sd15", "--json")[1])
    images, summary = report["images"], report["summary"]
    usable = [a for a in images if a["ok"]]
    assert summary["total"] == len(images) == 7
    assert summary["usable"] == len(usable) == 4
    assert summary["unusable"] == 3
    assert summary["warnings"] == sum(any(i["severity"] == "warning" for i in a["issues"]) for a in images)
    assert summary["by_code"] == dict(Counter(i["code"] for a in images for i in a["issues"]))
    assert summary["by_code"]["not_an_image"] == 1 and summary["by_code"]["truncated"] == 1
    assert summary["by_code"]["unsupported_format"] == 1 and summary["by_code"]["exif_rotated"] == 1
    avg_w = round(sum(a["width"] for a in usable) / len(usable))
    avg_h = round(sum(a["height"] for a in usable) / len(usable))
    assert (summary["average_width"], summary["average_height"]) == (avg_w, avg_h)
    assert summary["average_resolution"] == f"{avg_w}×{avg_h}"
    assert summary["formats"] == dict(Counter(a["format"] for a in images if a["format"]))
    assert summary["formats"] == {"JPEG": 4, "PNG": 1}
    assert sum(summary["aspect_buckets"].values()) == len(usable)
    assert all(re.fullmatch(r"\d+×\d+", bucket) for bucket in summary["aspect_buckets"])


def test_audit_plain_output_names_the_problem_files(cli, problem_folder):
    code, out, err = cli("audit", str(problem_folder), "--model-family", "sd15")
    assert code == 0, err
    assert out.startswith("Got 7 files.")
    lines = out.splitlines()
    for name, what in [
        ("empty.jpg", "(empty, text or another kind of file)"),
        ("half.jpg", "cut off"),
        ("drawing.png", "format training tools can't read"),
        ("grey.png", "8-bit colour"),
        ("phone.jpg", "rotated"),
    ]:
        assert any(f"`{name}`" in line and what in line for line in lines), f"{name} / {what!r} not in:\n{out}"
    assert "Traceback" not in out + err


@pytest.mark.parametrize("where", ["missing", "a-file.jpg"])
def test_auditing_something_that_is_not_a_folder_is_a_plain_error(cli, tmp_path, where):
    (tmp_path / "a-file.jpg").write_bytes(jpeg_bytes(picture()))
    target = tmp_path / where
    code, out, err = cli("audit", str(target))
    assert code == 2
    assert out == ""
    assert err.startswith("loratrain: I can't find a folder at")
    assert str(target) in err
    assert "Traceback" not in err and "Error" not in err
