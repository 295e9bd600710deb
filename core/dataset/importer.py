"""``loratrain add``: bring the artist's files into a project's dataset folder, safely.

Every file is checked the way an upload is (size limit, sniffed format, full decode) before it is
copied in under a safe name; the name it came with is kept in the store. Exact copies of a picture
already in the project are skipped, and nothing is ever written outside the project folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from core.dataset.audit import inspect_all
from core.dataset.inspect import Inspection, Limits, sha256_of
from core.errors import UserError
from core.grimoire import Project, copy_atomic, inside
from core.settings import Settings
from core.store import Store

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class Imported(BaseModel):
    original: str
    stored: str | None
    status: Literal["added", "already_there", "refused"]
    message: str


def safe_stem(name: str) -> str:
    """A filename stem anyone's tools can handle: ASCII letters, digits, '-' and '_' only."""
    stem = unicodedata.normalize("NFKD", Path(name).stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_.")
    return stem[:60] or "image"


def shown_name(filename: str) -> str:
    """The file's own name as the artist gave it, without any folder (Windows or POSIX separators)."""
    return Path(filename.replace("\\", "/")).name or "upload"


def refuse_size(settings: Settings, filename: str, size: int) -> str | None:
    """The plain refusal for a file over the size limit, or None when it is within it. Adapters ask
    before downloading, so an oversized upload is never fetched."""
    if size <= settings.max_upload_bytes:
        return None
    return (
        f"{shown_name(filename)}: this file is {size / 1e6:.1f} MB, over the {settings.max_upload_mb:g} MB limit. "
        "Export a smaller version (a long side of about 2048 px is plenty for training)."
    )


def _free_name(folder: Path, stem: str, ext: str, sha256: str) -> tuple[str, bool]:
    """The name to store a picture under, and whether it is already there: a run that died between
    copying a file and recording it finds its copy (same content) instead of making a second one."""
    name, n = f"{stem}{ext}", 1
    while (folder / name).exists():
        if sha256_of(folder / name) == sha256:
            return name, True
        n += 1
        name = f"{stem}-{n}{ext}"
    return name, False


def _expand(paths: list[Path]) -> list[tuple[Path, str]]:
    """Files named directly, plus every file inside named folders, with the name to show the artist."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames.sort()
                for filename in sorted(filenames):
                    file = Path(dirpath) / filename
                    found.append((file, file.relative_to(path.parent).as_posix()))
        else:
            found.append((path, path.name))
    return found


async def import_paths(
    project: Project, paths: list[Path], settings: Settings, store: Store, resolution: int
) -> list[Imported]:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"I can't find {', '.join(missing)}. Check the path and try again.")
    files = _expand(paths)
    if len(files) > settings.max_files_per_import:
        raise UserError(
            f"That is {len(files)} files, more than the {settings.max_files_per_import} I take at once. "
            "Import them in smaller batches, or raise LORATRAIN_MAX_FILES_PER_IMPORT."
        )
    results: list[Imported] = []
    checkable: list[tuple[Path, str]] = []
    for path, shown in files:
        size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
        if too_big := refuse_size(settings, shown, size):
            results.append(Imported(original=shown, stored=None, status="refused", message=too_big))
        else:
            checkable.append((path, shown))
    limits = Limits(resolution=resolution, max_pixels=settings.max_image_pixels)
    inspections = await asyncio.to_thread(inspect_all, checkable, limits, settings.workers)
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    for (path, shown), inspection in zip(checkable, inspections, strict=True):
        results.append(await _import_one(project, store, path, shown, inspection))
    return results


async def _import_one(project: Project, store: Store, path: Path, shown: str, inspection: Inspection) -> Imported:
    audit = inspection.audit
    if not audit.ok:
        reason = next(i.message for i in audit.issues if i.severity == "error")
        return Imported(original=shown, stored=None, status="refused", message=reason)
    existing = await store.image_by_sha(project.name, inspection.sha256)
    if existing and (project.dataset_dir / existing).exists():
        return Imported(
            original=shown,
            stored=existing,
            status="already_there",
            message=f"This exact file is already in the project as {existing}; skipped.",
        )
    if existing and (project.excluded_dir / existing).exists():
        return Imported(
            original=shown,
            stored=existing,
            status="already_there",
            message=f"This exact file was set aside earlier as {existing} (you kept its duplicate instead); skipped.",
        )
    if existing:  # the artist deleted it by hand since: import it afresh
        await store.forget_image(project.name, existing)
    name, copied = _free_name(project.dataset_dir, safe_stem(shown), EXTENSIONS[audit.format], inspection.sha256)
    if not copied:
        copy_atomic(path, inside(project.dataset_dir, project.dataset_dir / name))
    await store.add_image(project.name, name, shown, inspection.sha256, path.stat().st_size)
    return Imported(original=shown, stored=name, status="added", message=f"Added as {name}.")
