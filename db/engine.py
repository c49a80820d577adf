"""One engine factory for SQLite and PostgreSQL, and SQL statement counting.

On SQLite, statements go through the one-trip driver (`db/sqlite/driver.py`)
unless its fast paths are off, then through SQLAlchemy's plain aiosqlite one; with
`sqlite_checkpoint_thread`, its connections leave checkpoints to that thread
(`db/sqlite/checkpoints.py`).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from db.prepared import Prepared
from db.sqlite.driver import OneTripConnection, OneTripDbapi

WRITE = "tally_write"  # execution option: this transaction will write
# A new SQLite file's page size. Every write's COMMIT copies each page it dirtied into the log
# (and a checkpoint copies it back): a payment dirties 7 pages, and Tally's rows are tens of
# bytes, so 1 KB pages cost each write a quarter of the bytes 4 KB ones do (docs/benchmarks-money.md).
# It only takes effect on a file with no table yet; `python main.py vacuum` rewrites an older one.
SQLITE_PAGE_SIZE = 1024


@dataclass
class StatementCounter:
    statements: int = 0


statement_counter: ContextVar[StatementCounter | None] = ContextVar("statement_counter", default=None)


def create_engine(
    url: str, *, pool_size: int = 10, sqlite_fast_paths: bool = True, sqlite_checkpoint_thread: bool = False
) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        driver = {"module": OneTripDbapi()} if sqlite_fast_paths else {}
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=20, **driver)
        _make_sqlite_transactional(engine, automatic_checkpoints=not sqlite_checkpoint_thread)
    else:  # a fixed pool: overflow connections would be opened and closed under load
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
    event.listen(engine.sync_engine, "before_cursor_execute", _count_statement)
    return engine


def count_statement() -> None:
    """Count one SQL statement for the running operation (TALLY_QUERY_STATS)."""
    counter = statement_counter.get()
    if counter is not None:
        counter.statements += 1


def _count_statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if not statement.startswith("BEGIN"):
        count_statement()


def _make_sqlite_transactional(engine: AsyncEngine, *, automatic_checkpoints: bool) -> None:
    """SQLite: WAL, FKs, and real transactions that writers take up front.

    The sqlite3 driver's own transaction handling is turned off and BEGIN is
    emitted here instead; write transactions use BEGIN IMMEDIATE so concurrent
    writers queue on the busy timeout instead of failing to upgrade a read lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            f"page_size={SQLITE_PAGE_SIZE}",  # before WAL: a new file's first page is written with it
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
            *([] if automatic_checkpoints else ["wal_autocheckpoint=0"]),
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        begin = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN"
        driver = conn.connection.dbapi_connection
        if isinstance(driver, OneTripConnection):
            driver.begin_with_next_statement(begin)
        else:
            conn.exec_driver_sql(begin)


class Unread:
    """A statement whose result nobody reads, built once per dialect. On SQLite's one-trip
    driver it waits for the transaction's next trip (the next statement's or COMMIT's)
    instead of making one of its own; elsewhere it runs at once."""

    def __init__(self, statements: dict[str, Insert]) -> None:
        self._statements = statements
        self._sqlite = Prepared(statements["sqlite"], "sqlite")

    def kept(self, connection: Connection, parameters: dict[str, Any]) -> bool:
        """Whether the driver took it for its next trip."""
        driver = connection.connection.dbapi_connection
        if not isinstance(driver, OneTripConnection):
            return False
        count_statement()
        driver.keep(self._sqlite, parameters)
        return True

    def run(self, connection: Connection, parameters: dict[str, Any]) -> None:
        if not self.kept(connection, parameters):
            connection.execute(self._statements[connection.dialect.name], parameters)

    async def run_async(self, connection: AsyncConnection, parameters: dict[str, Any]) -> None:
        assert connection.sync_connection is not None  # a connection of a session in a transaction
        if not self.kept(connection.sync_connection, parameters):
            await connection.execute(self._statements[connection.dialect.name], parameters)
