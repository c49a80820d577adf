"""One-row writes on the driver (db/row_writes.py) when things go wrong: a connection the
server dropped, a write cancelled mid-transaction, a database that refuses a statement.
Each leaves the counts exact and the pool's connections usable."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from db import loads
from db.row_writes import Plan
from db.unit_of_work import Database
from tests.helpers import recount, stored

ORG = "org_a"


def create() -> Plan:
    return loads.create_load(ORG, status="OPEN", load_type="SPOT")


@pytest.fixture
async def driver_db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, pool_size=2, driver_row_writes=True)
    yield db
    await db.dispose()


async def assert_exact(db: Database, open_: int, assigned: int, version: int) -> None:
    counts, stored_version = await stored(db, ORG)
    assert (counts["loads_open"], counts["loads_assigned"], stored_version) == (open_, assigned, version)
    assert counts == await recount(db, ORG)


async def test_a_write_whose_connection_the_server_dropped_runs_again_on_a_new_one(driver_db: Database) -> None:
    db = driver_db
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a SQLite connection is a file: nothing drops it")
    await asyncio.gather(db.write_row(create), db.write_row(create))  # both pooled connections opened
    async with db.engine.connect() as admin:
        await admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    for _ in range(3):
        row = await db.write_row(create)
        assert row.status == "OPEN"
    assert db.write_retries >= 1
    await assert_exact(db, 5, 0, 5)


@contextlib.asynccontextmanager
async def lock_held(db: Database, load_id: int) -> AsyncIterator[None]:
    """Another transaction holds the load's row (PostgreSQL) or SQLite's one write lock."""
    if db.engine.dialect.name == "postgresql":
        async with db.engine.connect() as holder:
            await holder.execute(text("SELECT id FROM loads WHERE id = :id FOR UPDATE"), {"id": load_id})
            yield
            await holder.rollback()
        return
    holder = sqlite3.connect(str(make_url(db.url).database), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_write_cancelled_mid_transaction_leaves_nothing_behind(driver_db: Database) -> None:
    """Cancelled while it waits for a lock another transaction holds (on SQLite the write lock, so
    it waits on a pooled connection's worker thread, not inline): nothing is written, the
    connection does not go back to the pool inside a transaction, and the next writes count."""
    db = driver_db
    created = await db.write_row(create)
    async with lock_held(db, created.id):
        waiting = asyncio.create_task(db.write_row(lambda: loads.set_load_status(str(created.id), "ASSIGNED", ORG)))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the lock
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    for _ in range(4):  # every pooled connection
        load = await db.write_row(create)
        await db.write_row(lambda load=load: loads.set_load_status(str(load.id), "ASSIGNED", ORG))
    counts, _ = await stored(db, ORG)
    assert counts["loads_assigned"] in (4, 5)  # 5 if the cancelled change (SQLite) went once the lock was free
    assert counts == await recount(db, ORG)


async def test_a_refused_write_rolls_back_the_whole_transaction(driver_db: Database) -> None:
    """The database refuses the write (a trigger): the org's creation and the counter upsert
    that went with it are rolled back too, and the error is SQLAlchemy's, for the retries."""
    db = driver_db
    statements = {
        "sqlite": ["CREATE TRIGGER refuse_loads BEFORE INSERT ON loads BEGIN SELECT RAISE(ABORT, 'refused'); END"],
        "postgresql": [
            "CREATE FUNCTION refuse_loads() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
            "CREATE TRIGGER refuse_loads BEFORE INSERT ON loads FOR EACH ROW EXECUTE FUNCTION refuse_loads()",
        ],
    }[db.engine.dialect.name]
    async with db.engine.begin() as connection:
        for statement in statements:
            await connection.exec_driver_sql(statement)
    with pytest.raises(Exception, match="refused") as raised:
        await db.write_row(create)
    assert type(raised.value).__module__.startswith("sqlalchemy")
    async with db.engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM organizations"))).scalar() == 0
    await assert_exact(db, 0, 0, 0)


async def test_a_write_that_finds_the_write_lock_taken_waits_for_it_without_blocking_the_loop(
    driver_db: Database,
) -> None:
    """SQLite: the write runs inline on the event loop's thread only when it gets the write lock at
    once (db/sqlite/inline_writes.py); held by another connection, the write waits on a worker
    thread while the loop goes on, and commits, counted, once the lock is free."""
    db = driver_db
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no database-wide write lock")
    created = await db.write_row(create)
    async with lock_held(db, created.id):
        waiting = asyncio.create_task(db.write_row(lambda: loads.set_load_status(str(created.id), "ASSIGNED", ORG)))
        started = time.perf_counter()
        for _ in range(30):
            await asyncio.sleep(0.01)
        assert time.perf_counter() - started < 1.0  # the loop was never blocked for the lock
        assert not waiting.done()
    assert (await waiting).status == "ASSIGNED"
    await assert_exact(db, 0, 1, 2)


async def test_a_transaction_left_open_on_the_inline_connection_is_undone_by_the_next_write(
    driver_db: Database,
) -> None:
    """An interruption between the inline writer's BEGIN and its runner (db/sqlite/inline_writes.py)
    leaves the transaction open, holding the write lock: the next write undoes it and goes on."""
    db = driver_db
    if db._inline_writes is None:
        pytest.skip("SQLite's inline writer (a database file, fast paths on)")
    created = await db.write_row(create)
    connection = db._inline_writes.begin(("BEGIN IMMEDIATE", ()))
    assert connection is not None
    connection.execute("UPDATE loads SET status = 'CANCELED' WHERE id = ?", (created.id,))  # and then nothing
    await db.write_row(create)
    await assert_exact(db, 2, 0, 2)  # the half-done change is gone, the new load counted
