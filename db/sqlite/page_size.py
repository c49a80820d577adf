"""`python main.py vacuum`: an SQLite file made before Tally chose its page size, rewritten with it.

A new file gets `SQLITE_PAGE_SIZE` from its first connection (db/engine.py). An older one
keeps the size it was made with until VACUUM rewrites it, which SQLite allows only outside
WAL mode: the file leaves WAL, is rewritten, and goes back. That needs the file to itself:
the rewrite takes an exclusive lock first, and holds it to the end (locking_mode=EXCLUSIVE),
so with another connection open it changes nothing, and no connection opens meanwhile.
"""

from __future__ import annotations

import contextlib
import sqlite3
from contextlib import closing

from db.engine import SQLITE_PAGE_SIZE


class Unchanged(Exception):
    """The file was not rewritten (another connection has it open, or SQLite refused): the
    message says why. Its rows are as they were."""


def rewrite_pages(path: str, size: int = SQLITE_PAGE_SIZE) -> tuple[int, int]:
    """Rewrite the SQLite file at `path` with pages of `size` bytes (a no-op if it has them).
    Returns the page size before and after."""
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as connection:
        before = int(connection.execute("PRAGMA page_size").fetchone()[0])
        if before == size:
            return before, size
        try:
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")  # locks, once taken, are kept until close
            mode = connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            if mode != "delete":
                raise Unchanged(f"it stayed in {mode} mode")
            connection.execute("BEGIN EXCLUSIVE")  # held from here to close: nobody opens it meanwhile
            connection.execute("COMMIT")
        except sqlite3.OperationalError as error:  # "database is locked"
            raise Unchanged(f"another connection has it open ({error})") from error
        try:
            connection.execute(f"PRAGMA page_size={int(size)}")
            connection.execute("VACUUM")
        except sqlite3.Error as error:  # a full disk: VACUUM is atomic, the file is as it was
            raise Unchanged(f"VACUUM failed ({error})") from error
        finally:
            with contextlib.suppress(sqlite3.Error):  # else the server's connections set WAL again
                connection.execute("PRAGMA journal_mode=WAL")
        after = int(connection.execute("PRAGMA page_size").fetchone()[0])
        if after != size:
            raise Unchanged(f"SQLite kept pages of {after} bytes")
    return before, after
