"""StatsHub in-process: bounded mailboxes, event encoding, clean unsubscribe."""

from __future__ import annotations

import asyncio
import gc
import weakref
from functools import partial

from db.aggregates import COUNTERS, StatsSnapshot
from db.broadcast import LatestSnapshot, StatsHub, decode, encode
from db.loads import create_load
from db.row_writes import in_session
from db.unit_of_work import Database
from tests.live import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest


def snapshot(version: int, org: str = "org_a") -> StatsSnapshot:
    return StatsSnapshot(org, dict.fromkeys(COUNTERS, version), version, None, None)


async def test_a_slow_subscriber_holds_only_the_newest_snapshot() -> None:
    mailbox = LatestSnapshot()
    offered: list[weakref.ref[StatsSnapshot]] = []
    for version in [*range(1, 10_001), 5]:  # the last, older one arrives late and is ignored
        event = snapshot(version)
        offered.append(weakref.ref(event))
        mailbox.offer(event)
        del event
    gc.collect()
    kept = [event.version for ref in offered if (event := ref()) is not None]
    assert kept == [10_000]  # O(1) whatever the backlog: every other snapshot is garbage
    assert (await mailbox.newer_than(None)).version == 10_000


async def test_events_round_trip_as_json() -> None:
    original = snapshot(7)
    assert decode(encode(original)) == original


async def test_unsubscribing_leaves_no_channel_reader() -> None:
    async def read(org: str) -> StatsSnapshot:
        return snapshot(0, org)

    hub = StatsHub("memory://", read)
    await hub.start()
    try:
        async with hub.subscribe("org_a") as first, hub.subscribe("org_a"):
            assert hub.snapshot_metrics()["subscribers"] == 2
            assert hub.snapshot_metrics()["channels"] == 1
            await hub.publish([snapshot(3)])
            assert (await asyncio.wait_for(first.newer_than(None), 2)).version == 3
        metrics = hub.snapshot_metrics()
        assert metrics["subscribers"] == 0 and metrics["channels"] == 0
    finally:
        await hub.stop()


async def test_over_memory_only_orgs_with_a_subscriber_here_are_read_after_commit(database_url: str) -> None:
    """memory:// reaches only this process: a commit nobody here listens to reads and sends nothing."""
    db = Database(database_url)
    hub = StatsHub("memory://", db.read_stats, database_url=database_url)
    db.after_commit.append(hub.publish)
    db.after_commit.wanted = hub.hears_of
    await hub.start()
    create = partial(create_load, status="OPEN", load_type="UNMAPPED")
    try:
        for org_id in ("org_a", "org_b"):
            await db.write_row(partial(create, org_id=org_id))
        _, unheard = await db.write_with_snapshots(lambda s: in_session(s, create(org_id="org_a")))
        assert unheard == [] and hub.metrics.published == 0
        async with hub.subscribe("org_a") as mailbox:
            _, heard = await db.write_with_snapshots(lambda s: in_session(s, create(org_id="org_a")))
            assert [s.org_id for s in heard] == ["org_a"] and hub.metrics.published == 1
            assert (await asyncio.wait_for(mailbox.newer_than(None), 2)).counts["loads_open"] == 3
            await db.write_row(partial(create, org_id="org_b"))
            assert hub.metrics.published == 1
    finally:
        await hub.stop()
        await db.dispose()


async def test_a_failed_publish_reaches_other_processes_once_the_channel_answers(redis_server: RedisServer) -> None:
    """No later commit needed: the org's current snapshot is published again."""
    committed = snapshot(5)

    async def read(org: str) -> StatsSnapshot:
        return committed

    publisher, listener = (StatsHub(redis_server.url, read, heartbeat_seconds=0.2) for _ in range(2))
    await publisher.start()
    await listener.start()
    try:
        async with listener.subscribe("org_a") as mailbox:
            publisher.publish_timeout = 0  # every publish times out now
            await publisher.publish([committed])
            publisher.publish_timeout = 2.0
            assert publisher.snapshot_metrics()["publish_failures"] == 1
            received = await asyncio.wait_for(mailbox.newer_than(None), 15)
            assert received == committed
            assert publisher.snapshot_metrics()["republished"] == 1
    finally:
        await publisher.stop()
        await listener.stop()
