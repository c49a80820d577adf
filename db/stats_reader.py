"""The count queries' one statement, run as cheaply as each database allows.

A count query reads one org's aggregate (`STATS_QUERY`: one indexed row per
shard) and nothing else, so what it costs is everything around that statement.

- SQLite: the statement takes ~10 µs in sqlite3, but through the async session
  it makes nine hops to aiosqlite's worker thread (BEGIN, execute, fetch,
  closes, ROLLBACKs), ~1.5 ms of CPU. So it runs inline on the event loop's
  thread, on a read-only connection of that thread, in autocommit: one
  statement is one WAL snapshot. WAL readers do not wait for writers; if SQLite
  ever answers "busy" (e.g. recovering a WAL after a crash), the read falls
  back to the async session, which waits like every other statement.
- PostgreSQL: one round trip in autocommit instead of BEGIN, SELECT, ROLLBACK.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.aggregates import STATS_QUERY, StatsSnapshot
from db.engine import count_statement

MAX_ATTEMPTS = 3

Fallback = Callable[[str], Awaitable[StatsSnapshot]]


class StatsReader:
    def __init__(self, engine: AsyncEngine, fallback: Fallback) -> None:
        """`fallback` reads the stats in an ordinary read transaction."""
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._fallback = fallback
        url = make_url(str(engine.url))
        path = url.database if url.get_backend_name() == "sqlite" else None
        self._inline = _InlineSqlite(path) if path and path != ":memory:" else None

    async def read(self, org_id: str) -> StatsSnapshot:
        if self._inline is not None:
            snapshot = self._inline.read(org_id)
            return snapshot if snapshot is not None else await self._fallback(org_id)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._engine.connect() as connection:
                    row = (await connection.execute(STATS_QUERY, {"org_id": org_id})).one_or_none()
                return StatsSnapshot.from_row(row) if row else StatsSnapshot.empty(org_id)
            except DBAPIError as error:
                if attempt == MAX_ATTEMPTS or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._inline is not None:
            self._inline.close()


_DIALECT = sqlite.dialect()
_SQL = str(STATS_QUERY.compile(dialect=_DIALECT))
# SQLite keeps datetimes as text: parse them exactly as the ORM's DateTime columns do.
_DATETIME = cast(
    Callable[[Any], datetime | None], DateTime(timezone=True).dialect_impl(_DIALECT).result_processor(_DIALECT, None)
)
_DATETIME_COLUMNS = ("updated_at", "last_recalculated_at")


class _InlineSqlite:
    """One read-only sqlite3 connection per thread that reads (normally just the loop's)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            # timeout=0: never block the event loop; a busy database falls back instead.
            connection = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA query_only=ON")
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def read(self, org_id: str) -> StatsSnapshot | None:
        """The org's stats, or None if SQLite is busy (read through the session instead)."""
        try:
            cursor = self._connection().execute(_SQL, (org_id,))
            rows = cursor.fetchall()  # drained: the read snapshot ends here
        except sqlite3.OperationalError:
            return None
        count_statement()
        if not rows:
            return StatsSnapshot.empty(org_id)
        values = dict(zip((column[0] for column in cursor.description), rows[0], strict=True))
        for column in _DATETIME_COLUMNS:
            values[column] = _DATETIME(values[column])
        return StatsSnapshot.from_row(SimpleNamespace(**values))

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()
