"""``loratrain worker``: the arq worker configuration for each queue, and ``submit``, which the bot
uses to hand the engine's jobs to it.

Every function in ``core.jobs.JOBS`` becomes a task of its queue's worker, so a new job needs no
change here (only a place in ``GPU_JOBS`` if it needs the GPU). Delivery is at least once: a job
whose worker dies stays queued and runs again once its in-progress mark expires (its time limit plus
``GRACE_S`` plus 10 s); the job functions are idempotent, so the second run does no harm.
"""

from __future__ import annotations

import argparse
import logging
from typing import Literal

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.cron import cron
from arq.worker import func, run_worker

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
HEALTH_CHECK_S = 60


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
        "health_check_key": f"{name}:health-check",
    }


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


def run(settings: Settings, args: argparse.Namespace) -> None:
    """Serve one queue until stopped (SIGINT/SIGTERM let running jobs go back to the queue), or until
    it is empty with ``--burst``. Logs one line per try of a job; never the Redis URL, which may hold
    a password."""
    kwargs = worker_settings(settings, args.queue)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("arq").setLevel(logging.WARNING)  # arq's own lines repeat ours, with the job's arguments
    logging.getLogger("loratrain.worker").info(
        "Serving %s (%s), up to %d job(s) at a time%s.",
        kwargs["queue_name"],
        ", ".join(f.name for f in kwargs["functions"]),
        kwargs["max_jobs"],
        ", until the queue is empty" if args.burst else "",
    )
    run_worker(kwargs, burst=args.burst)
