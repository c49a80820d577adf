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
import threading
from typing import Any

from db.sqlite.connections import is_busy

SQL = tuple[str, tuple[Any, ...]]
# As the engine's write connections (db/engine.py); checkpoints are the checkpoint thread's (db/sqlite/checkpoints.py).
PRAGMAS = ("synchronous=NORMAL", "foreign_keys=ON", "wal_autocheckpoint=0")


class InlineWrites:
    """One write connection per thread that asks (the event loop's), to the SQLite file at `path`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def begin(self, begin: SQL) -> sqlite3.Connection | None:
        """This thread's connection with `begin` (BEGIN IMMEDIATE) run on it; None if the write lock is taken."""
        connection = self._this_thread()
        try:
            connection.execute(*begin)
        except sqlite3.OperationalError as error:
            if is_busy(error):
                return None
            raise
        return connection

    def _this_thread(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                connection.execute(f"PRAGMA {pragma}")
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
