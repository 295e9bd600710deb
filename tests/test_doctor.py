"""``loratrain doctor`` (is this machine set up, and what to fix) and ``loratrain status NAME`` (a project at a
glance, and its next step), as someone setting up or following a project meets them."""

from __future__ import annotations

import asyncio
import json
import socket

import pynvml
import pytest
import redis

from core.doctor import Finding, disk_finding, examine, gpu_finding
from core.errors import UserError
from core.grimoire import Project
from core.logs import hide_passwords
from core.settings import Settings, load
from core.store import MIGRATIONS, open_store
from core.training.execute import THIS_WORKER
from core.training.progress import ProgressState
from tests.test_environment import machine
from worker.main import health_key

TOKEN = "MTIzNDU2Nzg5MDEy.GhIjKl.fake-discord-token-value"


@pytest.fixture
def doctor(cli, monkeypatch, redis_url):
    """Run ``loratrain doctor ARGS`` on the private Redis with no secrets set; returns (exit code, stdout)."""
    monkeypatch.setenv("LORATRAIN_REDIS_URL", redis_url)
    for key in ("LORATRAIN_DISCORD_TOKEN", "LORATRAIN_VAST_API_KEY", "LORATRAIN_RUNPOD_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    return lambda *args: cli("doctor", *args)[:2]


def dead_redis() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # nothing listens once the socket is closed


def by_name(out: str) -> dict[str, dict]:
    return {f["name"]: f for f in json.loads(out)}


def test_a_fresh_setup_without_workers_has_only_warnings(doctor, tmp_path) -> None:
    code, out = doctor()
    assert code == 0, out
    assert f"✅ Grimoire: {tmp_path / 'grimoire'} was created" in out
    assert f"✅ Database: {tmp_path / 'grimoire' / '.loratrain.sqlite3'}, schema version {len(MIGRATIONS)}" in out
    assert "✅ Redis: answers at redis://127.0.0.1:" in out
    for queue in ("quick", "gpu", "cloud"):
        assert f"⚠️ Worker ({queue}): no worker is serving the {queue} queue" in out
        assert f"→ Start one: `loratrain worker --queue {queue}`" in out
    assert "⚠️ Discord token: not set; only `loratrain bot` needs it" in out
    assert "⚠️ studio.md:" in out and "cp " in out  # the template to copy
    assert out.rstrip().splitlines()[-1].startswith("Nothing stops loratrain here")


def test_a_dead_redis_is_a_problem_with_its_fix_and_exit_1(doctor, monkeypatch) -> None:
    monkeypatch.setenv("LORATRAIN_REDIS_URL", dead_redis())
    code, out = doctor()
    assert code == 1
    assert "❌ Redis: no answer from redis://127.0.0.1:" in out
    assert "→ Start Redis (`redis-server`), or fix LORATRAIN_REDIS_URL" in out
    assert "⚠️ Workers: can't tell: Redis isn't reachable" in out
    assert out.rstrip().splitlines()[-1].startswith("1 problem(s) to fix")


def test_a_running_worker_is_seen_through_its_health_check(doctor, redis_url) -> None:
    client = redis.Redis.from_url(redis_url)
    stats = "Jan-01 12:00:00 j_complete=3 j_failed=0 j_retried=0 j_ongoing=1 queued=0"
    client.set(health_key("loratrain:gpu"), stats)  # the key a real GPU worker on this machine keeps
    client.close()
    found = by_name(doctor("--json")[1])
    assert found["Worker (gpu)"]["state"] == "ok" and "j_complete=3" in found["Worker (gpu)"]["found"]
    assert f"alive on {socket.gethostname()}" in found["Worker (gpu)"]["found"]
    assert found["Worker (quick)"]["state"] == "warning"


def test_secrets_show_as_set_never_their_values(doctor, monkeypatch) -> None:
    monkeypatch.setenv("LORATRAIN_DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("LORATRAIN_VAST_API_KEY", "vast-secret-key-value")
    monkeypatch.setenv("LORATRAIN_REDIS_URL", dead_redis().replace("//", "//:hunter2@"))
    code, out = doctor()
    _, as_json = doctor("--json")
    for text in (out, as_json):
        assert "fake-discord-token-value" not in text and "GhIjKl" not in text
        assert "vast-secret-key-value" not in text and "hunter2" not in text
    assert "✅ Discord token: set (not shown)" in out
    assert "Vast.ai: set · RunPod: not set" in out
    assert "redis://:[hidden]@127.0.0.1:" in out


def test_a_token_of_the_wrong_shape_is_a_warning(doctor, monkeypatch) -> None:
    monkeypatch.setenv("LORATRAIN_DISCORD_TOKEN", "123456789012345678")  # the application id, not the token
    code, out = doctor("--json")
    token = by_name(out)["Discord token"]
    assert code == 0 and token["state"] == "warning" and "three parts" in token["found"]
    assert "123456789012345678" not in out


def test_a_grimoire_that_cannot_be_written_is_a_problem(doctor, tmp_path) -> None:
    (tmp_path / "grimoire").write_text("not a folder")  # as root, chmod would not stop the writes
    code, out = doctor()
    assert code == 1
    assert f"❌ Grimoire: {tmp_path / 'grimoire'} is a file, not a folder" in out
    assert "→ Point LORATRAIN_GRIMOIRE (or --grimoire) to a folder you can write to" in out
    assert "❌ Database: can't use" in out


def test_json_lists_every_check(doctor) -> None:
    code, out = doctor("--json")
    findings = json.loads(out)
    assert code == 0 and isinstance(findings, list)
    assert all(set(f) == {"name", "state", "found", "fix"} for f in findings)
    assert all(f["state"] in ("ok", "info", "warning", "problem") for f in findings)
    assert all((f["fix"] is None) == (f["state"] == "ok") for f in findings)
    names = {f["name"] for f in findings}
    assert {"Configuration", "Optional features", "Grimoire", "studio.md", "eye.md", "Database", "Redis",
            "Discord token", "Disk space", "GPU"} <= names  # fmt: skip


def test_a_wrong_setting_names_its_variable_not_its_value(monkeypatch) -> None:
    monkeypatch.setenv("LORATRAIN_MAX_UPLOAD_MB", "fifty-ish")
    monkeypatch.setenv("LORATRAIN_DISCORD_GUILD", "my-server")
    with pytest.raises(UserError) as wrong:
        load()
    message = str(wrong.value)
    assert "LORATRAIN_MAX_UPLOAD_MB should be a valid number" in message and "default: 50.0" in message
    assert "LORATRAIN_DISCORD_GUILD should be a valid integer" in message
    assert "fifty-ish" not in message and "my-server" not in message


def test_redis_passwords_are_redacted() -> None:
    assert hide_passwords("redis://:secret@cache:6379/0") == "redis://:[hidden]@cache:6379/0"
    assert hide_passwords("rediss://bot:secret@cache/1") == "rediss://bot:[hidden]@cache/1"
    assert hide_passwords("redis://cache/0?password=secret&db=2") == "redis://cache/0?password=[hidden]&db=2"
    assert hide_passwords("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_gpu_and_the_disk_as_the_probe_finds_them() -> None:
    assert gpu_finding(machine()).state == "ok" and "NVIDIA GeForce RTX 4090 (24 GB)" in gpu_finding(machine()).found
    cpu_build = gpu_finding(machine(torch_version="2.7.1+cpu", torch_cuda=None))
    assert cpu_build.state == "problem" and "CPU-only" in cpu_build.found and "pip install torch" in cpu_build.fix
    asleep = gpu_finding(machine(gpus=[], driver=None, nvml_code=pynvml.NVML_ERROR_DRIVER_NOT_LOADED, nvml_error="x"))
    assert asleep.state == "warning" and asleep.fix.startswith("Restart the machine")
    assert "`loratrain cloud offers NAME`" in asleep.fix
    assert [disk_finding(machine(disk_free_gb=gb)).state for gb in (1.0, 12.0, 500.0)] == ["problem", "warning", "ok"]


async def test_a_check_that_breaks_is_reported_and_the_others_still_run(settings) -> None:
    def broken(settings: Settings):
        raise RuntimeError("boom")

    def fine(settings: Settings):
        return Finding(name="Fine", state="ok", found="yes")

    found = await examine(settings, (broken, fine))
    assert [(f.name, f.state) for f in found] == [("Broken", "problem"), ("Fine", "ok")]
    assert "boom" in found[0].found


# loratrain status ------------------------------------------------------------------------------------


def status(cli, name: str = "pots") -> str:
    code, out, err = cli("status", name)
    assert code == 0, err
    return out


def test_a_new_project_asks_for_pictures_then_captions(cli, tmp_path, painting) -> None:
    assert cli("new", "pots", "--type", "object", "--model", "sd15", "--trigger", "potobj")[0] == 0
    out = status(cli)
    assert "pots — an object LoRA for Stable Diffusion 1.5, trigger word `potobj`" in out
    assert "Gates: ⏸ Dataset ⏸ Config ⏸ Environment ⏸ Dry run" in out
    assert "Training: not started yet" in out
    assert "Next: Add pictures: an object needs 10–30 images (`loratrain add pots PATH...`)." in out
    dataset = tmp_path / "grimoire" / "training" / "pots" / "dataset"
    for seed in range(10):
        painting(seed, (192, 160)).save(dataset / f"pot{seed}.jpg", quality=90)
    (dataset / "pot0.txt").write_text("potobj, a teapot\n")
    out = status(cli)
    assert "Pictures: 10 in the dataset, 1 with a caption (an object needs 10–30 images)" in out
    assert "Next: Write captions: `loratrain caption pots` (1 of 10 pictures have one)." in out
    assert cli("status", "nope")[0] == 2  # a missing project is the usual plain error


def test_a_running_training_shows_its_progress_and_rented_gpu(cli, settings) -> None:
    assert cli("new", "pots", "--type", "object", "--model", "sd15", "--trigger", "potobj")[0] == 0
    project = Project.existing(settings, "pots")

    async def running() -> None:
        async with open_store(settings.database_path) as store:
            await store.start_run("pots:1", "pots", "builtin", "abc", None, THIS_WORKER)  # this process: alive
            await store.add_instance("vast", "42", "pots", "pots:1", "RTX 4090", 0.45, 10.0, THIS_WORKER, None)

    asyncio.run(running())
    ProgressState(name="pots", backend="builtin", epoch=3, epochs=6, step=30, total_steps=60, remaining_s=120).write(
        project
    )
    out = status(cli)
    assert "Training: running — started " in out
    assert "  Training pots — epoch 3/6 ▓▓▓▓▓▓▓▓▓▓░░░░░░░░░░ 50% · ~2 min left" in out
    assert "Rented GPU still running: **Vast.ai 42**: RTX 4090 · $0.45/hour" in out
    assert "Next: Wait: pots is training. `loratrain cancel pots` stops it" in out
    seen = json.loads(cli("status", "pots", "--json")[1])
    assert seen["run"]["status"] == "running" and seen["run"]["progress"].startswith("Training pots — epoch 3/6")

    async def left_behind() -> None:  # its process is gone: the run is no longer going anywhere
        async with open_store(settings.database_path) as store:
            await store.start_run("pots:1", "pots", "builtin", "abc", None, f"{socket.gethostname()}:999999")

    asyncio.run(left_behind())
    out = status(cli)
    assert "Training: interrupted — started " in out and "Training pots — epoch" not in out
    assert "Next: Add pictures" in out  # a run can start again only once the gates pass


def test_ready_then_trained_then_registered(cli, ready) -> None:
    out = status(cli)
    assert "Gates: ✅ Dataset ✅ Config ✅ Environment ✅ Dry run" in out
    assert "Next: Train: `loratrain train pots`" in out
    code, _, err = cli("train", "pots", "--yes")
    assert code == 0, err
    out = status(cli)
    assert "Training: finished — started " in out and "Training finished: pots.safetensors is saved in" in out
    assert "Next: Choose a weight: `loratrain eval pots` draws the strength grid" in out
    assert cli("register", "pots", "--weight", "0.7")[0] == 0
    out = status(cli)
    assert "LoRA: registered in studio.md at weight 0.7" in out
    assert "Next: Done: pots is in studio.md at weight 0.7; put `potobj` in a prompt to use it." in out
