"""SQLite through aiosqlite, with one trip to its worker thread per statement.

SQLAlchemy's aiosqlite adapter makes four trips per statement (make a cursor,
execute, fetch, close), and every trip costs a thread wake-up plus an
event-loop wake-up: a no-op write transaction made nine of them and spent
~0.8 ms of the event loop's CPU. This adapter runs the four steps as one call
on the worker thread and keeps the results, so a statement is one trip.

A statement whose result nobody reads can also wait and go in the
transaction's next trip, the next statement's or COMMIT's (`keep`, with the SQL
and parameters `Prepared` once): the aggregate's counter upsert goes with
COMMIT, so maintaining the counters adds no trip and no SQLAlchemy execution to
a write, and creating an org goes with the statement that needs it. BEGIN goes in the trip of the
transaction's first statement, and a ROLLBACK with no transaction open (the
pool's reset of a connection after COMMIT) makes no trip: a write of two
statements is three trips. Server-side cursors, rollback and errors are
aiosqlite's and SQLAlchemy's own.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

from db.prepared import Prepared

T = TypeVar("T")

# description, rows, rowcount, lastrowid: everything SQLAlchemy reads off a cursor
Outcome = tuple[Any, list[Any], int, int | None]
Before = tuple[str | None, list[tuple[str, Any]]]  # BEGIN, and statements kept, for the next trip


def _execute(connection: aiosqlite.Connection, before: Before, operation: str, parameters: Any, many: bool) -> Outcome:
    """Runs on the connection's worker thread: what waited for this trip, then the statement."""
    _run_before(connection, before)
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


def _commit(connection: aiosqlite.Connection, before: Before) -> None:
    """Runs on the connection's worker thread: what waited for this trip, then COMMIT."""
    _run_before(connection, before)
    connection._conn.commit()


def _run_before(connection: aiosqlite.Connection, before: Before) -> None:
    begin, statements = before
    if begin is not None:
        connection._conn.execute(begin)
    for operation, parameters in statements:
        connection._conn.execute(operation, parameters)


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
        connection, adapt = self._connection, cast("OneTripConnection", self._adapt_connection)
        before = adapt.take_waiting()
        async with adapt._execute_mutex:
            outcome = await connection._execute(_execute, connection, before, operation, parameters, many)
        self._outcome = outcome
        self._rows = collections.deque(outcome[1])

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._run(operation, seq_of_parameters, many=True)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("begin", "kept")
    _cursor_cls = _OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.begin: str | None = None
        self.kept: list[tuple[str, Any]] = []

    def begin_with_next_statement(self, begin: str) -> None:
        """Start the transaction (`BEGIN ...`) in the trip of its first statement, not one of its own."""
        self.begin = begin

    def keep(self, statement: Prepared, parameters: Mapping[str, Any]) -> None:
        """Run `statement` in this transaction's next trip (the next statement's or COMMIT's);
        its failure fails that statement or the commit."""
        self.kept.append((statement.sql, statement.values(parameters)))

    def take_waiting(self) -> Before:
        before: Before = (self.begin, self.kept)
        self.begin, self.kept = None, []
        return before

    def commit(self) -> None:
        before = self.take_waiting()
        begin, statements = before
        if not statements:
            if begin is None:  # else no statement ran: nothing began, nothing to commit
                super().commit()
            return
        try:
            await_(self._connection._execute(_commit, self._connection, before))
        except Exception as error:
            self._handle_exception(error)

    def rollback(self) -> None:
        self.begin = None
        self.kept.clear()
        if self._connection._conn is not None and not self._connection._conn.in_transaction:
            return  # e.g. the pool's reset after a COMMIT: nothing to undo, no trip for it
        super().rollback()


class OneTripDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI adapter, handing out one-trip connections."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy does: never hold the interpreter open
        return OneTripConnection(self, cast(Any, await_(connection)))


async def in_one_trip(connection: aiosqlite.Connection, function: Callable[..., T], *args: Any) -> T:
    """`function(sqlite3_connection, *args)` on `connection`'s worker thread: one trip, whatever it runs."""
    return cast(T, await connection._execute(_in_worker_thread, connection, function, *args))


def _in_worker_thread(connection: aiosqlite.Connection, function: Callable[..., T], *args: Any) -> T:
    return function(connection._conn, *args)
