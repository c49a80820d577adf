"""The count queries' one statement, and recalculation's recounts, as cheaply as each database allows.

A count query reads one org's aggregate (`STATS_QUERY`: one indexed row per
shard) and nothing else, so what it costs is everything around that statement.

- PostgreSQL with its fast paths (the default): the statement goes straight
  through asyncpg on a small pool of its own (`db/postgres/reads.py`), as
  `STATS_ROWS_QUERY`: the shard rows themselves, summed in Python, which costs
  PostgreSQL ~20 µs less a read than its sum() over numeric.
- PostgreSQL without them: one round trip in autocommit instead of BEGIN,
  SELECT, ROLLBACK. Recounts run in its own server process, through the session.
- SQLite with its fast paths (the default): the statement runs inline on the
  event loop's thread (`db/sqlite/inline_reads.py`) and recounts on a
  low-priority thread (`db/sqlite/recount_thread.py`).
- SQLite without them: both through ordinary async sessions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from db.aggregates import STATS_QUERY, StatsSnapshot
from db.postgres.reads import PostgresStatsReads
from db.prepared import prepared
from db.sqlite.connections import ReadOnlyConnections
from db.sqlite.inline_reads import InlineStatsReads
from db.sqlite.recount_thread import RecountSteps, RecountThread
from db.writers import WritersInFlight

__all__ = ["RecountSteps", "StatsReader"]

MAX_ATTEMPTS = 3

SessionRead = Callable[[str], Awaitable[StatsSnapshot]]


class StatsReader:
    def __init__(
        self,
        engine: AsyncEngine,
        in_session: SessionRead,
        rows_in_session: Callable[[Executable, dict[str, Any]], Awaitable[list[Any]]],
        writers: WritersInFlight,
        *,
        sqlite_fast_paths: bool,
        postgres_read_pool: int = 0,
    ) -> None:
        """`in_session` reads the stats in an ordinary read transaction. On PostgreSQL,
        `postgres_read_pool` > 0 reads through asyncpg with that many connections."""
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._in_session = in_session
        self._rows_in_session = rows_in_session
        url = engine.url
        self._sqlite = url.get_backend_name() == "sqlite"
        self.postgres: PostgresStatsReads | None = None
        if url.get_backend_name() == "postgresql" and postgres_read_pool > 0:
            self.postgres = PostgresStatsReads(url, postgres_read_pool)
        path = url.database if self._sqlite and sqlite_fast_paths else None
        self._connections = ReadOnlyConnections(path) if path and path != ":memory:" else None
        self.inline: InlineStatsReads | None = None
        self.recount_thread: RecountThread | None = None
        if self._connections is not None:
            self.inline = InlineStatsReads(self._connections)
            self.recount_thread = RecountThread(self._connections, writers.idle_for_threads)

    async def read(self, org_id: str) -> StatsSnapshot:
        if self.inline is not None:
            snapshot = self.inline.read(org_id)
            return snapshot if snapshot is not None else await self._in_session(org_id)
        if self._sqlite:
            return await self._in_session(org_id)
        if self.postgres is not None:
            return await self.postgres.read(org_id)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._engine.connect() as connection:
                    row = (await connection.execute(STATS_QUERY, {"org_id": org_id})).one_or_none()
                return StatsSnapshot.from_row(row) if row else StatsSnapshot.empty(org_id)
            except DBAPIError as error:
                if attempt == MAX_ATTEMPTS or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    async def read_rows(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        """Every row of a one-statement read (the money queries), as cheaply as the count read:
        inline on SQLite, through the asyncpg read pool on PostgreSQL, else in a session."""
        if self.inline is not None:
            rows = self.inline.rows(prepared(statement, "sqlite"), parameters)
            if rows is not None:
                return rows
        elif self.postgres is not None:
            return await self.postgres.rows(prepared(statement, "postgresql"), parameters)
        return await self._rows_in_session(statement, parameters)

    async def read_recounts(self, steps: RecountSteps, org_ids: list[str]) -> list[Any | None]:
        """The drift row of `steps` (stored row and counts, one snapshot) for the first
        of `org_ids` (at least one) and, on the recount thread, as many more as fit in
        one trip. An org's row is None where it must be read in a session: without a
        recount thread, or if SQLite was busy."""
        if self.recount_thread is None:
            return [None]
        return await self.recount_thread.read(steps, org_ids)

    async def close(self) -> None:
        if self.postgres is not None:
            await self.postgres.close()
        if self.recount_thread is not None:
            self.recount_thread.close()
        if self._connections is not None:
            self._connections.close()
