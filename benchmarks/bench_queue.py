"""Speed figures for what a Discord interaction waits for: the engine's reply and the enqueue, plus
how soon a queued job starts and how soon a worker's event reaches the bot.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_queue`` (``--help`` for options).
It starts its own redis-server on a free loopback port (never the machine's own Redis) and keeps its
grimoire in a temporary folder; both are gone at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
from arq.worker import Worker, func
from redis.asyncio import Redis

from core.engine import Choice, Decide, Engine, Say
from core.events import JobProgress, RedisStream
from core.settings import Settings
from core.store import open_store
from worker.main import connect, worker_settings

WARM_UP = 5  # first jobs and events, not timed: connections and first-call costs
SPREAD_S = (0.005, 0.025)  # random gap between enqueues, so arrivals fall anywhere in the worker's poll cycle
TARGET_S = 1.0  # every Discord interaction acknowledged well inside this, at p99
SEED = 20240611


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def percentiles(seconds: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(seconds, [50, 99])
    return {"p50_ms": round(float(p50) * 1000, 2), "p99_ms": round(float(p99) * 1000, 2), "n": len(seconds)}


async def bench_jobs(settings: Settings, count: int) -> dict:
    """Enqueue ``count`` trivial jobs one by one onto a worker configured like the real quick worker;
    time each enqueue call and the wait from enqueue to the job's start."""
    started: dict[str, float] = {}

    async def bench_noop(ctx: dict) -> None:
        started[ctx["job_id"]] = time.perf_counter()

    config = worker_settings(settings, "quick") | {"functions": [func(bench_noop, name="bench_noop")]}
    worker = Worker(**config, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    redis = await connect(settings)
    rng = random.Random(SEED)
    sent: dict[str, float] = {}
    enqueue: list[float] = []
    for i in range(count + WARM_UP):
        await asyncio.sleep(rng.uniform(*SPREAD_S))
        begin = time.perf_counter()
        await redis.enqueue_job("bench_noop", _job_id=f"bench:{i}", _queue_name=settings.quick_queue)
        if i >= WARM_UP:
            sent[f"bench:{i}"] = begin
            enqueue.append(time.perf_counter() - begin)
    while len(started) < count + WARM_UP:
        await asyncio.sleep(0.05)
    await worker.close()
    with suppress(asyncio.CancelledError):
        await running
    await redis.aclose()
    return {
        "enqueue": percentiles(enqueue),
        "enqueue_to_start": percentiles([started[key] - at for key, at in sent.items()]),
        "poll_delay_ms": config["poll_delay"] * 1000,
    }


async def bench_events(settings: Settings, count: int) -> dict:
    """Publish ``count`` events one by one while a reader waits in ``RedisStream.read`` on its own
    connection, as the bot's relay does; time each from publish to receipt."""
    publisher, listener = Redis.from_url(settings.redis_url), Redis.from_url(settings.redis_url)
    out, into = RedisStream(publisher, settings.events_stream), RedisStream(listener, settings.events_stream)
    received: dict[str, float] = {}

    async def read() -> None:
        after = "0"
        while len(received) < count + WARM_UP:
            found = await into.read(after, block_ms=5000)
            now = time.perf_counter()
            received.update((event.id, now) for _, event in found)
            after = found[-1][0] if found else after

    reader = asyncio.create_task(read())
    rng = random.Random(SEED)
    sent: dict[str, float] = {}
    for i in range(count + WARM_UP):
        await asyncio.sleep(rng.uniform(*SPREAD_S))
        event = JobProgress(id=f"e{i}", session="s", project="p", job="bench", text="Working", done=i, total=count)
        sent[event.id] = time.perf_counter()
        await out.publish(event)
    await reader
    await publisher.aclose()
    await listener.aclose()
    return {"publish_to_read": percentiles([received[key] - sent[key] for key in list(sent)[WARM_UP:]])}


async def interview(engine: Engine, session: str, timings: dict[str, list[float]]) -> None:
    """One artist through the intent interview, pressing the offered button or typing, without pauses."""

    async def timed(kind: str, call):
        begin = time.perf_counter()
        outcome = await call
        timings[kind].append(time.perf_counter() - begin)
        return outcome

    owner = f"artist{session}"
    await timed("start", engine.start(session, owner, owner))
    await timed("say", engine.handle(session, owner, Say(text="style")))
    await timed("decide", engine.handle(session, owner, Decide(ref="model", value="sdxl")))
    asked = await timed("decide", engine.handle(session, owner, Decide(ref="description", value="skip")))
    trigger = next(r for r in asked.replies if isinstance(r, Choice))
    done = await timed("decide", engine.handle(session, owner, Decide(ref="trigger", value=trigger.options[0].value)))
    if "is set up" not in done.replies[0].text:
        raise RuntimeError(f"the interview did not finish: {done.replies}")


async def bench_engine(settings: Settings, sessions: int) -> dict:
    """``sessions`` artists at once through the interview, on one engine and one SQLite store as in
    the bot; the last answer creates each project (intent.md written)."""
    timings: dict[str, list[float]] = {"start": [], "say": [], "decide": []}
    async with open_store(settings.database_path) as store:
        engine = Engine(settings, store)
        await asyncio.gather(*(interview(engine, f"{i:03d}", timings) for i in range(sessions)))
    every = [t for kind in timings.values() for t in kind]
    return {kind: percentiles(values) for kind, values in timings.items()} | {"all": percentiles(every)}


async def bench(args: argparse.Namespace, url: str, grimoire: Path) -> dict:
    settings = Settings(grimoire=grimoire, redis_url=url, workers=1, _env_file=None)
    figures = {
        "jobs": await bench_jobs(settings, args.jobs),
        "events": await bench_events(settings, args.jobs),
        "engine": await bench_engine(settings, args.sessions),
        "sessions": args.sessions,
    }
    waited = figures["engine"]["all"]["p99_ms"] + figures["jobs"]["enqueue"]["p99_ms"]
    figures["interaction_p99_ms"] = round(waited, 2)
    figures["target_met"] = waited < TARGET_S * 1000
    return figures


def show(f: dict) -> None:
    def line(what: str, p: dict) -> None:
        print(f"  {what:<44} p50 {p['p50_ms']:8.2f} ms   p99 {p['p99_ms']:8.2f} ms   (n={p['n']})")

    print(f"Queue (arq, local Redis; the worker polls every {f['jobs']['poll_delay_ms']:g} ms):")
    line("enqueue call", f["jobs"]["enqueue"])
    line("enqueue → job start", f["jobs"]["enqueue_to_start"])
    print("Events (Redis stream):")
    line("publish → blocked reader receives it", f["events"]["publish_to_read"])
    print(f"Engine replies, {f['sessions']} sessions at once on one SQLite store:")
    line("Engine.start", f["engine"]["start"])
    line("Engine.handle(Say)", f["engine"]["say"])
    line("Engine.handle(Decide)", f["engine"]["decide"])
    line("any of them", f["engine"]["all"])
    verdict = "met" if f["target_met"] else "NOT met"
    print(
        f"Target (every Discord interaction acknowledged well inside {TARGET_S:g} s at p99): {verdict} — "
        f"engine reply p99 + enqueue p99 = {f['interaction_p99_ms']:.2f} ms."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_queue", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs enqueued and events published (default 300)")
    parser.add_argument("--sessions", type=int, default=50, help="artists in the interview at once (default 50)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as scratch, redis_server(Path(scratch)) as url:
        figures = asyncio.run(bench(args, url, Path(scratch) / "grimoire"))
    if args.json:
        print(json.dumps(figures))
    else:
        show(figures)


if __name__ == "__main__":
    main()
