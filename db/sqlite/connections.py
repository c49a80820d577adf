"""sqlite3 connections, one per thread that asks (read-only, or the inline writer's), and statements for them."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import DateTime, Select
from sqlalchemy.dialects import sqlite

from db.engine import count_statement
from db.prepared import Prepared

_DIALECT = sqlite.dialect()
# SQLite keeps datetimes as text: parse them exactly as the ORM's DateTime columns do.
_DATETIME = cast(
    Callable[[Any], datetime | None], DateTime(timezone=True).dialect_impl(_DIALECT).result_processor(_DIALECT, None)
)
_DATETIME_COLUMNS = ("updated_at", "last_recalculated_at")


Compiled = Prepared  # a statement compiled once for sqlite3; its only free parameter is `org_id`
_COMPILED: dict[Select[Any], Compiled] = {}  # by identity: statements built once, at import


def compiled(statement: Select[Any]) -> Compiled:
    found = _COMPILED.get(statement)
    if found is None:
        found = _COMPILED[statement] = Prepared(statement, "sqlite")
    return found


def is_busy(error: sqlite3.OperationalError) -> bool:
    """SQLite was busy or locked (worth reading another way), not a statement that cannot run."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def first_row(connection: sqlite3.Connection, statement: Compiled, org_id: str) -> dict[str, Any]:
    """The statement's first row by column name (all None if it has none)."""
    cursor = connection.execute(statement.sql, statement.values({"org_id": org_id}))
    rows = cursor.fetchall()
    count_statement()
    names = [column[0] for column in cursor.description]
    values = dict(zip(names, rows[0], strict=True)) if rows else dict.fromkeys(names)
    for column in _DATETIME_COLUMNS:
        if values.get(column) is not None:
            values[column] = _DATETIME(values[column])
    return values


class ThreadConnections:
    """One sqlite3 connection to the file at `path` per thread that asks, in autocommit, with
    `pragmas` run on each as it opens. Busy timeout 0: a connection used on the event loop's
    thread must never block it; a caller that finds the database busy goes another way."""

    def __init__(self, path: str, pragmas: tuple[str, ...]) -> None:
        self._path = path
        self._pragmas = pragmas
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def this_thread(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            for pragma in self._pragmas:
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


class ReadOnlyConnections(ThreadConnections):
    """One read-only connection per thread that reads (the event loop's, the recount thread's)."""

    def __init__(self, path: str) -> None:
        super().__init__(path, ("query_only=ON",))
