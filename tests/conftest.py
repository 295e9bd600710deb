"""Shared fixtures: an isolated grimoire per test, a CLI runner, and picture makers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.samples import scene
from core.settings import Settings

torch.set_num_threads(1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(grimoire=tmp_path / "grimoire", workers=1, _env_file=None)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``loratrain ARGS`` against the test's own grimoire; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("LORATRAIN_WORKERS", "1")
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--grimoire", str(tmp_path / "grimoire"), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def jpeg_bytes(img: Image.Image, quality: int = 92, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kwargs)
    return buf.getvalue()


@pytest.fixture
def painting():
    """A small procedural painting by seed (fast: tests don't need full-size pictures)."""

    def make(seed: int, size: tuple[int, int] = (640, 576), **kwargs) -> Image.Image:
        return scene(seed, size, **kwargs)

    return make


def noise_image(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).convert(mode)
