"""The driver's write transactions (db/row_writes.py) inline on the event loop's thread.

A one-row write's statements take ~30 µs in sqlite3, but a trip to aiosqlite's
worker thread, with the pool's checkout and checkin around it, costs the event
loop several times that. So, as the count reads do (inline_reads.py), the
transaction runs on a write connection of the loop's own thread, BEGIN IMMEDIATE
to COMMIT. It never waits there: its busy timeout is 0. If BEGIN IMMEDIATE finds
the write lock taken (another process writing, a migration), the transaction
goes to the worker thread instead, which waits for the lock as every other
writer does. This process's writers take turns before either (db/writers.py), so
they never find the lock taken by one another. Once begun, a WAL write does not
wait: its COMMIT appends to the log.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from db.sqlite.connections import ThreadConnections, is_busy

SQL = tuple[str, tuple[Any, ...]]
# As the engine's write connections (db/engine.py; the file exists, so no page_size); checkpoints are the
# checkpoint thread's (db/sqlite/checkpoints.py).
PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0")


class InlineWrites:
    """One write connection per thread that asks (the event loop's), to the SQLite file at `path`."""

    def __init__(self, path: str) -> None:
        self._connections = ThreadConnections(path, PRAGMAS)
        self._wal: bool | None = None

    def begin(self, begin: SQL) -> sqlite3.Connection | None:
        """This thread's connection with `begin` (BEGIN IMMEDIATE) run on it; None if the write lock
        is taken, or if the database is not in WAL mode (its COMMIT would wait for readers)."""
        connection = self._connections.this_thread()
        if self._wal is None:
            self._wal = connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if not self._wal:
            return None
        if connection.in_transaction:  # left open by an interruption before its runner took it: undo it
            connection.execute("ROLLBACK")
        try:
            connection.execute(*begin)
        except sqlite3.OperationalError as error:
            if is_busy(error):
                return None
            raise
        return connection

    def close(self) -> None:
        self._connections.close()
