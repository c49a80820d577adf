"""SQLite through aiosqlite, with one trip to its worker thread per statement.

SQLAlchemy's aiosqlite adapter makes four trips per statement (make a cursor,
execute, fetch, close), and every trip costs a thread wake-up plus an
event-loop wake-up: a no-op write transaction made nine of them and spent
~0.8 ms of the event loop's CPU. This adapter runs the four steps as one call
on the worker thread and keeps the results, so a statement is one trip.

Only the ordinary (buffered) cursor changes; server-side cursors, commit,
rollback and errors are aiosqlite's and SQLAlchemy's own.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

# description, rows, rowcount, lastrowid: everything SQLAlchemy reads off a cursor
Outcome = tuple[Any, list[Any], int, int | None]


def _execute(connection: aiosqlite.Connection, operation: str, parameters: Any, many: bool) -> Outcome:
    """Runs on the connection's worker thread."""
    cursor = connection._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_outcome",)

    def __init__(self, adapt_connection: Any) -> None:
        self._outcome: Outcome = (None, [], -1, None)
        super().__init__(adapt_connection)

    def _make_new_cursor(self, connection: Any) -> Any:
        return None  # no aiosqlite cursor: each statement makes its own on the worker thread

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    @property
    def description(self) -> Any:
        return self._outcome[0]

    @property
    def rowcount(self) -> int:
        return self._outcome[2]

    @property
    def lastrowid(self) -> Any:
        return self._outcome[3]

    async def _async_soft_close(self) -> None:
        return None  # nothing is open: the rows are already here

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        connection = self._connection
        async with self._adapt_connection._execute_mutex:
            outcome = await connection._execute(_execute, connection, operation, parameters, many)
        self._outcome = outcome
        self._rows = collections.deque(outcome[1])

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._run(operation, seq_of_parameters, many=True)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = _OneTripCursor


class OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI adapter, handing out one-trip connections."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy does: never hold the interpreter open
        return _OneTripConnection(self, cast(Any, await_(connection)))
