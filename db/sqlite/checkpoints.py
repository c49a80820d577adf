"""SQLite's write-ahead log copied back into the database file by a thread of its own.

By default SQLite checkpoints inside the COMMIT that takes the log past 1,000
pages: that write, in this process's writers' turn, copies the pages and syncs
the file, and every writer queued behind it waits (a few milliseconds, the
largest part of a writer's p99 beside a recalculation). Instead the write
connections turn automatic checkpoints off (`db.engine`) and this thread runs a
PASSIVE checkpoint every CHECKPOINT_SECONDS: it takes no write lock, so writers
go on appending to the log while it copies.

A copied log starts over from its beginning only if a writer begins while every
frame in it has been copied, and under a steady stream of writes that never
happens: new frames arrive while the thread copies. The log then grows without
end (16 MB a second at ~2,000 payments a second), and every write to it extends
the file: the kernel allocates and zeroes new blocks (~38 µs of a payment's ~520
µs of server CPU in one perf probe). So once the log is past RESTART_BYTES, the
thread says so (`log_too_long`), and the next write of this process to commit
runs `restart` before it gives up the writers' turn (`Database`): a RESTART
checkpoint copies the frames written since the thread's last copy, and the log
starts over at the next write, into blocks the file already has. The writers of
this process wait for it (3.2 ms at p50 here, fsyncs included), about once per
CHECKPOINT_SECONDS while writes keep the log that long. It never waits for a
lock: with a reader in the log, or another process writing, SQLite copies what it
can and answers busy, and it is tried again once the thread has copied again.

If this thread is not running (a process that made its engine without it),
SQLite still checkpoints when the last connection to the file closes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing

log = logging.getLogger("tally.sqlite")
CHECKPOINT_SECONDS = 0.25  # at ~1,500 writes/s the log grows by a few MB in between
RESTART_BYTES = 8 * 1024 * 1024


class Checkpoints:
    """A daemon thread checkpointing the SQLite file at `path` until `close`."""

    def __init__(self, path: str, *, interval: float = CHECKPOINT_SECONDS, restart_bytes: int = RESTART_BYTES) -> None:
        self._path = path
        self._interval = interval
        self._restart_bytes = restart_bytes
        self.log_too_long = False  # set by the thread, cleared by `restart`
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            while not self._stop.wait(self._interval):
                try:
                    _busy, frames, _copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    (page_size,) = connection.execute("PRAGMA page_size").fetchone()
                    self.log_too_long = frames * page_size >= self._restart_bytes
                except sqlite3.Error as error:  # e.g. the file went away: try again next time
                    log.warning("WAL checkpoint failed: %s", error)
        finally:
            connection.close()

    def restart(self) -> bool:
        """Copy the rest of the log and have the next write start it over (a RESTART checkpoint),
        on a connection of its own; with no writer of this process under way. False if SQLite
        answered busy (a reader in the log, another process writing): nothing waits for them."""
        self.log_too_long = False
        try:
            with closing(sqlite3.connect(self._path, isolation_level=None, timeout=0)) as connection:
                busy, _frames, _copied = connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as error:
            log.warning("WAL restart failed: %s", error)
            return False
        return not busy

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
