"""Redis outages are logged once each: a WARNING when the channel goes down, an INFO
(with the number of failed publishes) when it recovers, and no task left pending."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time

import pytest

from db.aggregates import StatsSnapshot
from db.broadcast import StatsHub
from db.tasks import finish
from tests.live import RedisServer, redis_server
from tests.test_hub import snapshot

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

OUTAGES = 2
RECOVERED = re.compile(r"recovered after [\d.]+ s; (\d+) publishes failed")


async def wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_each_redis_outage_logs_one_warning_and_one_recovery(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    committed = snapshot(0)

    async def read(org: str) -> StatsSnapshot:
        return committed

    hub = StatsHub(redis_server.url, read, heartbeat_seconds=0.2)

    async def commit_continuously() -> None:
        nonlocal committed
        while True:
            committed = snapshot(committed.version + 1)
            await hub.publish([committed])
            await asyncio.sleep(0.005)

    await hub.start()
    writer = asyncio.create_task(commit_continuously())
    try:
        async with hub.subscribe("org_a") as mailbox:
            for outage in range(1, OUTAGES + 1):
                await asyncio.sleep(0.3)
                redis_server.stop()
                await asyncio.sleep(1.0)
                redis_server.start()
                await wait_until(lambda: len(RECOVERED.findall(caplog.text)) == outage, 15)  # noqa: B023
            await finish([writer])  # one cancel may be swallowed in redis-py (db/tasks.py)
            assert (await asyncio.wait_for(mailbox.newer_than(committed.version - 1), 5)).version == committed.version
    finally:
        await finish([writer])
        await hub.stop()
    failures = hub.snapshot_metrics()["publish_failures"]
    gc.collect()
    await asyncio.sleep(0.1)  # a destroyed pending task is reported from the loop's exception handler

    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in records if r.name == "tally.broadcast"] == [
        r.getMessage() for r in records if "is down" in r.getMessage()
    ]
    assert len(records) == OUTAGES, [r.getMessage() for r in records]
    recovered = [int(n) for n in RECOVERED.findall(caplog.text)]
    assert len(recovered) == OUTAGES and all(n > 0 for n in recovered)
    assert sum(recovered) == failures
    assert "Task was destroyed" not in caplog.text
    assert "never retrieved" not in caplog.text
