"""One engine factory for SQLite and PostgreSQL, and SQL statement counting.

On SQLite, statements go through the one-trip driver (`db/sqlite/driver.py`)
unless its fast paths are off, then through SQLAlchemy's plain aiosqlite one.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from db.sqlite.driver import OneTripConnection, OneTripDbapi

WRITE = "tally_write"  # execution option: this transaction will write


@dataclass
class StatementCounter:
    statements: int = 0


statement_counter: ContextVar[StatementCounter | None] = ContextVar("statement_counter", default=None)


def create_engine(url: str, *, pool_size: int = 10, sqlite_fast_paths: bool = True) -> AsyncEngine:
    if make_url(url).get_backend_name() == "sqlite":
        driver = {"module": OneTripDbapi()} if sqlite_fast_paths else {}
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=20, **driver)
        _make_sqlite_transactional(engine)
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


def _make_sqlite_transactional(engine: AsyncEngine) -> None:
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
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
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
