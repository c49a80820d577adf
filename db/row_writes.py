"""Writes of one row (createLoad, a load's or an invoice's status change) as plans, run
through a session or straight on the database driver.

A plan is a generator: it yields the reads it needs (`Lock`, `Find`, `EnsureOrg`),
gets each one's row back, checks the domain's rules, and returns its one write
(`Insert` or `Update`). It runs no SQL itself, so one plan serves two runners:

- `in_session`: each step through the session (`db.queries.lock_row`,
  `db.aggregates.insert_counted` / `update_counted`), where the engine's guard and
  hooks see it. Used when the fast paths are off.
- `DriverRowWrites`: the whole transaction on the driver, without SQLAlchemy's session
  and per-statement execution contexts (about 40 % of a write's CPU). SQLite runs it
  BEGIN IMMEDIATE to COMMIT inline on the event loop's thread (db/sqlite/inline_writes.py),
  or, when another connection holds the write lock, in one trip to aiosqlite's worker
  thread, which waits for it. PostgreSQL runs it
  on asyncpg, one round trip per statement, and the write carries the org's creation and
  its counter upsert as CTEs of the same statement: a createLoad is one round trip (one
  statement is atomic without BEGIN), a status change three (BEGIN, the locking read, and
  the update with its money upserts and COMMIT in one message, its values written in:
  db/postgres/inlined.py). The connection is the engine pool's.

Neither can forget the counters: a plan writes a counted table only by returning an
`Insert` or `Update`, and the runner moves the counters by it (`count_inserted`;
`count_changed` from the row locked in the same transaction), in the same transaction.
A plan has no way to run any other SQL, and writes at most one row.

A `Script` (db/work.py) is the other kind of write the driver runs: a few statements
that touch no counted table (a recalculation's correction and its run's records),
yielded as Core statements, in BEGIN (IMMEDIATE) ... COMMIT; through a session with the
fast paths off (`script_in_session`). Both runners refuse a statement that writes a
counted table, as the engine's guard does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from db.aggregates import (
    ADD_COUNTERS,
    ADD_TO_ROWS,
    Pending,
    count_changed,
    count_inserted,
    counted_table_written,
    counter_additions,
    insert_counted,
    moves,
    row_additions,
    update_counted,
    with_defaults,
)
from db.engine import count_statement
from db.errors import NotFound
from db.models import Base
from db.organizations import ENSURE_ORGANIZATION, ensure_organization, organization_values
from db.postgres.inlined import Inlined
from db.postgres.reads import LOST_CONNECTION
from db.prepared import Prepared, prepared, returned_columns
from db.queries import find, lock_row, parse_id, row_select
from db.sqlite.driver import in_one_trip
from db.sqlite.inline_writes import InlineWrites
from db.work import Script


@dataclass(frozen=True)
class Lock:
    """SELECT ... FOR UPDATE the row `id` (in org `scope`, if given): NOT_FOUND if there is none."""

    model: type[Base]
    id: str
    scope: str | None


@dataclass(frozen=True)
class Find:
    """The row `id` of org `org_id`, not locked: NOT_FOUND if there is none."""

    model: type[Base]
    id: str
    org_id: str


@dataclass(frozen=True)
class Insert:
    """INSERT one row, counted: a plan's write. The runner answers the row (every column)."""

    model: type[Base]
    values: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Change the row `locked` (a `Lock`'s answer) to `values`, counted: a plan's write. The
    runner answers the row as it is now (`locked` itself if `values` change nothing)."""

    model: type[Base]
    locked: Any
    values: dict[str, Any]


@dataclass(frozen=True)
class EnsureOrg:
    """Create the org on its first write."""

    org_id: str


Read = Lock | Find | EnsureOrg
Write = Insert | Update
Plan = Generator[Read, Any, Write]  # yields reads, returns its write
SQL = tuple[str, tuple[Any, ...]]  # a statement for the driver, and its values
# A transaction's statements, each sent its row (or None), then (None, the result).
Statements = Generator[tuple[str | None, Any], Any, None]


def not_found(model: type[Base], id_: str) -> NotFound:
    return NotFound(f"No {model.__name__.lower()} with id {id_}", ids=[id_])


async def in_session(session: AsyncSession, plan: Plan) -> Any:
    """Run `plan` through `session` (the caller commits); the row it wrote."""
    locked: list[tuple[type[Base], Any]] = []
    answer: Any = None
    while True:
        try:
            step = plan.send(answer)
        except StopIteration as done:
            write = checked(done.value, locked)
            break
        match step:
            case Lock(model, id_, scope):
                answer = await lock_row(session, model, id_, scope)
                locked.append((model, answer))
            case Find(model, id_, org_id):
                answer = await find(session, model, id_, org_id)
                if answer is None:
                    raise not_found(model, id_)
            case EnsureOrg(org_id):
                await ensure_organization(session, org_id)
                answer = None
            case _:
                raise RuntimeError(f"a plan yields reads and returns its one write, not {step!r}")
    if isinstance(write, Insert):
        (row,) = await insert_counted(session, write.model, [write.values])
        return row
    return await update_counted(session, write.model, write.locked, write.values)


async def script_in_session(session: AsyncSession, script: Script[Any]) -> Any:
    """Run `script` through `session` (the caller commits): what it returns."""
    answer: Any = None
    while True:
        try:
            statement, params = script.send(answer)
        except StopIteration as done:
            return done.value
        connection = await session.connection()  # Core, as the ORM's flush would: the engine's guard sees it
        result = await connection.execute(statement, params)
        answer = result.first() if returned_columns(statement) is not None else None


def checked(write: Any, locked: list[tuple[type[Base], Any]]) -> Write:
    """`write` if a plan may return it: an Insert, or an Update of a row as one of its `Lock`s
    answered (`locked`), keeping the row's org and id; the counters move from that row."""
    if isinstance(write, Insert):
        return write
    if not isinstance(write, Update):
        raise RuntimeError(f"a plan returns its one write (an Insert or an Update), not {write!r}")
    if not any(write.locked is row and write.model is model for model, row in locked):
        raise RuntimeError(f"{write.model.__name__} changed without being locked first")
    if ("org_id" in write.values and write.values["org_id"] != write.locked.org_id) or "id" in write.values:
        raise RuntimeError("a row cannot move to another organization or id")
    return write


def _run_on_sqlite(connection: sqlite3.Connection, statements: Statements, first: SQL | None = None) -> Any:
    """The whole transaction on the thread that owns `connection`: aiosqlite's worker thread (one
    trip) or the event loop's (inline). `first`: its first statement, already taken from
    `statements`; None if that one has run on `connection` (BEGIN, answering no row)."""
    try:
        sql, values = statements.send(None) if first is None else first
        while sql is not None:
            sql, values = statements.send(connection.execute(sql, values).fetchone())
        return values
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


async def _run_on_asyncpg(connection: asyncpg.Connection, statements: Statements) -> Any:
    try:
        sql, values = next(statements)
        while sql is not None:
            if values is None:  # statements with their values written in (db/postgres/inlined.py): no row
                await connection.execute(sql)
                sql, values = statements.send(None)
            else:
                sql, values = statements.send(await connection.fetchrow(sql, *values))
        return values
    except BaseException:
        if not connection.is_closed() and connection.is_in_transaction():
            await connection.execute("ROLLBACK")
        raise


def _is_integrity_error(error: BaseException) -> bool:
    return isinstance(error, sqlite3.IntegrityError | asyncpg.IntegrityConstraintViolationError)


class _Sent:
    """What a driver transaction sent: how many statements (BEGIN and COMMIT aside), and the last."""

    statements_run = 0
    last_sql = ""

    def _run(self, sql: str, values: tuple[Any, ...] = ()) -> SQL:
        if not sql.startswith(("BEGIN", "COMMIT")):
            self.statements_run += 1
        self.last_sql = sql
        return sql, values

    def _run_inlined(self, statements: list[tuple[str, str]]) -> tuple[str, None]:
        """Statements sent together (PostgreSQL's simple protocol), each (as prepared, with its
        placeholders: what an error shows, no org's values; with its values written in: what is sent)."""
        for shown, _ in statements:
            self._run(shown)
        self.last_sql = "; ".join(shown for shown, _ in statements)
        return "; ".join(sent for _, sent in statements), None


class _Transaction(_Sent):
    """One plan's statements for the driver (BEGIN and COMMIT included), and the counters they move.

    SQLite: BEGIN IMMEDIATE (the write lock up front), each step, the write, the counter
    upsert, COMMIT. PostgreSQL: the org's creation waits for the write, and goes with it
    and the counter upsert as one statement; BEGIN comes before the first statement that
    is not that one, so a plan that only writes is one statement, atomic on its own.
    """

    def __init__(self, statements: _Statements, shards: int) -> None:
        self._statements = statements
        self._shards = shards
        self._pending: Pending = {}
        self._locked: list[tuple[type[Base], Any]] = []  # what `Lock` answered: an Update starts from one
        self._compose = statements.dialect == "postgresql"

    def sql(self, plan: Plan) -> Statements:
        s = self._statements
        began = not self._compose
        if began:
            yield self._run("BEGIN IMMEDIATE")
        org: EnsureOrg | None = None
        answer: Any = None
        while True:
            try:
                step = plan.send(answer)
            except StopIteration as done:
                write = checked(done.value, self._locked)
                break
            if isinstance(step, EnsureOrg) and self._compose:
                org, answer = step, None  # goes with the write
                continue
            if not began:
                yield self._run("BEGIN")
                began = True
            prepared, values = self._read(step)
            answer = prepared.row((yield self._run(prepared.sql, values)))
            if answer is None and isinstance(step, Lock | Find):
                raise not_found(step.model, step.id)
            if isinstance(step, Lock):
                self._locked.append((step.model, answer))
        if isinstance(write, Update) and all(getattr(write.locked, k) == v for k, v in write.values.items()):
            result = write.locked  # a change of nothing writes nothing
        else:
            columns = self._count(write)
            params = {f"set_{key}": value for key, value in columns.items()}
            if isinstance(write, Update):
                params["row_id"] = write.locked.id
            additions = counter_additions(self._pending, self._shards)  # one row: at most one org
            # The keyed aggregates (money) are statements of their own, after the write, in a fixed
            # order. As CTEs of the write they saved a round trip, but PostgreSQL runs a statement's
            # CTEs in no fixed order, and two writers locking the same rows deadlocked. On PostgreSQL
            # they go with COMMIT, in one message.
            rows = row_additions(self._pending)
            if rows and not began:
                yield self._run("BEGIN")
                began = True
            if self._compose:
                params.update(organization_values(org.org_id) if org else {}, **(additions[0] if additions else {}))
                prepared = s.write(write, tuple(columns), with_org=org is not None, with_counters=bool(additions))
                money = [(s.add_to_rows[table].sql, s.inlined(s.add_to_rows[table]).sql(row)) for table, row in rows]
                if isinstance(write, Update):
                    # Its Lock began the transaction. The update, the money upserts and COMMIT go in
                    # one message (db/postgres/inlined.py), in this order; the row it wrote is the
                    # locked one with the columns set (no trigger, no server-side value).
                    update = (prepared.sql, s.inlined(prepared).sql(params))
                    yield self._run_inlined([update, *money, ("COMMIT", "COMMIT")])
                    yield None, write.locked._replace(**columns)
                    return
                result = prepared.row((yield self._run(prepared.sql, prepared.values(params))))
                if money:
                    yield self._run_inlined([*money, ("COMMIT", "COMMIT")])
                    yield None, result
                    return
            else:
                prepared = s.write(write, tuple(columns))
                result = prepared.row((yield self._run(prepared.sql, prepared.values(params))))
                for addition in additions:
                    yield self._run(s.add_counters.sql, s.add_counters.values(addition))
                for table, row in rows:
                    yield self._run(s.add_to_rows[table].sql, s.add_to_rows[table].values(row))
        if began:
            yield self._run("COMMIT")
        yield None, result

    def _read(self, step: Read) -> tuple[Prepared, tuple[Any, ...]]:
        s = self._statements
        match step:
            case Lock(model, id_, scope):
                prepared = s.get("lock", model, scope is not None)
                return prepared, prepared.values({"row_id": _row_id(model, id_), "scope": scope})
            case Find(model, id_, org_id):
                prepared = s.get("find", model)
                return prepared, prepared.values({"row_id": _row_id(model, id_), "scope": org_id})
            case EnsureOrg(org_id):
                return s.ensure_organization, s.ensure_organization.values(organization_values(org_id))
        raise RuntimeError(f"a plan yields reads and returns its one write, not {step!r}")

    def _count(self, write: Write) -> dict[str, Any]:
        """Move the pending counters by `write` (`checked`): from nothing (Insert) or from the row
        as locked in this transaction (Update) to the values it sets. Returns every column it sets."""
        if isinstance(write, Insert):
            columns = with_defaults(write.model, write.values, on_update=False)
            count_inserted(self._pending, write.model, SimpleNamespace(**columns))
            return columns
        columns = with_defaults(write.model, write.values, on_update=True)
        count_changed(self._pending, write.model, write.locked, write.locked._replace(**columns))
        return columns

    @property
    def changed_orgs(self) -> list[str]:
        return [org_id for org_id, deltas in self._pending.items() if moves(deltas)]


class _ScriptTransaction(_Sent):
    """A script's statements for the driver, in BEGIN (IMMEDIATE on SQLite) ... COMMIT.
    A script returns its result and the orgs whose stats it changed."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        self.changed_orgs: list[str] = []

    def sql(self, script: Script[tuple[Any, list[str]]]) -> Statements:
        yield self._run("BEGIN IMMEDIATE" if self._dialect == "sqlite" else "BEGIN")
        answer: Any = None
        while True:
            try:
                statement, params = script.send(answer)
            except StopIteration as done:
                result, self.changed_orgs = done.value
                break
            step = prepared(statement, self._dialect)
            table = counted_table_written(step.sql)
            if table is not None:
                raise RuntimeError(f"a script cannot write {table}: only a plan moves its counters")
            answer = step.row((yield self._run(step.sql, step.values(params))))
        yield self._run("COMMIT")
        yield None, result


class DriverRowWrites:
    """Plans run as one transaction on the driver connection of a connection of `engine`'s pool."""

    transaction_class = _Transaction  # bench.servers runs the same plans without a counter delta

    def __init__(self, engine: AsyncEngine, shards: int, inline: InlineWrites | None = None) -> None:
        """`inline`: SQLite's transactions on the event loop's thread where they can (db/sqlite/inline_writes.py)."""
        self._engine = engine
        self._statements = _Statements(engine.dialect.name)
        self._shards = shards
        self._inline = inline

    async def run(self, plan: Plan) -> tuple[Any, list[str]]:
        """Run `plan` and commit. Returns the row it wrote and the orgs whose counters moved.
        A driver's failure is raised as SQLAlchemy's `DBAPIError`, for `db.retries`."""
        return await self._run(self.transaction_class(self._statements, self._shards), plan)

    async def run_script(self, script: Script[tuple[Any, list[str]]]) -> tuple[Any, list[str]]:
        """Run `script` and commit, as `run` does a plan: what it returns."""
        return await self._run(_ScriptTransaction(self._statements.dialect), script)

    async def _run(self, transaction: _Transaction | _ScriptTransaction, source: Any) -> tuple[Any, list[str]]:
        statements = transaction.sql(source)
        try:
            if self._statements.dialect == "sqlite":
                result = await self._on_sqlite(statements)
            else:
                result = await self._on_pool(lambda driver: _run_on_asyncpg(driver, statements))
        except (sqlite3.Error, asyncpg.PostgresError, *LOST_CONNECTION) as error:
            error_type = IntegrityError if _is_integrity_error(error) else DBAPIError
            # A connection lost before COMMIT: nothing was committed, run it again (db/retries.py). Lost
            # while COMMIT was on its way, the write may have committed: running it again could apply
            # it twice (a payment), so the caller gets the error.
            again = isinstance(error, LOST_CONNECTION) and not transaction.last_sql.endswith("COMMIT")
            raise error_type(transaction.last_sql, None, error, connection_invalidated=again) from error
        for _ in range(transaction.statements_run):
            count_statement()
        return result, transaction.changed_orgs

    async def _on_sqlite(self, statements: Statements) -> Any:
        """Inline on the event loop's thread, unless the write lock is taken: then in one trip to
        the worker thread of a pooled connection, which waits for it."""
        begin = cast(SQL, next(statements))
        if self._inline is not None:
            connection = self._inline.begin(begin)
            if connection is not None:
                return _run_on_sqlite(connection, statements)
        return await self._on_pool(lambda driver: in_one_trip(driver, _run_on_sqlite, statements, begin))

    async def _on_pool(self, run: Callable[[Any], Awaitable[Any]]) -> Any:
        """`run(driver connection)` on a connection of the engine's pool."""
        pooled = await self._engine.raw_connection()  # the pool's connection, without a Connection around it
        driver: Any = pooled.driver_connection
        try:
            return await run(driver)
        except LOST_CONNECTION:
            pooled.invalidate()
            raise
        finally:
            if self._statements.dialect != "sqlite" and not driver.is_closed() and driver.is_in_transaction():
                pooled.invalidate()  # cancelled mid-transaction: its state is unknown
            pooled.close()  # back to the pool (a no-op reset: nothing is open)


def _row_id(model: type[Base], id_: str) -> int:
    parsed = parse_id(id_)
    if parsed is None:
        raise not_found(model, id_)
    return parsed


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _write_statement(write_kind: type, model: type[Base], keys: tuple[str, ...]) -> Any:
    """INSERT or UPDATE (of :row_id) setting `keys` from parameters `set_<key>`, returning every column."""
    table = _table(model)
    values: dict[str, Any] = {key: bindparam(f"set_{key}") for key in keys}
    if write_kind is Insert:
        return insert(table).values(values).returning(*table.c)
    return update(table).where(table.c.id == bindparam("row_id")).values(values).returning(*table.c)


class _Statements:
    """Each step's statement compiled for one dialect, once per model (and columns set)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.ensure_organization = Prepared(ENSURE_ORGANIZATION[dialect], dialect)
        self.add_counters = Prepared(ADD_COUNTERS[dialect], dialect)
        self.add_to_rows = {table: Prepared(statement, dialect) for table, statement in ADD_TO_ROWS[dialect].items()}
        self._prepared: dict[tuple[Any, ...], Prepared] = {}
        self._inlined: dict[str, Inlined] = {}

    def inlined(self, prepared: Prepared) -> Inlined:
        """`prepared` (PostgreSQL's) with its values written in; made once per statement."""
        found = self._inlined.get(prepared.sql)
        if found is None:
            found = self._inlined[prepared.sql] = Inlined(prepared)
        return found

    def get(self, kind: str, model: type[Base], *args: Any) -> Prepared:
        key = (kind, model, *args)
        prepared = self._prepared.get(key)
        if prepared is None:
            statement = row_select(model, scoped=kind == "find" or args[0], locking=kind == "lock")
            prepared = self._prepared[key] = Prepared(statement, self.dialect, returns=_table(model))
        return prepared

    def write(
        self, write: Write, keys: tuple[str, ...], *, with_org: bool = False, with_counters: bool = False
    ) -> Prepared:
        """The write setting `keys`; on PostgreSQL with the org's creation and the counter upsert as CTEs."""
        key = (type(write), write.model, keys, with_org, with_counters)
        prepared = self._prepared.get(key)
        if prepared is None:
            statement = _write_statement(type(write), write.model, keys)
            if with_org:
                statement = statement.add_cte(ENSURE_ORGANIZATION[self.dialect].cte("ensure_organization"))
            if with_counters:
                statement = statement.add_cte(ADD_COUNTERS[self.dialect].cte("add_counters"))
            prepared = self._prepared[key] = Prepared(statement, self.dialect, returns=_table(write.model))
        return prepared
