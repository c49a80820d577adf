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

`read_recounts` serves recalculation's drift rows (the stored row and the
recounts, in one read transaction), for as many orgs as fit in a short trip.
On SQLite it runs on a recount thread's read-only connection, so a recount's
CPU neither runs on nor wakes the event loop that writers share.
That thread runs at the lowest CPU priority Linux has (SCHED_IDLE, nice 19): on
a 2-core machine a recount at normal priority, even with the GIL released,
doubled a concurrent writer's p99, because the writer's threads waited for a
core behind it at every wake-up. At nice 19 the scheduler may still let it
finish its time slice first (20 ms trips of recounts then cost writers 1.7x
at p99); a SCHED_IDLE thread is preempted by any other at once (1.25x).
Even so a recount on the other core slowed the writer's own threads, so each
statement of a recount runs while no write of this process is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import DateTime, Select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.aggregates import STATS_QUERY, StatsSnapshot
from db.engine import count_statement

MAX_ATTEMPTS = 3
RECOUNT_THREADS = 1  # recounts queue: each is maintenance, and a second thread measurably slowed writers
RECOUNT_NICE = 19
# A trip to the recount thread recounts orgs until this long has passed: each trip wakes the event
# loop and passes the GIL back and forth, which writers felt at ~1,000 trips/s (10k-load
# orgs); longer trips would hold up a driftReport queued behind them.
RECOUNT_TRIP_SECONDS = 0.02
# A recount waits at most this long in all for this process's writers to rest.
RECOUNT_YIELD_SECONDS = 0.02

Fallback = Callable[[str], Awaitable[StatsSnapshot]]


class StatsReader:
    def __init__(self, engine: AsyncEngine, fallback: Fallback) -> None:
        """`fallback` reads the stats in an ordinary read transaction."""
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._fallback = fallback
        url = make_url(str(engine.url))
        path = url.database if url.get_backend_name() == "sqlite" else None
        self._inline = _InlineSqlite(path) if path and path != ":memory:" else None
        self._recount_pool: ThreadPoolExecutor | None = None
        # Set while no write of this process is under way (Database keeps it).
        self.no_writers = threading.Event()

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

    async def read_recounts(self, steps: RecountSteps, org_ids: list[str]) -> list[Any | None]:
        """The drift row of `steps` (stored row and counts, one snapshot) for the
        first of `org_ids` (at least one) and as many more as fit in one trip to
        the recount thread (RECOUNT_TRIP_SECONDS), off the event loop. An org's
        row is None if this database has no inline path or SQLite was busy: read
        it in a session then."""
        if self._inline is None:
            return [None]
        if self._recount_pool is None:
            self._recount_pool = ThreadPoolExecutor(
                RECOUNT_THREADS, thread_name_prefix="tally-recount", initializer=_lower_priority
            )
        call = contextvars.copy_context().run  # statement counting follows the operation
        return await asyncio.get_running_loop().run_in_executor(
            self._recount_pool, call, self._inline.recounts, _compiled_steps(steps), org_ids, self.no_writers
        )

    def close(self) -> None:
        if self._recount_pool is not None:
            self._recount_pool.shutdown(wait=True)
            self._recount_pool = None
        if self._inline is not None:
            self._inline.close()


def _lower_priority() -> None:
    # Linux: the thread's own nice value (its native id is a "process" to setpriority),
    # then the idle policy (pid 0 is the calling thread). Elsewhere: normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RECOUNT_NICE)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


_DIALECT = sqlite.dialect()
# SQLite keeps datetimes as text: parse them exactly as the ORM's DateTime columns do.
_DATETIME = cast(
    Callable[[Any], datetime | None], DateTime(timezone=True).dialect_impl(_DIALECT).result_processor(_DIALECT, None)
)
_DATETIME_COLUMNS = ("updated_at", "last_recalculated_at")


class _Compiled:
    """A statement compiled once for sqlite3; its only free parameter is `org_id`."""

    def __init__(self, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self._names = list(compiled.positiontup or ())
        self._values = dict(compiled.params)

    def params(self, org_id: str) -> tuple[Any, ...]:
        return tuple(org_id if name == "org_id" else self._values[name] for name in self._names)


_COMPILED: dict[Select[Any], _Compiled] = {}  # by identity: statements built once, at import


def _compiled(statement: Select[Any]) -> _Compiled:
    found = _COMPILED.get(statement)
    if found is None:
        found = _COMPILED[statement] = _Compiled(statement)
    return found


_STATS = _compiled(STATS_QUERY)


@dataclass(frozen=True, eq=False)
class RecountSteps:
    """A drift row as separate statements: the stored row, then each count (its label)."""

    stored: Select[Any]
    counts: dict[str, Select[Any]]


@dataclass(frozen=True)
class _CompiledSteps:
    stored: _Compiled
    counts: dict[str, _Compiled]


_COMPILED_STEPS: dict[RecountSteps, _CompiledSteps] = {}  # by identity, like _COMPILED


def _compiled_steps(steps: RecountSteps) -> _CompiledSteps:
    found = _COMPILED_STEPS.get(steps)
    if found is None:
        counts = {label: _compiled(count) for label, count in steps.counts.items()}
        found = _COMPILED_STEPS[steps] = _CompiledSteps(_compiled(steps.stored), counts)
    return found


class _InlineSqlite:
    """One read-only sqlite3 connection per thread that reads (the loop's, and the
    recount thread's)."""

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
        row = self.row(_STATS, org_id)
        if row is None:
            return None
        return StatsSnapshot.from_row(row) if row.org_id is not None else StatsSnapshot.empty(org_id)

    def row(self, statement: _Compiled, org_id: str) -> SimpleNamespace | None:
        """The statement's first row (all columns None if it has none), or None if SQLite is busy."""
        try:
            return SimpleNamespace(**self._first(self._connection(), statement, org_id))
        except sqlite3.OperationalError:
            return None

    def recounts(
        self, steps: _CompiledSteps, org_ids: list[str], no_writers: threading.Event
    ) -> list[SimpleNamespace | None]:
        """`recount` of the first org, then of more while the trip is short enough."""
        started = time.monotonic()
        rows = [self.recount(steps, org_ids[0], no_writers)]
        for org_id in org_ids[1:]:
            if time.monotonic() - started >= RECOUNT_TRIP_SECONDS:
                break
            rows.append(self.recount(steps, org_id, no_writers))
        return rows

    def recount(self, steps: _CompiledSteps, org_id: str, no_writers: threading.Event) -> SimpleNamespace | None:
        """The stored row and each count, in one read transaction (one snapshot). Before
        each statement it waits until no write of this process is under way (for
        RECOUNT_YIELD_SECONDS in all, so constant writes delay a recount by that much
        only): on a small machine a recount slows whatever runs beside it, so it runs
        while writers rest, in short steps. None if SQLite is busy."""
        connection = self._connection()
        deadline = time.monotonic() + RECOUNT_YIELD_SECONDS
        try:
            connection.execute("BEGIN")
            try:
                no_writers.wait(RECOUNT_YIELD_SECONDS)
                values = self._first(connection, steps.stored, org_id)
                for label, count in steps.counts.items():
                    no_writers.wait(max(0.0, deadline - time.monotonic()))
                    values[label] = connection.execute(count.sql, count.params(org_id)).fetchone()[0]
                    count_statement()
            finally:
                connection.execute("COMMIT")
        except sqlite3.OperationalError:
            if connection.in_transaction:  # never leave the next recount inside this one
                connection.rollback()
            return None
        return SimpleNamespace(**values)

    def _first(self, connection: sqlite3.Connection, statement: _Compiled, org_id: str) -> dict[str, Any]:
        """The statement's first row by column name (all None if it has none)."""
        cursor = connection.execute(statement.sql, statement.params(org_id))
        rows = cursor.fetchall()
        count_statement()
        names = [column[0] for column in cursor.description]
        values = dict(zip(names, rows[0], strict=True)) if rows else dict.fromkeys(names)
        for column in _DATETIME_COLUMNS:
            if values.get(column) is not None:
                values[column] = _DATETIME(values[column])
        return values

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.close()


class SharedReads:
    """Reads of orgs' stats after commits, shared by the writers that wait for them.

    Every write reads its org's sums after its commit, to publish them. With no
    read of the org in flight, the writer reads at once (the common case: no
    task, no waiting). Otherwise it joins the next read of its org, which starts
    when the one in flight ends: every writer's read starts after its commit,
    and writers of one hot org that commit together share one read (and one
    event) instead of making one each.
    """

    def __init__(self, read: Callable[[str], Awaitable[StatsSnapshot]]) -> None:
        self._read = read
        self._next: dict[str, asyncio.Future[StatsSnapshot]] = {}  # not started yet
        self._reading: set[str] = set()

    async def read(self, org_id: str) -> StatsSnapshot:
        if org_id not in self._reading:
            self._reading.add(org_id)
            try:
                return await self._read(org_id)
            finally:
                self._hand_over(org_id)
        future = self._next.get(org_id)
        if future is None:
            future = self._next[org_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)  # one waiter's cancellation is not the others'

    def _hand_over(self, org_id: str) -> None:
        """A read ended: serve the writers that queued during it, or stop."""
        if org_id in self._next:
            asyncio.get_running_loop().create_task(self._serve(org_id))
        else:
            self._reading.discard(org_id)

    async def _serve(self, org_id: str) -> None:
        future = self._next.pop(org_id)
        try:
            future.set_result(await self._read(org_id))
        except Exception as error:
            future.set_exception(error)
        finally:
            self._hand_over(org_id)
