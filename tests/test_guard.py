"""The aggregate's guard (db/aggregates.py): a write path that would change a counted status
without its counter delta is refused, and nothing of it is committed."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db import loads
from db.aggregates import insert_counted, marked_recalculated, update_counted
from db.errors import NotFound
from db.models import Invoice, Load
from db.organizations import ensure_organization
from db.postgres.reads import PostgresStatsReads
from db.queries import lock_row
from db.row_writes import Lock, Plan, Update, in_session, script_in_session
from db.sqlite.connections import ReadOnlyConnections
from db.unit_of_work import Database
from db.work import Script
from tests.helpers import Api, create_invoice, create_load, recount, stored


async def test_a_bulk_orm_write_to_a_counted_table_is_refused(api: Api, db: Database) -> None:
    load = await create_load(api)

    async def bulk(session: AsyncSession) -> None:
        await session.execute(update(Load).where(Load.id == int(load["id"])).values(status="ASSIGNED"))

    with pytest.raises(RuntimeError, match="bypass the aggregate"):
        await db.write(bulk)
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")


def core_update(load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        connection = await session.connection()
        await connection.execute(update(Load.__table__).where(Load.id == load_id).values(status="ASSIGNED"))

    return write


def text_update(load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        await session.execute(text("update loads set status = 'ASSIGNED' where id = :i"), {"i": load_id})

    return write


def driver_delete(load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        connection = await session.connection()
        await connection.exec_driver_sql(f'DELETE FROM "invoices" WHERE load_id = {load_id}')
        await connection.exec_driver_sql(f"DELETE FROM loads WHERE id = {load_id}")

    return write


def cte_update(load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        statement = "/* a comment */ WITH one AS (SELECT 1) UPDATE loads SET status = 'ASSIGNED' WHERE id = :i"
        await session.execute(text(statement), {"i": load_id})

    return write


def core_insert(_load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        connection = await session.connection()
        await connection.execute(insert(Load.__table__), [{"org_id": "org_a", "status": "OPEN", "load_type": "SPOT"}])

    return write


def core_delete(load_id: int) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def write(session: AsyncSession) -> None:
        connection = await session.connection()
        await connection.execute(delete(Invoice.__table__).where(Invoice.load_id == load_id))

    return write


@pytest.mark.parametrize("path", [core_update, text_update, cte_update, driver_delete, core_insert, core_delete])
async def test_a_write_path_outside_the_orm_cannot_forget_the_counters(
    api: Api, db: Database, path: Callable[[int], Callable[[AsyncSession], Awaitable[Any]]]
) -> None:
    """Whatever builds the statement (Core, text, driver SQL), a write to a counted table that
    is not the session's flush nor insert_counted's is refused at the engine: nothing committed."""
    load = await create_load(api)
    await create_invoice(api, load["id"])

    with pytest.raises(RuntimeError, match="bypass the aggregate"):
        await db.write(path(int(load["id"])))
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], counts["invoices_draft"], version) == (1, 0, 1, 2)
    assert counts == await recount(db, "org_a")


async def test_insert_counted_moves_the_counters_in_the_same_transaction(db: Database) -> None:
    async def work(session: AsyncSession) -> list[int]:
        rows = [{"org_id": "org_a", "status": s, "load_type": "SPOT"} for s in ("OPEN", "ASSIGNED", "OPEN")]
        inserted = await insert_counted(session, Load, rows)
        return [row.id for row in inserted]

    await db.write(lambda s: ensure_organization(s, "org_a"))
    ids = await db.write(work)
    assert len(set(ids)) == 3
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], counts["type_spot"], version) == (2, 1, 3, 1)
    assert counts == await recount(db, "org_a")


async def test_a_row_changed_without_its_lock_is_refused(api: Api, db: Database) -> None:
    """Deltas start from the row's locked current state; an unlocked change has none to start from."""
    load = await create_load(api)

    async def unlocked(session: AsyncSession) -> None:
        row = await session.get(Load, int(load["id"]))
        assert row is not None
        row.status = "ASSIGNED"
        await session.flush()

    with pytest.raises(RuntimeError, match="without being locked"):
        await db.write(unlocked)
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")


async def test_update_counted_moves_the_counters_from_the_locked_row_and_only_a_locked_one(
    api: Api, db: Database
) -> None:
    load = await create_load(api)
    other = await create_load(api)

    async def change(session: AsyncSession) -> Any:
        row = await lock_row(session, Load, load["id"], "org_a")
        same = await update_counted(session, Load, row, {"status": "OPEN"})  # changes nothing, writes nothing
        assert same is row
        return await update_counted(session, Load, row, {"status": "ASSIGNED"})

    changed = await db.write(change)
    assert changed.status == "ASSIGNED" and changed.updated_at >= changed.created_at
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 1, 3)

    async def unlocked(session: AsyncSession) -> None:
        table = Load.__table__
        read = select(*table.c).where(table.c.id == int(other["id"]))  # without FOR UPDATE
        row_of_other = (await (await session.connection()).execute(read)).one()
        await update_counted(session, Load, row_of_other, {"status": "ASSIGNED"})

    with pytest.raises(RuntimeError, match="without being locked"):
        await db.write(unlocked)

    async def also_an_orm_object(session: AsyncSession) -> None:
        row = await lock_row(session, Load, load["id"], "org_a")
        held = await session.get(Load, int(load["id"]))  # would go stale under a Core UPDATE
        assert held is not None
        await update_counted(session, Load, row, {"status": "OPEN"})

    with pytest.raises(RuntimeError, match="ORM object of this session"):
        await db.write(also_an_orm_object)
    assert await stored(db, "org_a") == (counts, version)
    assert counts == await recount(db, "org_a")


REFUSE_STATS_UPDATES = {
    "sqlite": [
        "CREATE TRIGGER refuse_stats BEFORE UPDATE ON organization_stats BEGIN SELECT RAISE(ABORT, 'refused'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_stats() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
        "CREATE TRIGGER refuse_stats BEFORE UPDATE ON organization_stats FOR EACH ROW EXECUTE FUNCTION refuse_stats()",
    ],
}
ALLOW_STATS_UPDATES = {
    "sqlite": ["DROP TRIGGER refuse_stats"],
    "postgresql": ["DROP TRIGGER refuse_stats ON organization_stats", "DROP FUNCTION refuse_stats()"],
}


async def run_sql(db: Database, statements: list[str]) -> None:
    async with db.engine.begin() as connection:
        for statement in statements:
            await connection.exec_driver_sql(statement)


async def test_a_counter_upsert_that_fails_fails_the_commit_and_keeps_nothing(api: Api, db: Database) -> None:
    """The counter upsert may run in COMMIT's own trip (SQLite's one-trip driver): when the
    database refuses it, the status change is not committed either, and the connection is
    left with nothing pending for the next transaction."""
    load = await create_load(api)
    dialect = db.engine.dialect.name
    await run_sql(db, REFUSE_STATS_UPDATES[dialect])
    body = await api.raw("mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { status } }", id=load["id"])
    assert body["errors"] and body["data"] is None
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")

    await run_sql(db, ALLOW_STATS_UPDATES[dialect])
    for _ in range(3):  # every pooled connection the failure may have used
        await create_load(api)
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (4, 0, 4)
    assert counts == await recount(db, "org_a")


# The driver path (db/row_writes.py): no engine sees its statements, so what guards it is its shape.


def yields_its_write(load_id: str) -> Plan:
    load = yield Lock(Load, load_id, None)
    yield Update(Load, load, {"status": "ASSIGNED"})  # type: ignore[misc]  # a write must be returned
    return Update(Load, load, {"status": "ASSIGNED"})


def moves_to_another_org(load_id: str) -> Plan:
    load = yield Lock(Load, load_id, None)
    return Update(Load, load, {"status": "ASSIGNED", "org_id": "org_b"})


def returns_no_write(load_id: str) -> Plan:
    yield Lock(Load, load_id, None)
    return None  # type: ignore[return-value]


def changes_a_row_it_did_not_lock(load_id: str) -> Plan:
    load = yield Lock(Load, load_id, None)
    made_up = SimpleNamespace(**{**load._asdict(), "status": "ASSIGNED"})  # counting from it would be wrong
    return Update(Load, made_up, {"status": "CANCELED"})


@pytest.mark.parametrize(
    "plan", [yields_its_write, moves_to_another_org, returns_no_write, changes_a_row_it_did_not_lock]
)
@pytest.mark.parametrize("runner", ["driver", "session"])
async def test_a_plan_writes_one_row_and_only_by_returning_it(
    api: Api, db: Database, plan: Callable[[str], Plan], runner: str
) -> None:
    """A plan's only way to write is the one Insert or Update it returns, which the runner counts
    from the row as locked: a plan that yields a write, returns none, changes a row that is not
    the one it locked, or moves a row to another org is refused on either runner, and nothing
    of it is committed."""
    load = await create_load(api)
    with pytest.raises(RuntimeError, match=r"returns its one write|another organization|without being locked"):
        if runner == "driver":
            await db.write_row(lambda: plan(load["id"]))
        else:
            await db.write(lambda s: in_session(s, plan(load["id"])))
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")


def a_script_that_writes_loads(_dialect: str) -> Script[tuple[None, list[str]]]:
    yield from marked_recalculated(["org_a"])
    yield update(Load).values(status="CANCELED"), {}
    return None, []


@pytest.mark.parametrize("runner", ["driver", "session"])
async def test_a_script_cannot_write_a_counted_table(api: Api, db: Database, runner: str) -> None:
    """Scripts (a recalculation's writes) run on the driver too, and write no counted table:
    the statement is refused on either runner and the whole transaction rolls back."""
    await create_load(api)
    with pytest.raises(RuntimeError, match=r"cannot write loads|would bypass the aggregate"):
        if runner == "driver" and db.driver_row_writes:
            await db.write_script(a_script_that_writes_loads)
        else:
            await db.write(lambda s: script_in_session(s, a_script_that_writes_loads(db.engine.dialect.name)))
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_canceled"], version) == (1, 0, 1)
    stats = await db.read_stats("org_a")
    assert stats.last_recalculated_at is None  # the script's first statement rolled back too


async def test_a_plan_on_the_driver_counts_from_the_locked_row(api: Api, db: Database) -> None:
    """A status change moves the counters from the row as locked, to what it wrote; a change
    of nothing writes nothing (no version); an unknown id is NOT_FOUND with nothing written."""
    load = await create_load(api)
    for status in ("ASSIGNED", "ASSIGNED", "OPEN", "CANCELED"):
        row = await db.write_row(lambda status=status: loads.set_load_status(load["id"], status, "org_a"))
        assert row.status == status
    with pytest.raises(NotFound):
        await db.write_row(lambda: loads.set_load_status(load["id"], "OPEN", "org_b"))  # not in org_b
    with pytest.raises(NotFound):
        await db.write_row(lambda: loads.set_load_status("12x", "OPEN", None))
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], counts["loads_canceled"], version) == (0, 0, 1, 4)
    assert counts == await recount(db, "org_a")


# Every app module that reaches past SQLAlchemy to a driver connection, and what keeps it honest.
DRIVER_MODULES = {
    "db/row_writes.py": "counted writes: plans return their one write, the runner counts it",
    "db/sqlite/driver.py": "the DBAPI adapter under the engine, whose guard sees every statement",
    "db/engine.py": "connection pragmas, and statements kept for the driver's next trip (counted by their callers)",
    "db/sqlite/connections.py": "read-only (PRAGMA query_only), or db/sqlite/inline_writes.py's",
    "db/sqlite/inline_writes.py": "runs BEGIN IMMEDIATE only, and hands its connection to db/row_writes.py's runner",
    "db/unit_of_work.py": "makes the inline writer, for db/row_writes.py's runner only",
    "db/sqlite_follower.py": "read-only: PRAGMA query_only",
    "db/sqlite/checkpoints.py": "PRAGMA wal_checkpoint (and page_size) only: copies committed pages, changes no row",
    "db/sqlite/page_size.py": "main.py vacuum: VACUUM and pragmas, with the file to itself; rewrites pages, changes no row",
    "db/postgres/reads.py": "read-only: default_transaction_read_only",
}
DRIVER_ENTRY = re.compile(
    r"driver_connection|get_raw_connection|dbapi_connection|sqlite3\.connect|asyncpg\.connect|create_pool|connection\._conn\b"
    r"|ThreadConnections|InlineWrites"
)
APP_SOURCES = ["main.py", "settings.py", *(f"{p}/**/*.py" for p in ("api", "db", "edge", "resolvers", "schema", "web"))]


def test_only_known_modules_reach_a_driver_connection() -> None:
    """A new write path on a raw connection would bypass the engine's guard: it cannot appear
    without being added here, with what keeps it from forgetting the counters."""
    root = Path(__file__).parent.parent
    reaching = {
        str(path.relative_to(root))
        for pattern in APP_SOURCES
        for path in root.glob(pattern)
        if DRIVER_ENTRY.search(path.read_text())
    }
    assert reaching == set(DRIVER_MODULES)


async def test_the_read_only_driver_connections_cannot_write(db: Database) -> None:
    await create_org(db)
    if db.engine.dialect.name == "sqlite":
        for connection in (ReadOnlyConnections(str(db.engine.url.database)).this_thread(),):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                connection.execute("UPDATE organization_stats SET version = 99")
        return
    reads = PostgresStatsReads(db.engine.url, 1)
    try:
        await reads.read("org_a")
        connection = await reads._slots.get()
        assert connection is not None
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await connection.execute("UPDATE organization_stats SET version = 99")
        reads._slots.put(connection)
    finally:
        await reads.close()


async def create_org(db: Database) -> None:
    await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
