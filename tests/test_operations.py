"""Running loratrain as a service: one logfmt line per event with no secret in it, workers that stop
gracefully on SIGTERM (a quick job is let finish; a training run goes back to the queue and the next
worker resumes it from its checkpoint), and the workers' health check. The bot's side (its graceful stop,
its relay and its heartbeat) is in test_bot.py."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import SecretStr

from core import intent as intents
from core import logs
from core.events import RedisStream
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.jobs import JOBS, Job, inbox, job_id
from core.training import supervise
from tests.conftest import noise_image
from tests.test_worker import drain
from worker.main import STOP_GRACE_S, QueueWorker, check, connect, submit, worker_settings

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


@pytest.fixture
def restored_logging():
    """The root logger and the libraries' levels as they were, whatever a test set up."""
    root = logging.getLogger()
    saved = root.level, list(root.handlers), {name: logging.getLogger(name).level for name in logs.LIBRARIES}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def queued(settings, redis_url):
    """Settings with the test Redis and queue and stream names of this test's own."""
    tag = uuid4().hex[:8]
    names = {"quick_queue": f"{tag}:quick", "gpu_queue": f"{tag}:gpu", "events_stream": f"{tag}:events"}
    return settings.model_copy(update={"redis_url": redis_url, **names})


@pytest.fixture
async def redis(queued):
    pool = await connect(queued)
    yield pool
    await pool.aclose()


# Logging --------------------------------------------------------------------------------------------


def test_each_event_is_one_logfmt_line_with_its_fields_and_no_secret(settings, capsys, restored_logging):
    secrets = {"discord_token": "tok-SECRET-1", "vast_api_key": "vast-SECRET-2", "runpod_api_key": "rp-SECRET-3",
               "anthropic_api_key": "sk-ant-SECRET-4"}  # fmt: skip
    keyed = settings.model_copy(update={**{k: SecretStr(v) for k, v in secrets.items()},
                                        "redis_url": "redis://:redis-SECRET-5@cache:6379/0"})  # fmt: skip
    logs.setup(False, keyed)
    log = logging.getLogger("loratrain.worker")

    log.info("Job done", extra={"job": "dataset_check:mira:0123", "try": 2, "seconds": 1.5, "said": 'a "b"\nc'})
    urls = {"redis": "redis://:redis-SECRET-5@cache:6379/0", "other": "https://me:hunter2@example.com/"}
    log.warning("Asked %s for %s", "https://api.runpod.io/graphql?api_key=rp-SECRET-3&x=1", "vast-SECRET-2", extra=urls)
    try:
        raise RuntimeError("Discord refused tok-SECRET-1\nand said so")
    except RuntimeError:
        log.exception("Login failed", extra={"key": "sk-ant-SECRET-4"})
    lines = capsys.readouterr().err.splitlines()

    assert len(lines) == 3
    assert re.fullmatch(r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0].split(" ")[0])
    assert lines[0].split(" ", 1)[1] == (
        'level=info logger=loratrain.worker event="Job done" job=dataset_check:mira:0123 try=2 seconds=1.5 '
        'said="a \\"b\\"\\nc"'
    )
    assert lines[1].split(" ", 1)[1] == (
        'level=warning logger=loratrain.worker event="Asked https://api.runpod.io/graphql?api_key=[hidden]&x=1 '
        'for [hidden]" redis=redis://:[hidden]@cache:6379/0 other=https://me:[hidden]@example.com/'
    )
    assert " level=error " in lines[2] and "key=[hidden]" in lines[2]
    assert 'exc="Traceback (most recent call last):\\n' in lines[2]
    assert "RuntimeError: Discord refused [hidden]\\nand said so" in lines[2]
    assert "SECRET" not in "\n".join(lines) and "hunter2" not in "\n".join(lines)


def test_info_by_default_everything_with_verbose(settings, capsys, restored_logging):
    def said() -> str:
        for name in ("loratrain.worker", "arq.worker", "discord.client"):
            logging.getLogger(name).info("info from %s", name)
            logging.getLogger(name).debug("detail from %s", name)
            logging.getLogger(name).warning("warning from %s", name)
        return capsys.readouterr().err

    logs.setup(False, settings)
    quiet = said()
    assert 'event="info from loratrain.worker"' in quiet and "detail" not in quiet
    assert "info from arq" not in quiet and "info from discord" not in quiet  # the libraries: warnings only
    assert 'event="warning from arq.worker"' in quiet and 'event="warning from discord.client"' in quiet

    logs.setup(True, settings)  # again: the handler is replaced, not added
    loud = said()
    assert all(f'event="{what} from {name}"' in loud for what in ("info", "detail")
               for name in ("loratrain.worker", "arq.worker", "discord.client"))  # fmt: skip
    assert sum(isinstance(h, logs.Stderr) for h in logging.getLogger().handlers) == 1
    assert len(loud.splitlines()) == 9


# Workers: stopping and health -----------------------------------------------------------------------


def new_project(settings) -> None:
    intents.create(Project.at(settings, "mira"), LoraType.style, Family.sd15, "mirastyle")


def check_job(settings, count: int) -> Job:
    """A dataset check of ``count`` pictures waiting in the inbox: a few seconds of work."""
    box = inbox(settings, "s1")
    box.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        noise_image((768, 768), seed).save(box / f"p{seed:02d}.jpg", quality=90)
    staged = [str(p) for p in sorted(box.iterdir())]
    return Job(name="dataset_check", id=job_id("dataset_check", "mira", staged, 0), session="s1", project="mira",
               args={"staged": staged})  # fmt: skip


async def start_worker(settings, queue: str, log: Path, *more: str) -> asyncio.subprocess.Process:
    """``loratrain worker`` as its own process, as a container runs it; its log goes to ``log``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORATRAIN_")},
        "LORATRAIN_REDIS_URL": settings.redis_url,
        "LORATRAIN_QUICK_QUEUE": settings.quick_queue,
        "LORATRAIN_GPU_QUEUE": settings.gpu_queue,
        "LORATRAIN_EVENTS_STREAM": settings.events_stream,
        "LORATRAIN_WORKERS": "1",
    }
    command = [sys.executable, "-m", "core.cli", "--grimoire", str(settings.grimoire), "worker", "--queue", queue]
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(*command, *more, env=env, cwd=log.parent,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=out)  # fmt: skip


async def stop(worker: asyncio.subprocess.Process, within_s: float) -> float:
    """SIGTERM, as ``docker stop`` sends it; returns how long the worker took to exit (it must exit 0)."""
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        assert await asyncio.wait_for(worker.wait(), within_s) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    return time.monotonic() - started


async def events(redis, settings) -> list:
    return [event for _, event in await RedisStream(redis, settings.events_stream).read("0", block_ms=10)]


def line(log: Path, *parts: str) -> str:
    """The one line of ``log`` that has all of ``parts``."""
    (found,) = [text for text in log.read_text().splitlines() if all(p in text for p in parts)]
    return found


async def test_a_stopped_quick_worker_finishes_its_job_first_and_its_health_check_follows_it(
    queued, redis, tmp_path, capsys
):
    new_project(queued)
    job = check_job(queued, 12)
    assert await check(queued, "quick") == 1
    assert capsys.readouterr().out == "No quick worker on this machine has reported in the last 61 s.\n"
    assert await submit(redis, queued, job)
    log = tmp_path / "worker.log"
    worker = await start_worker(queued, "quick", log)
    try:
        async with asyncio.timeout(30):
            while not await events(redis, queued):  # the job has started
                await asyncio.sleep(0.05)
    except BaseException:
        worker.kill()
        raise
    async with asyncio.timeout(5):  # the worker writes its health key right after it takes the job
        while await check(queued, "quick"):
            await asyncio.sleep(0.05)
    said = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"The quick worker is running \(.* j_complete=0 j_failed=0 .*\)\.", said), said

    assert await stop(worker, STOP_GRACE_S["quick"] + 10) < STOP_GRACE_S["quick"]
    assert "signal=SIGTERM running=1 grace_s=20" in line(log, 'event="Worker stopping"')
    assert "outcome=done" in line(log, f"job={job.id} try=1")  # it finished within the grace
    assert [e.kind for e in await events(redis, queued)][-1] == "dataset_checked"
    assert await redis.zcard(queued.quick_queue) == 0
    assert "done=1 failed=0 retried=0" in line(log, 'event="Worker stopped"')
    assert await check(queued, "quick") == 1  # a stopped worker leaves no health key behind


async def test_a_quick_job_longer_than_the_grace_goes_back_to_the_queue_and_runs_on_the_next_worker(
    queued, redis, monkeypatch, caplog
):
    tries: list[int] = []

    async def slow_the_first_time(settings, job, publish) -> None:
        tries.append(len(tries) + 1)
        if len(tries) == 1:
            await asyncio.sleep(60)

    monkeypatch.setitem(JOBS, "dataset_check", slow_the_first_time)
    job = Job(name="dataset_check", id="dataset_check:mira:slow", session="s1", project="mira")
    assert await submit(redis, queued, job)
    kwargs = {**worker_settings(queued, "quick"), "job_completion_wait": 0.3}  # 20 s in a real worker
    worker = QueueWorker(**kwargs, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    while not tries:
        await asyncio.sleep(0.02)
    with caplog.at_level(logging.INFO, logger="loratrain.worker"):
        worker.handle_sig_wait_for_completion(signal.SIGTERM)  # what SIGTERM calls
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, 5)
        await asyncio.gather(*worker.tasks.values())  # as run() does before it closes
        await worker.close()
    (record,) = [r for r in caplog.records if getattr(r, "job", None) == job.id]
    assert (record.outcome, getattr(record, "try")) == ("requeued", 1)
    assert await redis.zcard(queued.quick_queue) == 1

    await drain(queued)
    assert tries == [1, 2]
    assert await redis.zcard(queued.quick_queue) == 0


def test_the_worker_check_is_a_command_with_an_exit_status(cli, redis_url, monkeypatch):
    monkeypatch.setenv("LORATRAIN_REDIS_URL", redis_url)
    code, out, _ = cli("--verbose", "worker", "--check", "--queue", "gpu")
    assert (code, out) == (1, "No gpu worker on this machine has reported in the last 61 s.\n")
    monkeypatch.setenv("LORATRAIN_REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    code, out, err = cli("worker", "--check")
    assert (code, out) == (1, "The quick worker's health is unknown: Redis at LORATRAIN_REDIS_URL can't be reached.\n")
    assert "pw" not in err


async def test_training_whose_gpu_worker_is_stopped_goes_back_to_the_queue_and_resumes_on_the_next(
    settings, ready, redis_url, tmp_path
):
    """SIGTERM after the epoch-5 checkpoint: the trainer finishes its step and stops, the job goes back to
    the queue, and the next worker picks the run up from that checkpoint to the end."""
    tag = uuid4().hex[:8]
    queued = settings.model_copy(update={"redis_url": redis_url, "quick_queue": f"{tag}:quick",
                                         "gpu_queue": f"{tag}:gpu", "events_stream": f"{tag}:events"})  # fmt: skip
    redis = await connect(queued)
    try:
        job = Job(name="train", id=job_id("train", "pots", 1), session="s1", project="pots")
        assert await submit(redis, queued, job)
        first = tmp_path / "first.log"
        worker = await start_worker(queued, "gpu", first)
        state = ready.root / "checkpoints" / "state"
        try:
            async with asyncio.timeout(240):
                while not state.is_dir():
                    await asyncio.sleep(0.05)
        except BaseException:
            worker.kill()
            raise
        # the trainer stops after its step, well before it would be killed
        assert await stop(worker, supervise.GRACE_S + 30) < supervise.GRACE_S
        assert "running=1 grace_s=0" in line(first, 'event="Worker stopping"')
        assert "outcome=requeued" in line(first, f"job={job.id} try=1")
        assert await redis.zcard(queued.gpu_queue) == 1  # back in the queue at once

        second = tmp_path / "second.log"
        worker = await start_worker(queued, "gpu", second, "--burst")
        async with asyncio.timeout(240):
            assert await worker.wait() == 0
        assert "outcome=done" in line(second, f"job={job.id} try=2")
        found = await events(redis, queued)
    finally:
        await redis.aclose()
    assert any("Picking up where the last run stopped" in getattr(e, "text", "") for e in found)
    (finished,) = [e for e in found if e.kind == "training_finished"]
    assert finished.status == "finished" and Path(finished.lora).is_file()
    assert '"resumed_from_epoch": 5' in (ready.root / "logs" / "train.log").read_text()
