"""SQLite's log is checkpointed by its own thread (db/sqlite/checkpoints.py), not inside a
writer's COMMIT."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path

import pytest

from db import loads
from db.sqlite.checkpoints import CHECKPOINT_SECONDS, Checkpoints
from db.unit_of_work import Database
from tests.helpers import recount, stored


def log_frames(path: str) -> tuple[int, int]:
    """The frames in the log and those copied back (mxFrame, nBackfill), read from the
    WAL-index file as https://sqlite.org/walformat.html lays it out: reading it copies nothing."""
    header = Path(path + "-shm").read_bytes()[:100]
    return int.from_bytes(header[16:20], sys.byteorder), int.from_bytes(header[96:100], sys.byteorder)


@pytest.fixture
def sqlite_db(db: Database) -> Database:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write-ahead log")
    return db


async def test_writers_leave_checkpoints_to_the_thread_and_it_copies_the_log(sqlite_db: Database) -> None:
    db = sqlite_db
    async with db.engine.connect() as connection:
        autocheckpoint = (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
    assert autocheckpoint == 0  # no COMMIT of a writer copies the log back

    load = await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
    for status in ["ASSIGNED", "OPEN"] * 50:
        await db.write_row(partial(loads.set_load_status, load_id=str(load.id), status=status, scope="org_a"))
    path = str(db.engine.url.database)
    for _ in range(40):  # the thread copies every committed frame within a few of its periods
        await asyncio.sleep(CHECKPOINT_SECONDS)
        frames, copied = log_frames(path)
        if frames == copied:
            break
    assert frames == copied > 0
    with closing(sqlite3.connect(path)) as reader:
        (version,) = reader.execute("SELECT version FROM organization_stats WHERE org_id = 'org_a'").fetchone()
    counts, stored_version = await stored(db, "org_a")
    assert version == stored_version == 101 and counts == await recount(db, "org_a")


def log_restarts(path: str) -> int:
    """The log's checkpoint sequence number (its header, https://sqlite.org/walformat.html): one more
    each time the log starts over from its beginning."""
    return int.from_bytes(Path(path + "-wal").read_bytes()[12:16], "big")


def log_size(path: str) -> int:
    return os.stat(path + "-wal").st_size


@contextmanager
def checkpointing(db: Database, restart_bytes: int) -> Iterator[str]:
    """`db`'s checkpoint thread replaced by one that checkpoints every 5 ms and finds the log too
    long past `restart_bytes`; the SQLite file's path."""
    path = str(db.engine.url.database)
    default = db._checkpoints
    assert default is not None
    default.close()
    db._checkpoints = Checkpoints(path, interval=0.005, restart_bytes=restart_bytes)
    try:
        yield path
    finally:
        db._checkpoints.close()
        db._checkpoints = Checkpoints(path)


async def test_a_long_log_starts_over_under_a_steady_stream_of_writes(sqlite_db: Database) -> None:
    """With writers never pausing, the copied log still starts over (else it grows without end)."""
    db = sqlite_db
    load = await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
    with checkpointing(db, restart_bytes=64 * 1024) as path:
        restarts, largest = log_restarts(path), 0
        for status in ["ASSIGNED", "OPEN"] * 300:
            await db.write_row(partial(loads.set_load_status, load_id=str(load.id), status=status, scope="org_a"))
            largest = max(largest, log_size(path))
        assert log_restarts(path) > restarts
    # the 600 writes appended ~1.9 MB to the log; starting over, it stayed well under that
    assert largest < 1024 * 1024, largest
    counts, version = await stored(db, "org_a")
    assert version == 601 and counts == await recount(db, "org_a")


async def test_the_restart_never_waits_for_a_reader_nor_holds_writers_back(sqlite_db: Database) -> None:
    """A reader keeps an old snapshot for the whole run: SQLite cannot start the log over, and the
    restart answers busy at once instead of holding the writers' turn until the reader is done."""
    db = sqlite_db
    load = await db.write_row(lambda: loads.create_load("org_a", status="OPEN", load_type="SPOT"))
    await db.write_row(partial(loads.set_load_status, load_id=str(load.id), status="ASSIGNED", scope="org_a"))
    with checkpointing(db, restart_bytes=0) as path, closing(sqlite3.connect(path, isolation_level=None)) as reader:
        checkpoints, tried = db._checkpoints, []
        assert checkpoints is not None
        restart = checkpoints.restart

        def counted() -> bool:
            tried.append(restart())
            return tried[-1]

        checkpoints.restart = counted  # type: ignore[method-assign]
        reader.execute("BEGIN")
        (before,) = reader.execute("SELECT version FROM organization_stats WHERE org_id = 'org_a'").fetchone()
        restarts, slowest = log_restarts(path), 0.0
        for status in ["OPEN", "ASSIGNED"] * 100:  # each one's commit finds the log too long
            started = time.perf_counter()
            await db.write_row(partial(loads.set_load_status, load_id=str(load.id), status=status, scope="org_a"))
            slowest = max(slowest, time.perf_counter() - started)
        (still,) = reader.execute("SELECT version FROM organization_stats WHERE org_id = 'org_a'").fetchone()
        assert log_restarts(path) == restarts  # the reader was in the way throughout
        assert tried and not any(tried)  # restarts were tried, and each answered busy at once
        reader.execute("COMMIT")
    assert still == before == 2  # its snapshot stood
    assert slowest < 1.0, slowest  # no write waited for the reader, which stayed until all 200 were done
    counts, version = await stored(db, "org_a")
    assert version == 202 and counts == await recount(db, "org_a")
