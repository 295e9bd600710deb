"""One try of one job, as arq runs it: the same ``core.jobs.run_job`` embedded mode calls, with the
retries, time limit and failure message a queue needs.

arq retries only on ``Retry`` (or a cancelled worker), so an unexpected failure is turned into one
until the last try. Two failures ``run_job`` cannot report itself are reported here, so the artist
always hears when a job stops for good: a job that ran out of time (it was cancelled mid-way), and a
job whose worker died on every try (arq lets one more try in, and that try only says so).
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

    def done(outcome: str) -> None:
        log.info("%s try %d: %s after %.1f s", task.id, tries, outcome, time.monotonic() - started)

    if tries > TRIES:
        await publish(failure(task))
        return done("gave up: its worker stopped on every try")
    deadline = asyncio.timeout(ctx["time_limit"])
    try:
        async with deadline:
            await run_job(settings, task, publish, last_try=tries >= TRIES)
    except Exception as err:
        if deadline.expired():  # run_job was cancelled, so it could not tell the artist itself
            await publish(failure(task))
            done(f"stopped: over its {ctx['time_limit']} s limit")
        elif tries < TRIES:
            done(f"failed ({type(err).__name__}), retrying in {RETRY_DELAY_S * tries} s")
            raise Retry(defer=RETRY_DELAY_S * tries) from err
        else:
            done(f"failed ({type(err).__name__}), no tries left")
        raise
    done("the artist was told why it stopped" if said[-1:] == ["job_failed"] else "done")
