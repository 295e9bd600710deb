"""Shared fixtures: an isolated grimoire per test, a CLI runner, and picture makers."""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from core.cli import main
from core.cloud import run as cloud_run
from core.cloud.ssh import ensure_key
from core.grimoire import Project
from core.samples import scene
from core.settings import Settings
from core.store import open_store
from core.training.readiness import current_fingerprints
from core.training.tiny import build_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port for the whole test run (never the machine's own
    Redis, whose data belongs to someone else). Yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A clean Redis database for one test."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    yield f"{redis_server}/0"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(grimoire=tmp_path / "grimoire", workers=1, anthropic_api_key=None, _env_file=None)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run ``loratrain ARGS`` against the test's own grimoire; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("LORATRAIN_WORKERS", "1")
    for key in ("ANTHROPIC_API_KEY", "LORATRAIN_ANTHROPIC_API_KEY"):  # tests never reach the real API
        monkeypatch.delenv(key, raising=False)
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


# Training projects ---------------------------------------------------------------------------------

STANDINS = Path(__file__).parent / "data" / "standins"


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd15", "sd15")


def make_project(cli, tmp_path, painting) -> Path:
    """A captioned 10-picture object project whose Gate 1 has passed."""
    assert cli("new", "pots", "--type", "object", "--model", "sd15", "--trigger", "potobj")[0] == 0
    dataset = tmp_path / "grimoire" / "training" / "pots" / "dataset"
    for seed in range(10):
        painting(seed, (192, 160)).save(dataset / f"pot{seed}.jpg", quality=90)
        (dataset / f"pot{seed}.txt").write_text(f"potobj, a teapot, picture {seed}\n")
    assert cli("report", "pots")[0] == 0
    return dataset


def machine_passes(settings, name: str = "pots") -> None:
    """Record Gate 3 as passed on this machine as it is now, standing in for a machine with a GPU (for the
    stand-in trainers, whose model is no file here, so the real check would ask for a GPU)."""

    async def record() -> None:
        project = Project.existing(settings, name)
        async with open_store(settings.database_path) as store:
            fingerprint = (await current_fingerprints(settings, project, store))[3]
            await store.record_gate(name, 3, True, fingerprint, {"summary": "recorded by the test", "gpu": "Test GPU",
                                                                 "vram_gb": 24.0})  # fmt: skip

    asyncio.run(record())


@pytest.fixture
def configured(cli, tmp_path, painting, tiny_sd15, settings) -> Project:
    """Gate 1 passed and built-in settings chosen on the tiny model (6 passes, a checkpoint after the 5th)."""
    make_project(cli, tmp_path, painting)
    code, _, err = cli("config", "pots", "--backend", "builtin", "--model", str(tiny_sd15), "--resolution", "512",
                       "--optimizer", "adamw", "--available", "24", "--batch", "5", "--epochs", "6",
                       "--repeats", "1", "--preset", "quick")  # fmt: skip
    assert code == 0, err
    return Project.existing(settings, "pots")


@pytest.fixture
def ready(cli, settings, configured) -> Project:
    """All four gates pass: built-in settings on the tiny model (6 passes, a checkpoint after the 5th)."""
    code, out, err = cli("env", "pots")  # no GPU here, but the tiny model trains on the CPU
    assert "Gate 3 (environment): GO for this small test model" in out, out + err
    code, out, err = cli("dryrun", "pots")
    assert "Dry run passed" in out, out + err
    return configured


# A real SSH server ---------------------------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path: Path):
    """A real OpenSSH server on a free loopback port with throwaway keys (tests/sshd.py); stopped afterwards."""
    from tests.sshd import SSHServer  # imported here so that only the tests that use it need it

    with SSHServer.start(tmp_path / "sshd") as server:
        yield server


# A rented GPU ---------------------------------------------------------------------------------------


@pytest.fixture
def vast():
    """A local server speaking Vast.ai's API (tests/cloud_apis.py); its instances come up at the first poll."""
    from tests.cloud_apis import FakeVast

    with FakeVast() as fake:
        fake.ready_after = 1
        yield fake


@pytest.fixture
def cloud(settings, sshd, vast, tmp_path, monkeypatch):
    """Settings that rent from the fake Vast.ai, whose instances are the local sshd; loratrain there is this
    checkout's code run by this interpreter, in its own folder."""
    monkeypatch.setattr(cloud_run, "POLL_S", 0.2)
    monkeypatch.setattr(cloud_run, "READY_POLL_S", 0.05)
    vast.ssh = (sshd.host, sshd.port)
    there = {
        "cloud_remote_dir": str(tmp_path / "rented"),
        "cloud_remote_python": sys.executable,
        "cloud_ssh_user": sshd.user,
        "cloud_ready_timeout": 20,
        "cloud_setup_minutes": 0.0,
        "eval_steps": 2,
    }
    cloud = settings.model_copy(update={**vast.settings(), **there})
    sshd.authorize(ensure_key(cloud.cloud_dir / "id_ed25519"))
    return cloud
