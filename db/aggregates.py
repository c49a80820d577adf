"""The aggregates: the only code that writes `organization_stats` and the keyed money tables.

Each aggregate is declared once (`AGGREGATES`: which rows, what is summed, keyed
how). Every session of the app is an `AggregateSession`. Its hooks turn each
flushed insert, change and delete of a Load or Invoice into deltas (what the row
gives each aggregate after, minus before), and just before commit apply them: one
atomic upsert of the org's stats row (`SET n = n + :d, version = version + 1`)
and one per keyed row that moved, in the same transaction. `insert_counted` and
`update_counted` insert and change rows with Core and count them the same way.

Writes cannot forget the counters: `guard_writes` refuses, at the engine,
every INSERT, UPDATE or DELETE on a counted table that is neither a session
flush (whose deltas the hooks collect) nor `insert_counted`'s or `update_counted`'s, whatever built
it (ORM bulk statements, Core, text, driver SQL).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Insert,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.engine.interfaces import ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from db.counters import (
    FINALIZED,
    GROUPS,
    INVOICE_STATUS,
    LOAD_STATUS,
    LOAD_TYPE,
    MONEY_TOTALS,
    OPEN,
    CounterGroup,
    counter_names,
)
from db.engine import Unread
from db.models import (
    Base,
    CustomerBalance,
    Invoice,
    Load,
    OrganizationStats,
    Receivable,
    ReceivableDay,
    RevenueMonth,
    utcnow,
)
from db.money import month_of
from db.work import Script

LOAD_STATUS_COUNTERS = LOAD_STATUS.counters
LOAD_TYPE_COUNTERS = LOAD_TYPE.counters
INVOICE_STATUS_COUNTERS = INVOICE_STATUS.counters
COUNTERS: tuple[str, ...] = counter_names(GROUPS)
SUMS: tuple[str, ...] = (*COUNTERS, *MONEY_TOTALS)  # the org's stats row: every column summed over its shards


Key = Callable[[Any], tuple[Any, ...]]
_STATS_ROW: tuple[tuple[None, Key], ...] = ((None, lambda row: ()),)


@dataclass(frozen=True)
class Summed:
    """One aggregate, declared: over the rows of `source` that `where` admits, the sums of what
    `amounts(row)` gives (column -> value), kept in each (table, key) of `kept`: in the row of
    `table` (None: the org's stats row) keyed by the row's org and `key(row)`. `reads`: the
    columns of `source` these read.

    Every write moves each one by the difference between what the row gave before and after
    (`count_inserted`, `count_changed`, the session's flush hooks), in the writer's transaction."""

    source: type[Base]
    reads: tuple[str, ...]
    amounts: Callable[[Any], Mapping[str, int]]
    where: Callable[[Any], bool] = field(default=lambda row: True)
    kept: tuple[tuple[str | None, Key], ...] = _STATS_ROW

    @classmethod
    def keyed(
        cls,
        source: type[Base],
        reads: tuple[str, ...],
        amounts: Callable[[Any], Mapping[str, int]],
        where: Callable[[Any], bool],
        *kept: tuple[type[Base], Key],
    ) -> Summed:
        """Kept in rows of keyed tables: each of `kept` is (the table's model, `key(row)`)."""
        return cls(source, reads, amounts, where, tuple((model.__tablename__, key) for model, key in kept))


def _counted(group: CounterGroup, source: type[Base]) -> Summed:
    """A group of counters: each row adds 1 to the counter of its value."""
    counters, column = group.counters, group.column
    return Summed(source, (column,), lambda row: {counters[getattr(row, column)]: 1})


def _balance(invoice: Any) -> int:
    return (invoice.amount_cents or 0) - (invoice.paid_cents or 0)


def _is_finalized(invoice: Any) -> bool:
    return invoice.status in FINALIZED


def _has_open_balance(invoice: Any) -> bool:
    return invoice.status in OPEN and _balance(invoice) > 0


def _owed(invoice: Any) -> dict[str, int]:
    return {"invoices": 1, "balance": _balance(invoice)}


_MONEY_READS = ("status", "amount_cents", "paid_cents")
AGGREGATES = (
    # The counters: loads by status and by type, invoices by status.
    _counted(LOAD_STATUS, Load),
    _counted(LOAD_TYPE, Load),
    _counted(INVOICE_STATUS, Invoice),
    # Money totals (cents) on the stats row, over finalized invoices.
    Summed(
        Invoice,
        _MONEY_READS,
        lambda i: {"money_invoiced": i.amount_cents or 0, "money_collected": i.paid_cents or 0},
        where=_is_finalized,
    ),
    # Revenue by month of invoice date, over finalized invoices.
    Summed.keyed(
        Invoice,
        (*_MONEY_READS, "invoice_date"),
        lambda i: {
            "invoiced_count": 1,
            "invoiced": i.amount_cents or 0,
            "paid_count": int((i.paid_cents or 0) > 0),
            "collected": i.paid_cents or 0,
        },
        _is_finalized,
        (RevenueMonth, lambda i: (month_of(i.invoice_date),)),
    ),
    # Receivables: open balances per (customer, invoice date), and the same sums per date (the
    # org's aging) and per customer (its ranking); customer 0 stands for no customer.
    Summed.keyed(
        Invoice,
        (*_MONEY_READS, "invoice_date", "customer_id"),
        _owed,
        _has_open_balance,
        (Receivable, lambda i: (i.customer_id or 0, i.invoice_date)),
        (ReceivableDay, lambda i: (i.invoice_date,)),
        (CustomerBalance, lambda i: (i.customer_id or 0,)),
    ),
)
BY_SOURCE: dict[type[Base], tuple[Summed, ...]] = {
    model: tuple(a for a in AGGREGATES if a.source is model) for model in (Load, Invoice)
}
READS: dict[type[Base], tuple[str, ...]] = {
    model: tuple(dict.fromkeys(column for a in aggregates for column in a.reads))
    for model, aggregates in BY_SOURCE.items()
}
_KEYED: dict[str, Table] = {
    table: cast(Table, Base.metadata.tables[table]) for a in AGGREGATES for table, _ in a.kept if table is not None
}
COUNTED_TABLES = {*(group.table for group in GROUPS), *_KEYED, OrganizationStats.__tablename__}

# Keys in Session.info and execution options.
PENDING = "tally.pending_deltas"
REREAD = "tally.reread_after_commit"  # orgs whose stats are read (summed) once committed
SHARDS = "tally.stats_shards"
LOCKED = "tally.locked_rows"

_DIALECTS = (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))  # statements are built per dialect


@dataclass(frozen=True)
class StatsSnapshot:
    """The aggregate row of one org at one version. `counts`: every column of SUMS, the
    counters and the money totals (cents)."""

    org_id: str
    counts: dict[str, int]
    version: int
    updated_at: datetime | None
    last_recalculated_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> StatsSnapshot:
        """From a row of the stats table: SQLAlchemy's, or `Prepared.row`'s named tuple."""
        return cls(
            org_id=row.org_id,
            counts={c: int(getattr(row, c)) for c in SUMS},
            version=int(row.version),
            updated_at=row.updated_at,
            last_recalculated_at=row.last_recalculated_at,
        )

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> StatsSnapshot:
        return cls(
            org_id=row["org_id"],
            counts={c: int(row[c]) for c in SUMS},
            version=int(row["version"]),
            updated_at=row["updated_at"],
            last_recalculated_at=row["last_recalculated_at"],
        )

    @classmethod
    def summed(cls, org_id: str, rows: Sequence[Mapping[str, Any]]) -> StatsSnapshot:
        """From the org's shard rows (`STATS_ROWS_QUERY`): what `STATS_QUERY` answers for them."""
        if len(rows) == 1:
            return cls.from_mapping(rows[0])
        if not rows:
            return cls.empty(org_id)
        totals = {c: sum(row[c] for row in rows) for c in (*SUMS, "version")}
        latest = {c: _latest(row[c] for row in rows) for c in ("updated_at", "last_recalculated_at")}
        return cls.from_mapping({"org_id": org_id, **totals, **latest})

    @classmethod
    def empty(cls, org_id: str) -> StatsSnapshot:
        return cls(org_id, dict.fromkeys(SUMS, 0), 0, None, None)


def _latest(stamps: Iterable[datetime | None]) -> datetime | None:
    """max() as SQL's: of the values that are not null."""
    return max((stamp for stamp in stamps if stamp is not None), default=None)


# A transaction's deltas, per org: per row they move (None: the org's stats row; else a keyed
# aggregate's (table, key)), per column.
Target = tuple[str, tuple[Any, ...]] | None
Deltas = dict[Target, dict[str, int]]
Pending = dict[str, Deltas]
COUNTED = "tally.counted"  # execution option of a statement whose counter deltas are already pending
_flushing: ContextVar[bool] = ContextVar("tally_flushing", default=False)
SOURCE_TABLES = sorted({group.table for group in GROUPS})  # the tables whose rows are counted
# Anywhere in the statement (after comments, in a CTE): a verb that writes rows, then the table,
# maybe schema-qualified or quoted. `FOR UPDATE OF loads` does not match: OF is no table.
_WRITE_VERBS = (
    r"INSERT(?:\s+OR\s+\w+)?\s+INTO", r"REPLACE\s+INTO", r"UPDATE(?:\s+OR\s+\w+)?", r"DELETE\s+FROM",
    r"TRUNCATE(?:\s+TABLE)?", r"COPY", r"MERGE\s+INTO",
)  # fmt: skip
_WRITE_VERB = f"(?:{'|'.join(_WRITE_VERBS)})"
_COUNTED_WRITE = re.compile(rf"\b{_WRITE_VERB}\s+(?:ONLY\s+)?(?:\"?\w+\"?\.)?\"?({'|'.join(SOURCE_TABLES)})\b", re.I)


class AggregateSession(Session):
    """A Session whose transactions keep organization_stats exact."""

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        token = _flushing.set(True)  # the statements of a flush are counted by the hooks below
        try:
            super().flush(objects)
        finally:
            _flushing.reset(token)


def guard_writes(engine: AsyncEngine) -> None:
    """Refuse on `engine` every write to a counted table whose counters nobody moves."""
    event.listen(engine.sync_engine, "before_cursor_execute", _refuse_uncounted_write)


def _refuse_uncounted_write(
    _conn: Connection, _cursor: Any, statement: str, _parameters: Any, context: ExecutionContext | None, _many: bool
) -> None:
    table = counted_table_written(statement)
    if table is None or _flushing.get() or (context is not None and context.execution_options.get(COUNTED)):
        return
    raise RuntimeError(
        f"a {table} write outside the session's flush would bypass the aggregate: "
        "change ORM objects or use db.aggregates.insert_counted / update_counted"
    )


def counted_table_written(statement: str) -> str | None:
    """The counted table `statement` writes, if any. Cached: most statements are the same few
    compiled strings, and searching a long one (the counter upsert) cost ~40 µs per write;
    statements longer than that (many-row inserts) are searched each time."""
    if len(statement) > _CACHED_STATEMENT_CHARS:
        return _search_counted_write(statement)
    return _cached_search_counted_write(statement)


def _search_counted_write(statement: str) -> str | None:
    match = _COUNTED_WRITE.search(statement)
    return match.group(1) if match else None


_CACHED_STATEMENT_CHARS = 4096
_cached_search_counted_write = functools.lru_cache(maxsize=1024)(_search_counted_write)


@functools.cache
def _counted_insert(model: type[Base]) -> Insert:
    """`INSERT ... RETURNING` every column, built once per model (~0.1 ms each time otherwise).
    Not `sort_by_parameter_order`: on SQLite that makes SQLAlchemy insert a row per statement
    (1,000 trips to aiosqlite's thread for an import's 1,000 loads instead of one)."""
    table = cast(Table, model.__table__)
    return insert(table).returning(*table.c)


@functools.cache
def _unnest_insert(model: type[Base], keys: tuple[str, ...]) -> Insert:
    """PostgreSQL: `INSERT ... SELECT unnest(:many_<key>), ... RETURNING` every column: the
    rows arrive as one array per column (`keys`), whatever their number."""
    table = cast(Table, model.__table__)
    arrays = [func.unnest(bindparam(f"many_{key}", type_=postgresql.ARRAY(table.c[key].type))) for key in keys]
    return insert(table).from_select(list(keys), select(*arrays)).returning(*table.c)


def with_defaults(model: type[Base], values: dict[str, Any], *, on_update: bool) -> dict[str, Any]:
    """`values` and the Python-side default (on insert) or onupdate value of every column they
    leave out: what Core adds to its own INSERTs and UPDATEs."""
    out = dict(values)
    for key, make, value in _defaults(model, on_update):
        if key not in out:
            out[key] = value if make is None else make(None)
    return out


@functools.cache
def _defaults(model: type[Base], on_update: bool) -> tuple[tuple[str, Any, Any], ...]:
    """(column, its default's callable or None, its scalar) of each column of `model` with a
    Python-side default (on insert) or onupdate value."""
    found = []
    for column in cast(Table, model.__table__).c:
        default: Any = column.onupdate if on_update else column.default
        if default is not None and default.is_callable:
            found.append((column.key, default.arg, None))
        elif default is not None and default.is_scalar:
            found.append((column.key, None, default.arg))
    return tuple(found)


@functools.cache
def _counted_update(model: type[Base]) -> Update:
    """`UPDATE ... WHERE id = :row_id RETURNING` every column; the SET clause follows the parameters."""
    table = cast(Table, model.__table__)
    return update(table).where(table.c.id == bindparam("row_id")).returning(*table.c)


def _pending(session: AsyncSession | Session) -> Pending:
    return cast(Pending, session.info.setdefault(PENDING, {}))


async def insert_counted(session: AsyncSession, model: type[Base], rows: list[dict[str, Any]]) -> Sequence[Row[Any]]:
    """INSERT `rows` of a counted model in one Core statement (cheaper than one ORM object
    each), their counters added to this transaction's deltas. Returns the inserted rows
    (every column), in no particular order."""
    if not rows:
        return []
    connection = await session.connection()
    if connection.dialect.name == "postgresql" and len(rows) > 1:
        # One array per column, not SQLAlchemy's multi-row VALUES: a batch of 1,000 invoices
        # bound 15,000 parameters, and planning that cost PostgreSQL ~3x the rows' own work.
        rows = [with_defaults(model, row, on_update=False) for row in rows]
        keys = tuple(sorted({key for row in rows for key in row}))
        arrays = {f"many_{key}": [row.get(key) for row in rows] for key in keys}
        statement: Insert = _unnest_insert(model, keys)
        inserted = (await connection.execute(statement, arrays, execution_options={COUNTED: True})).all()
    else:
        inserted = (await connection.execute(_counted_insert(model), rows, execution_options={COUNTED: True})).all()
    pending = _pending(session)
    for row in inserted:
        count_inserted(pending, model, row)
    return inserted


def count_inserted(pending: Pending, model: type[Base], row: Any) -> None:
    """Add an inserted row of `model` (every column) to the pending deltas."""
    _contribute(pending, model, row, +1)


def count_changed(pending: Pending, model: type[Base], old: Any, new: Any) -> None:
    """Add a changed row of `model`, from its locked state `old` to `new`, to the pending deltas.
    A row kept under the same key gets only the differences of its amounts (a payment moves 5
    sums, not 26)."""
    aggregates = BY_SOURCE.get(model)
    if not aggregates:
        return
    deltas = _deltas(pending, old.org_id)
    for aggregate in aggregates:
        was = aggregate.amounts(old) if aggregate.where(old) else None
        now = aggregate.amounts(new) if aggregate.where(new) else None
        if was is not None and now is not None:
            moved = dict(now)
            for column, value in was.items():  # a counter's column follows the value
                moved[column] = moved.get(column, 0) - value
            for table, key in aggregate.kept:
                if (old_key := key(old)) == key(new):
                    _add(deltas, table, old_key, moved, +1)
                else:
                    _add(deltas, table, old_key, was, -1)
                    _add(deltas, table, key(new), now, +1)
            continue
        for amounts, row, sign in ((was, old, -1), (now, new, +1)):
            if amounts is not None:
                for table, key in aggregate.kept:
                    _add(deltas, table, key(row), amounts, sign)


def _contribute(pending: Pending, model: type[Base], row: Any, sign: int) -> None:
    """Add (`sign` +1) or take away (-1) what `row` gives each aggregate of its model."""
    aggregates = BY_SOURCE.get(model)
    if not aggregates:
        return
    deltas = _deltas(pending, row.org_id)
    for aggregate in aggregates:
        if aggregate.where(row):
            amounts = aggregate.amounts(row)
            for table, key in aggregate.kept:
                _add(deltas, table, key(row), amounts, sign)


def _deltas(pending: Pending, org_id: str) -> Deltas:
    deltas = pending.get(org_id)
    if deltas is None:
        deltas = pending[org_id] = {}
    return deltas


def _add(deltas: Deltas, table: str | None, key: tuple[Any, ...], amounts: Mapping[str, int], sign: int) -> None:
    """Move `deltas` by `sign` times `amounts`, in the row of `table` keyed `key` (None: the
    stats row); a zero amount moves nothing. Sums that cancel out stay as 0: `moves` and
    `row_additions` skip them."""
    target = None if table is None else (table, key)
    moved = deltas.get(target)
    if moved is None:
        moved = deltas[target] = {}
    for column, value in amounts.items():
        if value:
            moved[column] = moved.get(column, 0) + sign * value


def moves(deltas: Deltas) -> bool:
    """Whether an org's `deltas` move any value (they may all cancel out)."""
    return any(any(moved.values()) for moved in deltas.values())


async def update_counted(session: AsyncSession, model: type[Base], row: Row[Any], values: dict[str, Any]) -> Row[Any]:
    """Change one row of a counted model, read with `db.queries.lock_row` in this transaction,
    in one Core UPDATE ... RETURNING (cheaper than the ORM's load, flush and refresh); the
    counters move by the difference between the locked row and the new one. A change that
    changes nothing writes nothing. Returns the row as it is now (every column)."""
    key = inspect(model).identity_key_from_primary_key((row.id,))
    if key not in session.info.get(LOCKED, ()):
        raise RuntimeError(f"{model.__name__} changed without being locked first")
    if key in session.sync_session.identity_map:  # its ORM object would go stale and count from the old state
        raise RuntimeError(f"{model.__name__} {row.id} is an ORM object of this session: change it through the ORM")
    if ("org_id" in values and values["org_id"] != row.org_id) or "id" in values:
        raise RuntimeError("a row cannot move to another organization or id")
    if all(getattr(row, column) == value for column, value in values.items()):
        return row
    connection = await session.connection()
    params = {"row_id": row.id, **values}
    changed = (await connection.execute(_counted_update(model), params, execution_options={COUNTED: True})).one()
    count_changed(_pending(session), model, row, changed)
    return changed


def mark_locked(session: Session, rows: list[Any], model: type[Base] | None = None) -> None:
    """Record rows read with SELECT ... FOR UPDATE; only those may be changed. `model`: the
    rows are Core rows of it, not ORM objects."""
    locked: set[Any] = session.info.setdefault(LOCKED, set())
    if model is None:
        locked.update(inspect(row).identity_key for row in rows)
    else:
        locked.update(inspect(model).identity_key_from_primary_key((row.id,)) for row in rows)


def _old_value(obj: object, attr: str) -> Any:
    history = inspect(obj).attrs[attr].history
    values = (*history.deleted, *history.unchanged)
    if not values:
        raise RuntimeError(f"{type(obj).__name__}.{attr} was not loaded before the change")
    return values[0]


def _require_locked(session: Session, obj: object) -> None:
    if inspect(obj).identity_key not in session.info.get(LOCKED, ()):
        raise RuntimeError(f"{type(obj).__name__} changed without being locked first")


@event.listens_for(AggregateSession, "before_flush")
def _collect_deltas(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    pending = _pending(session)
    for obj in session.new:
        _contribute(pending, type(obj), obj, +1)
    for obj in session.deleted:
        if type(obj) in BY_SOURCE:
            _require_locked(session, obj)
            _contribute(pending, type(obj), _as_loaded(obj), -1)
    for obj in session.dirty:
        if type(obj) not in BY_SOURCE or not session.is_modified(obj):
            continue
        _require_locked(session, obj)
        if inspect(obj).attrs["org_id"].history.has_changes():
            raise RuntimeError("a row cannot move to another organization")
        count_changed(pending, type(obj), _as_loaded(obj), obj)


def _as_loaded(obj: Any) -> SimpleNamespace:
    """The columns the aggregates read of `obj`, as loaded (before this flush's changes)."""
    return SimpleNamespace(org_id=obj.org_id, **{attr: _old_value(obj, attr) for attr in READS[type(obj)]})


@event.listens_for(AggregateSession, "before_commit")
def _apply_deltas(session: Session) -> None:
    session.flush()
    pending: Pending = session.info.pop(PENDING, {})
    for params in counter_additions(pending, session.info.get(SHARDS, 1)):
        _ADD.run(session.connection(), params)  # Core, not the ORM's execute; on SQLite it goes with COMMIT
        session.info.setdefault(REREAD, []).append(params["org_id"])
    for table, params in row_additions(pending):
        _ADD_TO_ROWS[table].run(session.connection(), params)


_NO_SUMS = dict.fromkeys(SUMS, 0)  # every stats column, before a transaction's deltas


def counter_additions(pending: Pending, shards: int) -> list[dict[str, Any]]:
    """The parameters of `ADD_COUNTERS`, the one statement per org that applies a transaction's
    deltas to its stats row (none for an org whose deltas all cancel out): it creates the org's
    (shard) row or adds the delta to it, bumping `version`, also when only a keyed aggregate
    moved (`row_additions`). After commit each org's stats are read again (REREAD) for its
    event: the sums of every shard, never this one row (other processes, with another
    TALLY_STATS_SHARDS, or an earlier setting may have written other rows of the org)."""
    additions = []
    now = utcnow()
    for org_id in sorted(pending):  # a fixed order: concurrent writers never deadlock here
        deltas = pending[org_id]
        if moves(deltas):
            # Spread over the org's shards, writers of one hot org rarely wait on one row.
            shard = random.randrange(shards) if shards > 1 else 0
            additions.append({"org_id": org_id, "shard": shard, "now": now, **_NO_SUMS, **deltas.get(None, {})})
    return additions


def row_additions(pending: Pending) -> list[tuple[str, dict[str, Any]]]:
    """The keyed aggregates' upserts (table, parameters of `ADD_TO_ROWS[dialect][table]`), one
    per row whose sums move, in a fixed order (no deadlock between writers)."""
    rows = sorted(
        (target[0], org_id, target[1], moved)
        for org_id, deltas in pending.items()
        for target, moved in deltas.items()
        if target is not None and any(moved.values())
    )  # a table's keys are alike: they compare; (table, org, key) is unique, so `moved` is never compared
    return [
        (table, {"org_id": org_id, **dict(zip(_KEY_COLUMNS[table], key, strict=True)), **_NO_ROW_SUMS[table], **moved})
        for table, org_id, key, moved in rows
    ]


def correction(
    dialect: str,
    org_id: str,
    delta: dict[str, int],
    epoch: int,
    rows: Sequence[tuple[str, tuple[Any, ...], str, int]] = (),
) -> Script[StatsSnapshot | None]:
    """A recalculation's correction (actual - stored, both read in one snapshot), as a script
    (db/row_writes.py).

    One upsert of the org's shard 0 (reads sum the shards, so any shard can carry
    a correction). Sets last_recalculated_at; with a non-zero delta also adds it,
    bumping version and `corrections`. `epoch` is the `corrections` value seen in
    that snapshot: if another recalculation corrected the row since, nothing is
    written and None is returned (recount again), so two recalculations never
    correct twice. `rows`: the keyed money rows' corrections (table, key, column, delta),
    applied in the same transaction once the stats row's epoch matched.
    """
    corrected = 1 if delta or rows else 0
    params = {
        "org_id": org_id,
        "now": utcnow(),
        "epoch": epoch,
        "first": corrected,  # version and corrections of a row this correction creates
        **dict.fromkeys(SUMS, 0),
        **delta,
    }
    row = yield _CORRECT[dialect][bool(corrected)], params
    if row is None:
        return None
    moved: Deltas = {}
    for table, key, column, d in rows:
        sums = moved.setdefault((table, key), {})
        sums[column] = sums.get(column, 0) + d
    for table, params in row_additions({org_id: moved}):
        yield ADD_TO_ROWS[dialect][table], params
    return StatsSnapshot.from_row(row)


def _table() -> Table:
    return cast(Table, OrganizationStats.__table__)


def marked_recalculated(org_ids: list[str]) -> Script[datetime]:
    """Set `last_recalculated_at` of orgs a recalculation found exact (every row of each,
    reads take the latest): no counter, version or event changes. A run over many orgs
    records them in batches instead of a write transaction per org."""
    now = utcnow()
    for org_id in org_ids:
        yield _MARK_RECALCULATED, {"recalculated_org": org_id, "now": now}
    return now


# Not bindparam("org_id"): a parameter named after a column would also be SET, through a connection.
_MARK_RECALCULATED = (
    update(_table())
    .where(_table().c.org_id == bindparam("recalculated_org"))
    .values(last_recalculated_at=bindparam("now"))
)


def _build_correct_statement(insert: Any, *, adds: bool) -> Any:
    """`correction`'s upsert: with `adds`, the delta too; built once per dialect."""
    table = _table()
    stmt = insert(table).values(
        org_id=bindparam("org_id"),
        shard=0,
        version=bindparam("first"),
        updated_at=bindparam("now"),
        last_recalculated_at=bindparam("now"),
        corrections=bindparam("first"),
        **{c: bindparam(c) for c in SUMS},
    )
    changes: dict[str, Any] = {"last_recalculated_at": stmt.excluded.last_recalculated_at}
    if adds:
        changes.update({c: table.c[c] + stmt.excluded[c] for c in SUMS})
        changes.update(
            version=table.c.version + 1, corrections=table.c.corrections + 1, updated_at=stmt.excluded.updated_at
        )
    return stmt.on_conflict_do_update(
        index_elements=[table.c.org_id, table.c.shard], set_=changes, where=table.c.corrections == bindparam("epoch")
    ).returning(*table.c)


_CORRECT = {
    name: {adds: _build_correct_statement(insert, adds=adds) for adds in (False, True)} for name, insert in _DIALECTS
}


def _build_add_statement(insert: Any) -> Any:
    """`_add`'s upsert, built once per dialect: every counter a bound parameter."""
    table = _table()
    values: dict[str, Any] = {c: bindparam(c) for c in SUMS}
    stmt = insert(table).values(
        org_id=bindparam("org_id"),
        shard=bindparam("shard"),
        version=1,
        updated_at=bindparam("now"),
        last_recalculated_at=None,
        corrections=0,
        **values,
    )
    changes: dict[str, Any] = {c: table.c[c] + stmt.excluded[c] for c in SUMS}
    changes.update(version=table.c.version + 1, updated_at=stmt.excluded.updated_at)
    return stmt.on_conflict_do_update(index_elements=[table.c.org_id, table.c.shard], set_=changes)


def _build_row_add_statement(insert: Any, table: Table) -> Any:
    """A keyed aggregate's upsert, built once per dialect and table: its key and every sum a
    bound parameter; the sums are added to an existing row."""
    stmt = insert(table).values({c.key: bindparam(c.key) for c in table.c})
    sums = {c: table.c[c] + stmt.excluded[c] for c in _SUM_COLUMNS[table.name]}
    return stmt.on_conflict_do_update(index_elements=list(table.primary_key.columns), set_=sums)


_KEY_COLUMNS = {name: [c.key for c in t.primary_key.columns if c.key != "org_id"] for name, t in _KEYED.items()}
_SUM_COLUMNS = {name: [c.key for c in t.c if not c.primary_key] for name, t in _KEYED.items()}
_NO_ROW_SUMS = {name: dict.fromkeys(columns, 0) for name, columns in _SUM_COLUMNS.items()}
ADD_TO_ROWS = {
    name: {table: _build_row_add_statement(insert, t) for table, t in _KEYED.items()} for name, insert in _DIALECTS
}


# The common write's statement, built once (building it per commit cost ~0.7 ms of CPU);
# a recalculation's correction goes through `correction`.
ADD_COUNTERS = {name: _build_add_statement(insert) for name, insert in _DIALECTS}
_ADD = Unread(ADD_COUNTERS)
_ADD_TO_ROWS = {
    table: Unread({dialect: statements[table] for dialect, statements in ADD_TO_ROWS.items()}) for table in _KEYED
}


def _build_stats_query() -> Select[Any]:
    table = _table()

    def total(column: str) -> Any:
        # PostgreSQL sums bigints as numeric; the cast keeps them integers on the wire (~10 µs a read)
        return sql_cast(func.sum(table.c[column]), BigInteger).label(column)

    return (
        select(
            table.c.org_id,
            *(total(c) for c in SUMS),
            total("version"),
            total("corrections"),
            func.max(table.c.updated_at).label("updated_at"),
            func.max(table.c.last_recalculated_at).label("last_recalculated_at"),
        )
        .where(table.c.org_id == bindparam("org_id"))
        .group_by(table.c.org_id)
    )


# The org's stats in one statement: the sums over its shard rows. Built once (it is
# on every read's path); execute it with {"org_id": ...}.
STATS_QUERY = _build_stats_query()
# The same read as the org's shard rows, summed by the reader (`StatsSnapshot.summed`): PostgreSQL's
# sum() of a bigint goes through numeric, and 18 of them cost its server ~20 µs a read, more
# than returning the rows (an org has one per TALLY_STATS_SHARDS, one by default).
STATS_ROWS_QUERY = select(
    *(_table().c[c] for c in ("org_id", *SUMS, "version", "updated_at", "last_recalculated_at"))
).where(_table().c.org_id == bindparam("org_id"))


@event.listens_for(AggregateSession, "after_rollback")
def _drop_deltas(session: Session) -> None:
    for key in (PENDING, REREAD):
        session.info.pop(key, None)


@event.listens_for(AggregateSession, "do_orm_execute")
def _refuse_bulk_writes(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) in COUNTED_TABLES:
        raise RuntimeError(
            f"bulk {table.name} writes bypass the aggregate: change ORM objects instead"  # type: ignore[union-attr]
        )
