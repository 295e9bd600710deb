"""``loratrain worker``: the arq worker configuration for each queue, and ``submit``, which the bot
uses to hand the engine's jobs to it.

Every function in ``core.jobs.JOBS`` becomes a task of its queue's worker, so a new job needs no
change here (only a place in ``GPU_JOBS`` if it needs the GPU). Delivery is at least once: a job
whose worker dies stays queued and runs again once its in-progress mark expires (its time limit plus
``GRACE_S`` plus 10 s); the job functions are idempotent, so the second run does no harm.

Stopping (SIGTERM, SIGINT): the worker takes no new job and gives the running ones ``STOP_GRACE_S`` to
end; arq then cancels what is left, and a cancelled job goes back to its queue at once (not after the
in-progress mark expires), for the next worker. A training run is cancelled without waiting: its trainer
gets SIGTERM, finishes its step, and the next worker resumes it from its last checkpoint. A cloud run is
cancelled too, and its ``finally`` destroys the rented GPU (the next worker rents again). Each job still
running says in the log what became of it. ``--check`` reads the key the worker refreshes while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from signal import Signals
from typing import Literal

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.cron import cron
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.cloud.reaper import EVERY_S, reap_and_tell
from core.events import RedisStream
from core.jobs import JOBS, Job
from core.settings import Settings
from worker.tasks import TRIES, perform

Queue = Literal["quick", "gpu", "cloud"]

GPU_JOBS: frozenset[str] = frozenset({"dry_run", "train", "evaluate"})  # jobs that need the GPU
# Jobs that rent a GPU and drive it over SSH: long, but light here; their worker holds the providers' keys.
CLOUD_JOBS: frozenset[str] = frozenset({"cloud_offers", "cloud_train"})
MAX_JOBS: dict[Queue, int] = {"quick": 4, "gpu": 1, "cloud": 4}  # one job at a time per GPU
GRACE_S = 2  # after a job's own time limit, for telling the artist before arq cancels it outright
KEEP_RESULT_S = 60  # a finished job's id is refused this long, so a double click runs it once
POLL_DELAY_S = 0.1  # how often an idle worker looks for work: the wait before a job starts
HEALTH_CHECK_S = 60  # how often a running worker refreshes its health key (which lasts 1 s longer)
# How long a stopping worker lets its jobs finish: checks and captions often can; the GPU and cloud queues'
# jobs run for hours, so waiting would only delay the trainer's SIGTERM (Docker's stop must allow for this).
STOP_GRACE_S: dict[Queue, int] = {"quick": 20, "gpu": 0, "cloud": 0}

log = logging.getLogger("loratrain.worker")


def queue_of(job_name: str) -> Queue:
    return "gpu" if job_name in GPU_JOBS else "cloud" if job_name in CLOUD_JOBS else "quick"


def queue_name(settings: Settings, queue: Queue) -> str:
    return {"quick": settings.quick_queue, "gpu": settings.gpu_queue, "cloud": settings.cloud_queue}[queue]


async def reap(ctx: dict) -> None:
    """The cloud worker's periodic pass over rented GPUs (``core.cloud.reaper``)."""
    settings: Settings = ctx["settings"]
    await reap_and_tell(settings, RedisStream(ctx["redis"], settings.events_stream, settings.events_maxlen).publish)


def worker_settings(settings: Settings, queue: Queue) -> dict:
    """Keyword arguments for ``arq.worker.Worker`` serving ``queue``: the GPU queue gets the GPU jobs'
    long time limit (training runs for hours) and one job at a time."""
    names = [name for name in JOBS if queue_of(name) == queue]
    name = queue_name(settings, queue)
    time_limit = settings.quick_job_timeout if queue == "quick" else settings.gpu_job_timeout
    every = set(range(0, 60, EVERY_S // 60))
    return {
        "cron_jobs": [cron(reap, minute=every, run_at_startup=True, unique=True)] if queue == "cloud" else [],
        "functions": [func(perform, name=job) for job in names],
        "queue_name": name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "ctx": {"settings": settings, "time_limit": time_limit},
        "max_jobs": MAX_JOBS[queue],
        "job_timeout": time_limit + GRACE_S,
        "allow_abort_jobs": True,  # arq's abort cancels the job; the trainer subprocess is stopped with it
        "max_tries": TRIES + 1,  # the extra try only tells the artist that the job gave up
        "keep_result": KEEP_RESULT_S,
        "poll_delay": POLL_DELAY_S,
        "health_check_interval": HEALTH_CHECK_S,
        "health_check_key": health_key(name),
        "job_completion_wait": STOP_GRACE_S[queue],
    }


def health_key(queue: str) -> str:
    """One key per machine (a container has its own host name), so ``--check`` speaks for this one's worker."""
    return f"{queue}:health-check:{socket.gethostname()}"


class QueueWorker(Worker):
    """arq's worker, which on a stop signal also says so in the log and tells its jobs (``ctx["stopping"]``),
    so each one still running can say it goes back to the queue."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ctx["stopping"] = self.stopping = asyncio.Event()

    def handle_sig(self, signum: Signals) -> None:
        self._stopping(signum)
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._stopping(signum)
        super().handle_sig_wait_for_completion(signum)

    def _stopping(self, signum: Signals) -> None:
        self.stopping.set()
        fields = {"queue": self.queue_name, "signal": Signals(signum).name, "running": len(self.job_tasks)}
        log.info("Worker stopping", extra={**fields, "grace_s": self._job_completion_wait})


async def connect(settings: Settings) -> ArqRedis:
    """A Redis connection that can enqueue jobs for these workers."""
    return await create_pool(RedisSettings.from_dsn(settings.redis_url), default_queue_name=settings.quick_queue)


async def submit(redis: ArqRedis, settings: Settings, job: Job) -> bool:
    """Queue ``job`` under its own id on its queue. False when arq refuses it because a job with that
    id is queued, running, or finished less than ``KEEP_RESULT_S`` ago: a job submitted twice runs once."""
    queued = await redis.enqueue_job(
        job.name, job.model_dump(mode="json"), _job_id=job.id, _queue_name=queue_name(settings, queue_of(job.name))
    )
    return queued is not None


async def check(settings: Settings, queue: Queue) -> int:
    """``loratrain worker --check``: 0 when this machine's worker for ``queue`` refreshed its health key in
    the last ``HEALTH_CHECK_S`` seconds (as arq's own ``check_health`` judges), else 1; one plain line either
    way. arq's check is not called because it logs instead of printing and waits 5 s on a Redis that is down."""
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        found = await redis.get(health_key(queue_name(settings, queue)))
    except (RedisError, OSError):
        print(f"The {queue} worker's health is unknown: Redis at LORATRAIN_REDIS_URL can't be reached.")
        return 1
    finally:
        await redis.aclose()
    if not found:
        print(f"No {queue} worker on this machine has reported in the last {HEALTH_CHECK_S + 1} s.")
        return 1
    print(f"The {queue} worker is running ({found.decode()}).")
    return 0


def run(settings: Settings, args: argparse.Namespace) -> int | None:
    """Serve one queue until stopped, or until it is empty with ``--burst``; with ``--check``, say whether
    this machine's worker for the queue is running. Never logs the Redis URL, which may hold a password."""
    if args.check:
        return asyncio.run(check(settings, args.queue))
    kwargs = worker_settings(settings, args.queue)
    fields = {"queue": kwargs["queue_name"], "max_jobs": kwargs["max_jobs"], "burst": args.burst}
    jobs = ",".join(f.name for f in kwargs["functions"])
    log.info("Worker started", extra={**fields, "jobs": jobs, "stop_grace_s": kwargs["job_completion_wait"]})
    worker = QueueWorker(**kwargs, burst=args.burst)
    worker.run()
    counts = {"done": worker.jobs_complete, "failed": worker.jobs_failed, "retried": worker.jobs_retried}
    log.info("Worker stopped", extra={"queue": kwargs["queue_name"], **counts})
