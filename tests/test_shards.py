"""TALLY_STATS_SHARDS: a hot org's counters spread over several rows, read as one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from db.loads import create_load
from db.row_writes import in_session
from db.shared_reads import SharedReads
from db.unit_of_work import Database
from main import create_app
from settings import Settings
from tests.helpers import Api, Counted, recount, stored, token

CREATE = 'mutation { createLoad(input: {orgId: "org_a"}) { id } }'


@pytest.fixture
async def sharded(database_url: str) -> AsyncIterator[tuple[Api, Database]]:
    app = create_app(Settings(database_url=database_url, stats_shards=4, query_stats=True, recalc_interval_seconds=0))
    await app.state.hub.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally") as client:
        yield Api(client, token("org_a", "admin")), app.state.db
    await app.state.hub.stop()
    await app.state.db.dispose()


async def test_sharded_counts_are_exact_and_read_in_one_statement(sharded: tuple[Api, Database]) -> None:
    api, db = sharded
    hub = api.client._transport.app.state.hub  # type: ignore[attr-defined]
    async with hub.subscribe("org_a") as mailbox:
        ids = await asyncio.gather(*(api.ok(CREATE) for _ in range(40)))
        for data in ids[:10]:
            await api.ok(
                "mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { id } }", id=data["createLoad"]["id"]
            )
        counts, version = await stored(db, "org_a")
        assert counts == await recount(db, "org_a")
        assert version == 50 and counts["loads_open"] == 30 and counts["loads_assigned"] == 10
        assert (await asyncio.wait_for(mailbox.newer_than(49), 5)).version == 50
    async with db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT COUNT(*) FROM organization_stats WHERE org_id = 'org_a'"))).scalar()
    assert 1 < rows <= 4
    body = await api.raw('{ organizationStats(orgId: "org_a") { version loads { open } } }')
    assert body["data"]["organizationStats"] == {"version": 50, "loads": {"open": 30}}
    assert body["extensions"]["queryStats"]["statements"] == 1


async def test_recalculation_corrects_a_sharded_org(sharded: tuple[Api, Database]) -> None:
    api, db = sharded
    for _ in range(12):
        await api.ok(CREATE)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE organization_stats SET loads_open = loads_open + 1"))
    report = (await api.ok('{ driftReport(orgId: "org_a") { ok drift { counter stored actual } } }'))["driftReport"]
    assert report["ok"] is False and report["drift"][0]["actual"] == 12
    fixed = await api.ok(
        'mutation { recalculateOrgStats(orgId: "org_a") { corrected { counter } stats { loads { open } } } }'
    )
    assert fixed["recalculateOrgStats"]["stats"]["loads"]["open"] == 12
    counts, _ = await stored(db, "org_a")
    assert counts == await recount(db, "org_a")


async def test_concurrent_sharded_writes_share_reads_that_start_after_their_commits(
    sharded: tuple[Api, Database],
) -> None:
    """Every writer publishes a snapshot read after its commit; the last holds every write."""
    api, db = sharded
    await api.ok(CREATE)
    _, before = await stored(db, "org_a")
    reads = Counted(db.stats.read)
    db._stats_reads = SharedReads(reads)
    db.after_commit.wanted = lambda _org_id: True  # as when a subscriber listens
    results = await asyncio.gather(
        *(
            db.write_with_snapshots(lambda s: in_session(s, create_load("org_a", status="OPEN", load_type="UNMAPPED")))
            for _ in range(30)
        )
    )
    versions = [snapshots[0].version for _, snapshots in results]
    _, after = await stored(db, "org_a")
    assert after == before + 30 and max(versions) == after
    if db.engine.dialect.name == "postgresql":  # SQLite commits one at a time; each read is instant
        assert reads.calls < 30  # writers that committed together shared a read


async def test_concurrent_count_queries_share_reads_and_each_sees_what_was_committed_before_it(
    sharded: tuple[Api, Database],
) -> None:
    """32 clients polling one org's counts: those that ask while its read is in flight share the next."""
    api, db = sharded
    reads = Counted(db.stats.read)
    db._stats_reads = SharedReads(reads)
    query = '{ organizationStats(orgId: "org_a") { version loads { open } } }'
    for expected in (1, 2):
        await api.ok(CREATE)  # committed before the queries below are sent
        reads.calls = 0
        bodies = await asyncio.gather(*(api.raw(query) for _ in range(32)))
        assert {b["data"]["organizationStats"]["version"] for b in bodies} == {expected}
        assert {b["data"]["organizationStats"]["loads"]["open"] for b in bodies} == {expected}
        # Each response reports the statements it ran: one, or none for a read it shared.
        statements = [b["extensions"]["queryStats"]["statements"] for b in bodies]
        assert set(statements) <= {0, 1} and sum(statements) >= 1
        if db.engine.dialect.name == "postgresql":  # SQLite's read is inline: nothing is in flight
            assert 1 <= reads.calls < 32


async def test_a_shared_read_starts_after_each_of_its_callers() -> None:
    started: list[float] = []

    async def read(org_id: str) -> int:
        started.append(time.monotonic())
        await asyncio.sleep(0.02)
        return len(started)  # which read answered

    reads = SharedReads(read)  # type: ignore[arg-type]

    async def caller(delay: float) -> tuple[float, int]:
        await asyncio.sleep(delay)
        called = time.monotonic()
        return called, await reads.read("org_a")

    answered = await asyncio.gather(*(caller(0) for _ in range(10)), *(caller(0.01) for _ in range(10)))
    assert len(started) == 2  # one read for the first ten, one for the ten that came during it
    for called, read_number in answered:
        assert started[read_number - 1] >= called
