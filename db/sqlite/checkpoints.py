"""SQLite's write-ahead log copied back into the database file by a thread of its own.

By default SQLite checkpoints inside the COMMIT that takes the log past 1,000
pages: that write, in this process's writers' turn, copies the pages and syncs
the file, and every writer queued behind it waits (a few milliseconds, the
largest part of a writer's p99 beside a recalculation). Instead the write
connections turn automatic checkpoints off (`db.engine`) and this thread runs a
PASSIVE checkpoint every CHECKPOINT_SECONDS: it takes no write lock, so writers
go on appending to the log while it copies, and a log fully copied starts over
from its beginning at the next write.

If this thread is not running (a process that made its engine without it),
SQLite still checkpoints when the last connection to the file closes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("tally.sqlite")
CHECKPOINT_SECONDS = 0.25  # at ~1,500 writes/s the log grows by a few MB in between


class Checkpoints:
    """A daemon thread checkpointing the SQLite file at `path` until `close`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            while not self._stop.wait(CHECKPOINT_SECONDS):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # e.g. the file went away: try again next time
                    log.warning("WAL checkpoint failed: %s", error)
        finally:
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
