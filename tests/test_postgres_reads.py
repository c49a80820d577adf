"""PostgreSQL's count-read fast path (db/postgres/reads.py): fixed connections, no session churn,
and a read that survives a server-side disconnect or its own cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from db import loads
from db.money_reads import AGING, aging_parameters, receivables_aging
from db.organizations import create_organization
from db.postgres.reads import SESSION, Slots
from db.prepared import prepared
from db.queries import get_stats
from db.unit_of_work import Database
from tests.databases import PG_SERVER, Databases, make_databases

pytestmark = pytest.mark.slow
ORG = "org_reads"
TRANSACTION_POOL, READ_POOL = 3, 2


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    made = make_databases("postgresql", tmp_path_factory.mktemp("pg_reads"))
    yield made
    made.drop_all()


@pytest.fixture
async def db(postgres: Databases) -> AsyncIterator[Database]:
    url = postgres.migrated()
    database = Database(url, pool_size=TRANSACTION_POOL, postgres_read_pool=READ_POOL)
    assert database.stats.postgres is not None  # the fast path is what this file tests
    await database.write(lambda s: create_organization(s, ORG, "Reads"))
    await database.write_row(lambda: loads.create_load(ORG, status="OPEN", load_type="UNMAPPED"))  # version 1
    yield database
    await database.dispose()
    postgres.drop(url)


async def server_side(db: Database, sql: str) -> int:
    """One figure about this test's database, read over a connection of its own."""
    name = db.url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        return int(await connection.fetchval(sql, name))
    finally:
        await connection.close()


SESSIONS = "SELECT sessions FROM pg_stat_database WHERE datname = $1"
CONNECTED = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"


async def load_of(db: Database, readers: int, writers: int, rounds: int) -> None:
    async def read() -> None:
        for _ in range(rounds):
            await db.stats.read(ORG)

    async def write() -> None:
        for _ in range(rounds // 10):
            await db.write_row(lambda: loads.create_load(ORG, status="OPEN", load_type="UNMAPPED"))

    await asyncio.gather(*(read() for _ in range(readers)), *(write() for _ in range(writers)))


async def test_a_steady_load_opens_no_sessions(db: Database) -> None:
    await load_of(db, readers=32, writers=8, rounds=20)  # warm-up: every connection opened
    await asyncio.sleep(0.5)  # pg_stat_database is updated when a backend reports its counters
    before = await server_side(db, SESSIONS)
    await load_of(db, readers=32, writers=8, rounds=100)
    assert await server_side(db, CONNECTED) <= TRANSACTION_POOL + READ_POOL
    await asyncio.sleep(0.5)
    assert await server_side(db, SESSIONS) == before
    stats = await db.stats.read(ORG)
    assert stats.counts["loads_open"] == 1 + 8 * (20 // 10 + 100 // 10)


async def test_the_shard_rows_summed_are_what_the_summing_statement_answers(db: Database) -> None:
    """The fast path reads the org's shard rows and sums them itself (STATS_ROWS_QUERY); the
    other paths read STATS_QUERY, which sums them in SQL. Both answer the same snapshot."""
    one_row = await db.stats.read(ORG)
    assert one_row == await db.read(lambda s: get_stats(s, ORG))
    async with db.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO organization_stats (org_id, shard, version, corrections, updated_at, "
                "last_recalculated_at, loads_open, invoices_paid, money_invoiced, money_collected, "
                "loads_assigned) VALUES "
                "(:org, 1, 5, 0, '2030-01-02T03:04:05.123456+00:00', NULL, 2, 3, 1000, 400, 0), "
                "(:org, 2, 7, 1, '2020-01-01T00:00:00+00:00', '2031-05-06T00:00:00+00:00', -1, 0, 5, 5, 4)"
            ),
            {"org": ORG},
        )
    summed = await db.stats.read(ORG)
    assert summed == await db.read(lambda s: get_stats(s, ORG))
    assert summed.version == one_row.version + 12
    assert summed.counts["loads_open"] == one_row.counts["loads_open"] + 1
    assert summed.counts["money_invoiced"] == 1005 and summed.counts["loads_assigned"] == 4
    assert summed.updated_at is not None and summed.updated_at.year == 2030
    assert summed.last_recalculated_at is not None and summed.last_recalculated_at.year == 2031
    assert await db.stats.read("org_nobody") == await db.read(lambda s: get_stats(s, "org_nobody"))


async def test_every_read_connection_keeps_one_plan_per_statement(db: Database) -> None:
    """The aging statement was planned anew at every call when PostgreSQL chose (~0.3 ms of its CPU a
    read): the read connections keep one plan per statement, whatever the statement's estimates."""
    calls = 6  # on each connection: past the 5 after which PostgreSQL weighs keeping a plan
    for _ in range(READ_POOL * calls):  # the connections take turns
        await receivables_aging(db, ORG, date(2026, 12, 31), 20)
    assert db.stats.postgres is not None
    slots = db.stats.postgres._slots
    connections = [await slots.get() for _ in range(READ_POOL)]
    try:
        for connection in connections:
            assert connection is not None
            assert await connection.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
            if connection.get_server_version().major < 14:  # pg_prepared_statements counts plans from 14
                continue
            plans = await connection.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'WITH first_customers%'"
            )
            assert [tuple(row) for row in plans] == [(calls, 0)]  # (made once, used every call; planned per call)
    finally:
        for connection in connections:
            slots.put(connection)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


async def test_the_aging_plan_reads_only_the_orgs_last_90_days(db: Database) -> None:
    """The plan the read connections keep (generic) reads the org's recent days by index: with an open
    range it guessed a third of the org's days and scanned them all, so a read grew with history."""
    dsn = f"{PG_SERVER}/{db.url.rsplit('/', 1)[1]}"
    writer = await asyncpg.connect(dsn)
    try:
        await writer.execute(  # three years of days, as a busy org has
            "INSERT INTO receivable_days (org_id, invoice_date, invoices, balance) "
            "SELECT $1, DATE '2024-01-01' + day, 1, 100 FROM generate_series(0, 1094) AS day",
            ORG,
        )
        await writer.execute("ANALYZE receivable_days")
    finally:
        await writer.close()
    connection = await asyncpg.connect(dsn, server_settings=SESSION)  # as a read connection is
    try:
        statement = prepared(AGING["postgresql"], "postgresql")
        values = statement.values(aging_parameters(ORG, date(2026, 12, 31), 20))
        await connection.execute(f"PREPARE aging AS {statement.sql}")
        arguments = ", ".join(f"'{value}'" for value in values)
        explained = await connection.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE aging({arguments})")
        nodes = list(_nodes(json.loads(explained)[0]["Plan"]))
        assert not [n for n in nodes if n.get("Relation Name") == "receivable_days" and n["Node Type"] == "Seq Scan"]
        by_index = [n.get("Index Cond", "") for n in nodes if n.get("Index Name") == "pk_receivable_days"]
        # both bounds of the range in the index's condition, the first a parameter (the generic plan)
        assert [c for c in by_index if "invoice_date >= $" in c and "infinity" in c], by_index
    finally:
        await connection.close()


async def test_a_read_survives_the_server_dropping_its_connections(db: Database) -> None:
    assert (await db.stats.read(ORG)).version == 1
    name = db.url.rsplit("/", 1)[1]
    connection = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        dropped = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await connection.close()
    assert dropped >= 1
    for _ in range(2 * READ_POOL):  # every slot meets its dead connection once
        assert (await db.stats.read(ORG)).version == 1


async def test_a_cancelled_read_leaves_its_slot_usable(db: Database) -> None:
    for _ in range(5):
        task = asyncio.create_task(db.stats.read(ORG))
        await asyncio.sleep(0)  # under way: waiting for PostgreSQL's answer or for its connection
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    reads = await asyncio.gather(*(db.stats.read(ORG) for _ in range(4 * READ_POOL)))
    assert {stats.version for stats in reads} == {1}


def test_without_the_fast_path_reads_go_through_the_engine(tmp_path: Path) -> None:
    database = Database("postgresql+asyncpg://postgres@127.0.0.1:5432/unused", postgres_read_pool=0)
    assert database.stats.postgres is None


async def test_a_connection_put_back_goes_to_the_longest_waiter_not_a_newcomer() -> None:
    """First come, first served (db/postgres/reads.py's Slots): with asyncio.Queue a read that
    arrives as a connection is put back takes it, and the woken waiter queues again at the back,
    so under load a few reads wait for many others (p99 ~70x the median at 32 clients)."""
    slots = Slots(["connection"])
    order: list[str] = []

    async def read(name: str) -> None:
        item = await slots.get()
        order.append(name)
        await asyncio.sleep(0)
        slots.put(item)

    first = await slots.get()
    waiting = [asyncio.create_task(read(name)) for name in ("a", "b")]
    await asyncio.sleep(0)  # both wait
    newcomer = asyncio.create_task(read("newcomer"))  # its first step runs before "a" wakes ...
    slots.put(first)  # ... to the connection handed to "a": it must not take it
    await asyncio.gather(*waiting, newcomer)
    assert order == ["a", "b", "newcomer"]


async def test_a_wait_cancelled_as_it_is_handed_a_connection_passes_it_on() -> None:
    slots = Slots(["connection"])
    held = await slots.get()
    cancelled, next_in_line = asyncio.create_task(slots.get()), asyncio.create_task(slots.get())
    await asyncio.sleep(0)
    slots.put(held)  # handed to the first waiter ...
    cancelled.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await asyncio.wait_for(next_in_line, 1) == "connection"
    assert slots.take_free() == []


async def test_a_wait_cancelled_before_a_connection_comes_back_leaves_it_free() -> None:
    slots = Slots(["connection"])
    held = await slots.get()
    waiting = asyncio.create_task(slots.get())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while it waits ...
    slots.put(held)  # ... and passed by as the connection comes back, before the wait ends
    with pytest.raises(asyncio.CancelledError):  # not a ValueError from a waiter already passed by
        await waiting
    assert slots.take_free() == ["connection"]
