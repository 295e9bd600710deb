"""One try of one job, as arq runs it: the same ``core.jobs.run_job`` embedded mode calls, with the
retries, time limit and failure message a queue needs.

arq retries only on ``Retry`` (or a cancelled worker), so an unexpected failure is turned into one
until the last try. Two failures ``run_job`` cannot report itself are reported here, so the artist
always hears when a job stops for good: a job that ran out of time (it was cancelled mid-way), and a
job whose worker died on every try (arq lets one more try in, and that try only says so).

Each try ends with one log line: the job, the try, its ``outcome`` (done, told, retrying, failed, timed-out,
gave-up, requeued — its worker is stopping —, cancelled) and how long it ran.
"""

from __future__ import annotations

import asyncio
import logging
import time

from arq import Retry

from core.events import Event, RedisStream
from core.jobs import Job, failure, run_job
from core.settings import Settings

TRIES = 3  # tries that do the work; a crash, a restart or an unexpected error each use one
RETRY_DELAY_S = 5  # times the try number: a moment for a passing problem (disk, database lock) to clear

log = logging.getLogger("loratrain.worker")


async def perform(ctx: dict, job: dict) -> None:
    """Run one try of ``job`` (a ``core.jobs.Job`` as a dict); ``ctx`` holds the worker's settings,
    its Redis and its per-job time limit, and arq's try counter."""
    settings: Settings = ctx["settings"]
    task = Job.model_validate(job)
    stream = RedisStream(ctx["redis"], settings.events_stream, settings.events_maxlen)
    tries, started, said = ctx["job_try"], time.monotonic(), []

    async def publish(event: Event) -> None:
        await stream.publish(event)
        said.append(event.kind)

    def done(outcome: str, event: str, level: int = logging.INFO, exc: Exception | None = None, **fields: object):
        seconds = round(time.monotonic() - started, 1)
        extra = {"job": task.id, "try": tries, "outcome": outcome, "seconds": seconds, **fields}
        log.log(level, event, exc_info=exc, extra=extra)

    if tries > TRIES:
        await publish(failure(task))
        return done("gave-up", "Job given up: its worker stopped on every try", logging.WARNING)
    deadline = asyncio.timeout(ctx["time_limit"])
    try:
        async with deadline:
            await run_job(settings, task, publish, last_try=tries >= TRIES)
    except asyncio.CancelledError:
        stopping = ctx.get("stopping")
        if stopping is not None and stopping.is_set():
            done("requeued", "Job interrupted: its worker is stopping, so it goes back to the queue")
        else:
            done("cancelled", "Job cancelled", logging.WARNING)
        raise
    except Exception as err:
        error = type(err).__name__
        if deadline.expired():  # run_job was cancelled, so it could not tell the artist itself
            await publish(failure(task))
            done("timed-out", "Job stopped: over its time limit", logging.WARNING, limit_s=ctx["time_limit"])
        elif tries < TRIES:
            retry_in = RETRY_DELAY_S * tries
            done("retrying", "Job failed; trying again", logging.WARNING, err, error=error, retry_in_s=retry_in)
            raise Retry(defer=retry_in) from err
        else:
            done("failed", "Job failed; no tries left", logging.WARNING, error=error)
        raise
    if said[-1:] == ["job_failed"]:
        done("told", "Job ended: the artist was told why it stopped")
    else:
        done("done", "Job done")
