"""The grimoire: the artist-visible Markdown record under ``grimoire/``.

``Project`` gives the paths of one training project (``grimoire/training/{name}/``) and reads and
writes its files atomically (temp file, fsync, rename), so a crash never leaves half a report.
Every path it hands out is checked to stay inside the project folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import UserError
from core.names import check_project_name
from core.settings import Settings

# The project files the seed names; only these may be written through ``Project.write``.
PROJECT_FILES = (
    "intent.md",
    "dataset-report.md",
    "config.md",
    "environment.md",
    "progress.md",
    "eval.md",
    "status.md",
)


def _atomically(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write a temp file beside ``path`` with ``fill``, then rename it over ``path``: readers see the
    old file or the new one, never half of one, even if the process dies midway."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8)."""
    _atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``."""
    _atomically(path, lambda f: f.write(data))


def copy_atomic(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path``."""
    with source.open("rb") as src:
        _atomically(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def inside(root: Path, path: Path) -> Path:
    """Return ``path`` resolved, refusing anything that escapes ``root`` (``..``, symlinks)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(f"Refusing to touch {path.name!r}: it lies outside the project folder.")
    return resolved


@dataclass(frozen=True)
class Project:
    """One training project's folder and files."""

    name: str
    root: Path

    @classmethod
    def at(cls, settings: Settings, name: str) -> Project:
        check_project_name(name)
        return cls(name, settings.training_root / name)

    @classmethod
    def existing(cls, settings: Settings, name: str) -> Project:
        project = cls.at(settings, name)
        if not (project.root / "intent.md").is_file():
            raise UserError(
                f"There is no training project called {name!r} yet. "
                f"Start one with: loratrain new {name} --type style --model sdxl --trigger WORD"
            )
        return project

    @property
    def dataset_dir(self) -> Path:
        """The images the LoRA will learn from, with their ``.txt`` captions beside them."""
        return self.root / "dataset"

    @property
    def excluded_dir(self) -> Path:
        """Images the artist set aside (a duplicate they chose not to keep): moved, never deleted."""
        return self.root / "excluded"

    def checkpoints(self) -> list[Path]:
        """The LoRA files a run kept in ``checkpoints/`` (the trainers' own subfolders too), oldest first;
        not the saved training state beside them (``state/``, kohya's ``*-state/``), which is no LoRA."""
        folder = self.root / "checkpoints"
        found = folder.rglob("*.safetensors") if folder.is_dir() else []
        loras = [p for p in found if not any(part == "state" or part.endswith("-state") or part.startswith(".")
                                             for part in p.relative_to(folder).parts[:-1])]  # fmt: skip
        return sorted(loras, key=lambda p: p.stat().st_mtime)

    def path(self, filename: str) -> Path:
        return inside(self.root, self.root / filename)

    def exists(self, filename: str) -> bool:
        return self.path(filename).is_file()

    def read(self, filename: str) -> str:
        return self.path(filename).read_text(encoding="utf-8")

    def write(self, filename: str, text: str) -> Path:
        if filename not in PROJECT_FILES:
            raise ValueError(f"{filename} is not one of the grimoire's project files")
        path = self.path(filename)
        write_atomic(path, text)
        return path
