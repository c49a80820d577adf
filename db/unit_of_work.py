"""`Database`: the one place that opens, commits and retries transactions.

Domain functions receive a session and never commit. `Database.write` runs one
in a transaction, commits (the aggregate hooks apply counter deltas just
before), and only after a successful commit hands the changed stats snapshots
to the after-commit hooks (publishing). A rolled-back transaction hands nothing.
`Database.read` runs read work, which gets a `ReadSession` (`db/work.py`).

`Database` only composes the parts that do each job: the writer's turn and the
writes in flight (`db/writers.py`), retries (`db/retries.py`), after-commit
hooks (`db/after_commit.py`), and the stats reads (`db/stats_reader.py`), shared by
callers of one org who ask together (`db/shared_reads.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from db.after_commit import AfterCommitHooks
from db.aggregates import REREAD, SHARDS, AggregateSession, StatsSnapshot, guard_writes
from db.engine import WRITE, create_engine
from db.queries import all_rows, get_stats
from db.retries import MAX_ATTEMPTS, WriteRetries
from db.row_writes import DriverRowWrites, Plan, in_session, script_in_session
from db.shared_reads import SharedReads
from db.sqlite.checkpoints import Checkpoints
from db.sqlite.inline_writes import InlineWrites
from db.stats_reader import StatsReader
from db.work import ReadWork, Script, WriteWork
from db.writers import WritersInFlight, writer_turn

T = TypeVar("T")
log = logging.getLogger("tally.db")
Commit = Callable[[], Awaitable[tuple[T, list[str]]]]  # a committed write: its result, the orgs it changed


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        stats_shards: int = 1,
        sqlite_fast_paths: bool = True,
        postgres_read_pool: int = 0,
        driver_row_writes: bool = True,
    ) -> None:
        """`postgres_read_pool`: connections of the count reads' own asyncpg pool (0: none).
        `driver_row_writes`: one-row writes (`write_row`) straight on the driver (db/row_writes.py)."""
        self.url = url
        path = make_url(url).database if make_url(url).get_backend_name() == "sqlite" else None
        file = path not in (None, "", ":memory:")
        self.engine: AsyncEngine = create_engine(
            url, pool_size=pool_size, sqlite_fast_paths=sqlite_fast_paths, sqlite_checkpoint_thread=file
        )
        self._checkpoints = Checkpoints(cast(str, path)) if file else None
        guard_writes(self.engine)
        self.sessions = async_sessionmaker(
            self.engine,
            sync_session_class=AggregateSession,
            expire_on_commit=False,
            info={SHARDS: max(1, stats_shards)},
        )
        self.after_commit = AfterCommitHooks()
        self.writers = WritersInFlight()
        self._writer_turn = writer_turn(self.engine.dialect.name)
        self._retries = WriteRetries()
        self.stats = StatsReader(
            self.engine,
            lambda org_id: self.read(partial(get_stats, org_id=org_id)),
            lambda statement, parameters: self.read(partial(all_rows, statement=statement, parameters=parameters)),
            self.writers,
            sqlite_fast_paths=sqlite_fast_paths,
            postgres_read_pool=postgres_read_pool,
        )
        self._stats_reads = SharedReads(self.stats.read)
        # On SQLite the driver path needs the one-trip adapter (db/sqlite/driver.py): the plain one
        # resets a connection going back to the pool with an await, outside SQLAlchemy's greenlet.
        on_driver = driver_row_writes and (sqlite_fast_paths or self.engine.dialect.name != "sqlite")
        # Inline (db/sqlite/inline_writes.py) needs a file: each connection to ":memory:" is a database of its own.
        self._inline_writes = InlineWrites(cast(str, path)) if on_driver and file else None
        shards = max(1, stats_shards)
        self._row_writes = DriverRowWrites(self.engine, shards, self._inline_writes) if on_driver else None

    @property
    def driver_row_writes(self) -> bool:
        """Whether `write_row` runs plans straight on the driver (else through a session)."""
        return self._row_writes is not None

    @property
    def write_retries(self) -> int:
        """Transactions run again after a retryable failure (/metrics)."""
        return self._retries.count

    async def read_stats(self, org_id: str) -> StatsSnapshot:
        """One org's committed stats, read by one statement that starts after this call: the
        count queries' read, and each write's after its commit. Callers of one org asking while
        its read is in flight share the next one (db/shared_reads.py)."""
        return await self._stats_reads.read(org_id)

    async def read_rows(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        """Every row of one read statement, by the count read's fast path where there is one."""
        return await self.stats.read_rows(statement, parameters)

    async def read(self, work: ReadWork[T]) -> T:
        """Run `work` in a read transaction."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.sessions() as session:
                    return await work(session)
            except DBAPIError as error:
                if attempt == MAX_ATTEMPTS or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    async def write(self, work: WriteWork[T]) -> T:
        result, _ = await self.write_with_snapshots(work)
        return result

    async def write_with_stats(self, work: WriteWork[T], org_of: Callable[[T], str]) -> tuple[T, StatsSnapshot]:
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
        await self.writers.rest(at_most)

    async def write_row(self, plan: Callable[[], Plan]) -> Any:
        """Run a one-row write's plan (a new one per attempt) in its own committed transaction:
        straight on the driver, or through a session with `driver_row_writes` off."""
        if self._row_writes is None:
            return await self.write(lambda session: in_session(session, plan()))
        row_writes = self._row_writes
        result, _ = await self._with_snapshots(lambda: self._retried(lambda: row_writes.run(plan())))
        return result

    async def write_script(self, script: Callable[[str], Script[tuple[T, list[str]]]]) -> T:
        """Run a script (`script(dialect)`, a new one per attempt: its statements, then its result
        and the orgs whose stats it changed) in its own committed transaction, on the driver as
        `write_row` runs plans. It may not write a counted table (db/row_writes.py)."""
        dialect = self.engine.dialect.name
        if self._row_writes is None:

            async def work(session: AsyncSession) -> T:
                result, changed = await script_in_session(session, script(dialect))
                session.info.setdefault(REREAD, []).extend(changed)
                return cast(T, result)

            return await self.write(work)
        row_writes = self._row_writes
        result, _ = await self._with_snapshots(lambda: self._retried(lambda: row_writes.run_script(script(dialect))))
        return cast(T, result)

    async def write_with_snapshots(self, work: WriteWork[T]) -> tuple[T, list[StatsSnapshot]]:
        return await self._with_snapshots(lambda: self._retried(lambda: self._commit(work)))

    async def _with_snapshots(self, commit: Commit[T]) -> tuple[T, list[StatsSnapshot]]:
        with self.writers.one():
            result, reread = await commit()
            # The sums as committed (or later) of each changed org someone hears of; concurrent writers share reads.
            snapshots = [await self.read_stats(org_id) for org_id in self.after_commit.want(reread)]
            await self.after_commit.run(snapshots)
            return result, snapshots

    async def _retried(self, commit: Commit[T]) -> tuple[T, list[str]]:
        """`commit` (a committed write transaction and the orgs whose stats it changed), in this
        process's writers' turn, run again after a retryable failure."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._writer_turn:  # from BEGIN to COMMIT (or ROLLBACK), and a log restart
                    committed = await commit()
                    await self._restart_long_log()
            except DBAPIError as error:
                await self._retries.again(error, attempt)
                continue
            return committed
        raise AssertionError("unreachable")

    async def _restart_long_log(self) -> None:
        """Start SQLite's log over once the checkpoint thread finds it too long (db/sqlite/checkpoints.py):
        after a commit, still in the writers' turn, so no writer of this process is in the way; on a
        thread of the executor, so the event loop goes on meanwhile. A cancel waits for it (a thread
        cannot stop midway, and the turn should cover it; a second cancel does not wait, and then
        SQLite's own lock keeps a writer that begins meanwhile waiting)."""
        checkpoints = self._checkpoints
        if checkpoints is None or not checkpoints.log_too_long:
            return
        restart = asyncio.ensure_future(asyncio.to_thread(checkpoints.restart))
        try:
            await asyncio.shield(restart)
        except asyncio.CancelledError:
            await asyncio.wait([restart])
            raise
        except Exception:  # e.g. the executor shut down: the write has committed all the same
            log.exception("WAL restart failed")

    async def _commit(self, work: WriteWork[T]) -> tuple[T, list[str]]:
        """`work` in a committed write transaction; with the orgs whose stats it changed."""
        async with self.sessions() as session:
            try:
                await session.connection(execution_options={WRITE: True})
                result = await work(session)
                await session.commit()
            except BaseException:
                await session.rollback()
                raise
        return result, session.info.pop(REREAD, [])

    async def dispose(self) -> None:
        await self.stats.close()
        await self.engine.dispose()
        if self._inline_writes is not None:
            self._inline_writes.close()
        if self._checkpoints is not None:
            self._checkpoints.close()
