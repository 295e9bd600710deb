"""The event stream between worker and bot, on a real Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.events import DatasetChecked, JobStarted, RedisStream


async def test_events_round_trip_in_order_and_the_stream_stays_bounded(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    stream = RedisStream(client, "test:events", maxlen=50)
    for n in range(300):
        await stream.publish(JobStarted(id=f"j{n}:started", session="s", project="p", job=f"j{n}", text="…"))
    assert await client.xlen("test:events") < 300  # trimmed, approximately, to the bound
    checked = DatasetChecked(
        id="j:checked",
        session="s",
        project="p",
        job="j",
        imported=[],
        audit=["ok"],
        pairs=[],
        gate_passed=False,
        gate_reasons=["x"],
        gate_fixes=["y"],
        report="r.md",
        usable=3,
    )
    await stream.publish(checked)
    events = await stream.read("0-0", block_ms=10, count=1000)
    assert events[-1][1] == checked
    ids = [event.id for _, event in events[:-1]]
    assert ids == sorted(ids, key=lambda i: int(i[1:].split(":")[0]))
    after_last = await stream.read(events[-1][0], block_ms=10)
    assert after_last == []
    await client.aclose()


async def test_an_unreadable_entry_is_skipped_not_fatal(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    stream = RedisStream(client, "test:events")
    await client.xadd("test:events", {"event": '{"kind": "from_a_newer_worker"}'})
    good = JobStarted(id="j:started", session="s", project="p", job="j", text="…")
    await stream.publish(good)
    (first_id, first), (_, second) = await stream.read("0-0", block_ms=10)
    assert first is None and second == good and first_id
    await client.aclose()
