"""The one place that opens, commits and retries transactions.

Domain functions receive a session and never commit. `Database.write` runs one
in a transaction, commits (the aggregate hooks apply counter deltas just
before), and only after a successful commit hands the changed stats snapshots
to the after-commit hooks (publishing). A rolled-back transaction hands nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.aggregates import REREAD, SHARDS, AggregateSession, StatsSnapshot
from db.engine import WRITE, create_engine
from db.queries import get_stats
from db.stats_reader import SharedReads, StatsReader

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]
AfterCommit = Callable[[list[StatsSnapshot]], Awaitable[None]]

log = logging.getLogger("tally.db")

# PostgreSQL: serialization_failure, deadlock_detected; SQLite: database is locked.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 5


def _retryable(error: DBAPIError) -> bool:
    if error.connection_invalidated:
        return True  # the server restarted under a pooled connection; a fresh one will do
    if isinstance(error, IntegrityError):
        return True  # a concurrent insert won a unique race; re-running sees it
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate in RETRYABLE_SQLSTATES or "database is locked" in str(error.orig)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, stats_shards: int = 1) -> None:
        self.url = url
        self.engine: AsyncEngine = create_engine(url, pool_size=pool_size)
        self.sessions = async_sessionmaker(
            self.engine,
            sync_session_class=AggregateSession,
            expire_on_commit=False,
            info={SHARDS: max(1, stats_shards)},
        )
        self.after_commit: list[AfterCommit] = []
        self.write_retries = 0  # transactions run again after a retryable failure (/metrics)
        # SQLite has one writer at a time. Writers of this process queue here, in
        # order, instead of in SQLite's busy handler, which sleeps in growing steps
        # (1, 2, 5, 10 ms, ...) and so turns a 3 ms wait into 8 ms or more.
        # (Other processes still meet the busy handler.)
        self._writer_turn: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        self.stats = StatsReader(self.engine, lambda org_id: self.read(partial(get_stats, org_id=org_id)))
        self._writers = 0  # writes under way: from the call to write until its publish
        self._no_writers = asyncio.Event()  # for maintenance writes; the recount thread has its own
        self._no_writers.set()
        self.stats.no_writers.set()
        self._reads_after_commit = SharedReads(self.read_stats)

    async def read_stats(self, org_id: str) -> StatsSnapshot:
        """One org's committed stats: the one statement of every count query."""
        return await self.stats.read(org_id)

    async def read(self, work: Work[T]) -> T:
        """Run `work` in a read transaction."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.sessions() as session:
                    return await work(session)
            except DBAPIError as error:
                if attempt == MAX_ATTEMPTS or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    async def write(self, work: Work[T]) -> T:
        result, _ = await self.write_with_snapshots(work)
        return result

    async def write_with_stats(self, work: Work[T], org_of: Callable[[T], str]) -> tuple[T, StatsSnapshot]:
        """Like write, also returning the org's stats as of that commit (or later)."""
        result, snapshots = await self.write_with_snapshots(work)
        org_id = org_of(result)
        for snapshot in snapshots:
            if snapshot.org_id == org_id:
                return result, snapshot
        return result, await self.read_stats(org_id)

    async def writers_rest(self, at_most: float) -> None:
        """Wait until no write of this process is under way, at most `at_most` s:
        maintenance (recalculation) writes go between the writers', not in their way."""
        if self._writers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_writers.wait(), at_most)

    async def write_with_snapshots(self, work: Work[T]) -> tuple[T, list[StatsSnapshot]]:
        self._writers += 1
        self._no_writers.clear()
        self.stats.no_writers.clear()
        try:
            return await self._write_with_snapshots(work)
        finally:
            self._writers -= 1
            if not self._writers:
                self._no_writers.set()
                self.stats.no_writers.set()

    async def _write_with_snapshots(self, work: Work[T]) -> tuple[T, list[StatsSnapshot]]:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.sessions() as session:
                    async with self._writer_turn:  # from BEGIN to COMMIT (or ROLLBACK), no longer
                        try:
                            await session.connection(execution_options={WRITE: True})
                            result = await work(session)
                            await session.commit()
                        except BaseException:
                            await session.rollback()
                            raise
                    reread: list[str] = session.info.pop(REREAD, [])
                break
            except DBAPIError as error:
                if attempt == MAX_ATTEMPTS or not _retryable(error):
                    raise
                self.write_retries += 1
                log.info("retrying transaction (attempt %d): %s", attempt, type(error.orig))
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        # Each changed org's sums as committed (or later); concurrent writers share reads.
        snapshots = [await self._reads_after_commit.read(org_id) for org_id in dict.fromkeys(reread)]
        await self._run_after_commit(snapshots)
        return result, snapshots

    async def _run_after_commit(self, snapshots: list[StatsSnapshot]) -> None:
        if not snapshots:
            return
        for hook in self.after_commit:
            try:
                await hook(snapshots)
            except Exception:  # the commit stands whatever a hook does
                log.exception("after-commit hook failed")

    async def dispose(self) -> None:
        self.stats.close()
        await self.engine.dispose()
