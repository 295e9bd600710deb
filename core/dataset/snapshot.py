"""A project's dataset as it stands: every picture inspected, duplicates with the artist's decisions,
captions read. Curation, the Gate 1 report and duplicate resolution all start from one of these."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.dataset.audit import audit_folder
from core.dataset.duplicates import find_duplicates
from core.dataset.inspect import Inspection, Limits
from core.dataset.models import AuditReport, DuplicatePair, DuplicateReport
from core.errors import UserError
from core.grimoire import Project, inside
from core.intent import Intent
from core.settings import Settings
from core.store import Keep, Store


@dataclass
class Snapshot:
    project: Project
    intent: Intent
    audit: AuditReport
    inspections: dict[str, Inspection]  # by file name in the dataset folder
    duplicates: DuplicateReport
    unresolved: list[DuplicatePair]  # duplicate pairs the artist has not decided about
    decided: int  # duplicate pairs decided so far (their set-aside picture is no longer in the folder)
    excluded: list[str]  # pictures set aside in earlier decisions
    captions: dict[str, str]  # file → caption text, for pictures that have a .txt beside them

    @property
    def usable(self) -> list[str]:
        return [a.file for a in self.audit.images if a.ok]

    def captioned(self) -> list[str]:
        """Usable pictures whose caption starts with the trigger word (the rule Gate 1 enforces: the one in
        ``core.captions.formats.starts_with_trigger``, which the trainers count too)."""
        from core.captions.formats import starts_with_trigger  # here: formats imports this module

        trigger = self.intent.trigger
        return [f for f in self.usable if starts_with_trigger(self.captions.get(f, ""), trigger)]

    def fingerprint(self) -> str:
        """Changes whenever a picture or a caption changes: a Gate 1 result is only valid for one."""
        digest = hashlib.sha256()
        for name in sorted(self.inspections):
            digest.update(f"{name}\0{self.inspections[name].sha256}\0{self.captions.get(name, '')}\n".encode())
        return digest.hexdigest()


def caption_path(image: Path) -> Path:
    return image.with_suffix(".txt")


async def take(project: Project, intent: Intent, settings: Settings, store: Store) -> Snapshot:
    limits = Limits(resolution=intent.resolution, max_pixels=settings.max_image_pixels)
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    audit, inspections = await asyncio.to_thread(audit_folder, project.dataset_dir, limits, settings.workers)
    by_name = {i.audit.file: i for i in inspections}
    duplicates = find_duplicates(inspections)
    unresolved = [
        p
        for p in duplicates.pairs
        if await store.duplicate_decision(project.name, by_name[p.a].sha256, by_name[p.b].sha256) is None
    ]
    captions = {}
    for name in by_name:
        path = caption_path(project.dataset_dir / name)
        if path.is_file():
            captions[name] = path.read_text(encoding="utf-8", errors="replace").strip()
    excluded = (
        sorted(p.name for p in project.excluded_dir.glob("*") if p.suffix != ".txt")
        if project.excluded_dir.is_dir()
        else []
    )
    decided = await store.duplicate_decisions(project.name)
    return Snapshot(project, intent, audit, by_name, duplicates, unresolved, decided, excluded, captions)


async def resolve(snapshot: Snapshot, store: Store, a: str, b: str, keep: Keep) -> str:
    """Record the artist's choice for a duplicate pair of this snapshot (see ``set_aside``)."""
    pair = next((p for p in snapshot.duplicates.pairs if {p.a, p.b} == {a, b}), None)
    if pair is None:
        raise UserError(
            f"{a} and {b} are not a duplicate pair in this project; "
            f"'loratrain dupes {snapshot.project.dataset_dir}' lists the pairs."
        )
    sha_a, sha_b = snapshot.inspections[a].sha256, snapshot.inspections[b].sha256
    return await set_aside(snapshot.project, store, (a, sha_a), (b, sha_b), keep)


async def set_aside(project: Project, store: Store, a: tuple[str, str], b: tuple[str, str], keep: Keep) -> str:
    """Record the artist's choice for a duplicate pair, given as (file, sha256) each; the picture not
    kept (and its caption) moves to ``excluded/`` — set aside, never deleted. Returns a plain sentence."""
    await store.decide_duplicate(project.name, a[1], b[1], keep)
    if keep == "both":
        return f"Keeping both {a[0]} and {b[0]}."
    kept, dropped = (a[0], b[0]) if keep == "a" else (b[0], a[0])
    project.excluded_dir.mkdir(parents=True, exist_ok=True)
    for source in (project.dataset_dir / dropped, caption_path(project.dataset_dir / dropped)):
        if source.exists():
            shutil.move(inside(project.root, source), inside(project.root, project.excluded_dir / source.name))
    return f"Keeping {kept}; {dropped} is set aside in excluded/ (nothing is deleted)."
