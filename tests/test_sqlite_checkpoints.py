"""SQLite's log is checkpointed by its own thread (db/sqlite/checkpoints.py), not inside a
writer's COMMIT."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest

from db import loads
from db.sqlite.checkpoints import CHECKPOINT_SECONDS
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
