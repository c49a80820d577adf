"""SQLite's one-trip driver (db/sqlite/driver.py): each trip to aiosqlite's worker thread costs
CPU on two threads, so a write makes as few as it can: BEGIN and a statement nobody reads (the
org's upsert) ride with the next statement, the counter upsert with COMMIT, and the pool's
reset after COMMIT makes none. A one-row write on the driver makes none at all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiosqlite.core
import pytest

from db import loads
from db.row_writes import in_session
from db.sqlite.driver import OneTripDbapi
from db.unit_of_work import Database
from tests.helpers import recount, stored


def skip_unless_one_trip_driver(db: Database) -> None:
    if not isinstance(db.engine.sync_engine.dialect.dbapi, OneTripDbapi):
        pytest.skip("SQLite's one-trip driver (PostgreSQL, or TALLY_SQLITE_FAST_PATHS=0)")


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the functions run on aiosqlite's worker threads (instrumentation: each call goes through)."""
    made: list[str] = []
    original = aiosqlite.core.Connection._execute

    async def counted(self: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(getattr(function, "__name__", repr(function)))
        return await original(self, function, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.core.Connection, "_execute", counted)
    yield made


async def test_a_write_makes_one_trip_per_statement(db: Database, trips: list[str]) -> None:
    """Through a session (the fast paths off, or a write of many rows)."""
    skip_unless_one_trip_driver(db)
    created = await db.write(lambda s: in_session(s, loads.create_load("org_a", status="OPEN", load_type="SPOT")))
    trips.clear()
    created = await db.write(lambda s: in_session(s, loads.create_load("org_a", status="OPEN", load_type="SPOT")))
    assert trips == ["_execute", "_commit"]  # BEGIN + org upsert + INSERT, counters + COMMIT

    trips.clear()
    await db.write(lambda s: in_session(s, loads.set_load_status(str(created.id), "ASSIGNED", None)))
    assert trips == ["_execute", "_execute", "_commit"]  # BEGIN + SELECT FOR UPDATE, UPDATE, counters + COMMIT

    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 1, 3)
    assert counts == await recount(db, "org_a")


async def test_a_one_row_write_on_the_driver_makes_no_trip(db: Database, trips: list[str]) -> None:
    """createLoad and a status change (db/row_writes.py): BEGIN IMMEDIATE to COMMIT inline on the
    event loop's thread (db/sqlite/inline_writes.py); in one trip only when the write lock is taken
    (tests/test_row_writes.py)."""
    skip_unless_one_trip_driver(db)
    created = await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
    trips.clear()
    created = await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
    await db.write_row(lambda: loads.set_load_status(str(created.id), "ASSIGNED", None))
    assert trips == []

    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 1, 3)
    assert counts == await recount(db, "org_a")


async def test_a_transaction_that_ran_nothing_makes_no_trip(db: Database, trips: list[str]) -> None:
    skip_unless_one_trip_driver(db)

    async def nothing(_session: Any) -> None:
        return None

    await db.write(nothing)  # a connection opened now makes its own trips (functions, pragmas)
    trips.clear()
    await db.write(nothing)
    await db.read(nothing)
    assert trips == []


async def test_a_statement_that_waited_for_the_next_trip_fails_that_trip_and_nothing_is_kept(
    db: Database, trips: list[str]
) -> None:
    """The org's upsert waits for the INSERT's trip: when SQLite refuses it, the INSERT fails
    with it, nothing is committed, and the connection carries nothing into the next write."""
    skip_unless_one_trip_driver(db)
    async with db.engine.begin() as connection:
        await connection.exec_driver_sql(
            "CREATE TRIGGER refuse_orgs BEFORE INSERT ON organizations BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(Exception, match="refused"):
        await db.write(lambda s: in_session(s, loads.create_load("org_new", status="OPEN", load_type="SPOT")))
    assert await recount(db, "org_new") == await recount(db, "org_none")  # all zero
    async with db.engine.begin() as connection:
        await connection.exec_driver_sql("DROP TRIGGER refuse_orgs")

    for _ in range(3):  # on every pooled connection the failure may have used
        await db.write(lambda s: in_session(s, loads.create_load("org_new", status="OPEN", load_type="SPOT")))
    counts, version = await stored(db, "org_new")
    assert (counts["loads_open"], version) == (3, 3)
    assert counts == await recount(db, "org_new")
