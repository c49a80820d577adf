"""`python main.py vacuum`: an SQLite file made before Tally chose its page size, rewritten with it.

A new file gets `SQLITE_PAGE_SIZE` from its first connection (db/engine.py). An older one
keeps the size it was made with until VACUUM rewrites it, which SQLite allows only outside
WAL mode: the file leaves WAL, is rewritten, and goes back. That needs the file to itself,
so the server must be stopped first; with another connection open, nothing changes.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing

from db.engine import SQLITE_PAGE_SIZE


class FileInUse(Exception):
    """Another connection has the file open: the rewrite did not start."""


def page_size(path: str) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("PRAGMA page_size").fetchone()[0])


def rewrite_pages(path: str, size: int = SQLITE_PAGE_SIZE) -> tuple[int, int]:
    """Rewrite the SQLite file at `path` with pages of `size` bytes (a no-op if it has them).
    Returns the page size before and after."""
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as connection:
        before = int(connection.execute("PRAGMA page_size").fetchone()[0])
        if before == size:
            return before, size
        try:
            mode = connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        except sqlite3.OperationalError as error:  # "database is locked"
            raise FileInUse(str(error)) from error
        if mode != "delete":
            raise FileInUse(f"the file stayed in {mode} mode")
        try:
            connection.execute(f"PRAGMA page_size={int(size)}")
            connection.execute("VACUUM")
        finally:
            connection.execute("PRAGMA journal_mode=WAL")
        after = int(connection.execute("PRAGMA page_size").fetchone()[0])
    return before, after
