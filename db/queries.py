"""Reads (they take a `ReadSession`), and the locking reads that every write path uses
before changing a row (they take the whole session)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import Row, Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from db.aggregates import STATS_QUERY, StatsSnapshot, mark_locked
from db.errors import BadInput, NotFound
from db.models import Base, Customer, Invoice, Lane, Load, Organization
from db.work import ReadSession

M = TypeVar("M", Load, Invoice)
MAX_PAGE = 500


def parse_id(value: str) -> int | None:
    """Opaque ids are decimal strings; anything else names no row."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None


async def get_stats(session: ReadSession, org_id: str) -> StatsSnapshot:
    """The whole aggregate row in one statement (zeros, version 0 for an unknown org)."""
    row = (await session.execute(STATS_QUERY, {"org_id": org_id})).one_or_none()
    return StatsSnapshot.from_row(row) if row else StatsSnapshot.empty(org_id)


async def all_rows(session: ReadSession, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
    return list((await session.execute(statement, parameters)).all())


def _scoped(stmt: Select[Any], model: type, scope: str | None) -> Select[Any]:
    return stmt if scope is None else stmt.where(model.org_id == scope)  # type: ignore[attr-defined]


_LOCKING: dict[tuple[type, bool], Select[Any]] = {}


def _locking_select(model: type[M], *, scoped: bool) -> Select[Any]:
    """SELECT ... FOR UPDATE by :ids (and :scope), built once: every status change runs one,
    and building a statement (its cache key) costs more CPU than running it."""
    stmt = _LOCKING.get((model, scoped))
    if stmt is None:
        stmt = select(model).where(model.id.in_(bindparam("ids", expanding=True)))
        if scoped:
            stmt = stmt.where(model.org_id == bindparam("scope"))
        stmt = _LOCKING[(model, scoped)] = stmt.order_by(model.id).with_for_update()
    return stmt


async def lock_rows(session: AsyncSession, model: type[M], ids: Iterable[str], scope: str | None) -> list[M]:
    """SELECT ... FOR UPDATE the rows (in id order, so writers never deadlock).

    Unknown ids and ids outside `scope` are reported alike, as NOT_FOUND.
    """
    wanted = dict.fromkeys(ids)
    parsed = {raw: parse_id(raw) for raw in wanted}
    numeric = sorted({i for i in parsed.values() if i is not None})
    rows: Sequence[M] = []
    if numeric:
        params: dict[str, Any] = {"ids": numeric, "scope": scope}
        rows = (await session.scalars(_locking_select(model, scoped=scope is not None), params)).all()
    found = {row.id for row in rows}
    missing = [raw for raw, i in parsed.items() if i not in found]
    if missing:
        noun = model.__name__.lower()
        raise NotFound(f"No {noun} with id {', '.join(missing)}", ids=missing)
    mark_locked(session.sync_session, list(rows))
    return list(rows)


async def lock_one(session: AsyncSession, model: type[M], id_: str, scope: str | None) -> M:
    return (await lock_rows(session, model, [id_], scope))[0]


_ROW_SELECTS: dict[tuple[type, bool, bool], Select[Any]] = {}


def row_select(model: type[Base], *, scoped: bool, locking: bool = True) -> Select[Any]:
    """SELECT every column of the row :row_id (and org :scope), FOR UPDATE if `locking`; built once."""
    stmt = _ROW_SELECTS.get((model, scoped, locking))
    if stmt is None:
        table = model.__table__
        stmt = select(*table.c).where(table.c.id == bindparam("row_id"))
        if scoped:
            stmt = stmt.where(table.c.org_id == bindparam("scope"))
        stmt = _ROW_SELECTS[(model, scoped, locking)] = stmt.with_for_update() if locking else stmt
    return stmt


async def lock_row(session: AsyncSession, model: type[Base], id_: str, scope: str | None) -> Row[Any]:
    """SELECT ... FOR UPDATE one row, as a Core row (every column) for `db.aggregates.update_counted`:
    no ORM object is built. An unknown id and one outside `scope` are both NOT_FOUND."""
    parsed = parse_id(id_)
    stmt = row_select(model, scoped=scope is not None)
    connection = await session.connection()
    row = None if parsed is None else (await connection.execute(stmt, {"row_id": parsed, "scope": scope})).first()
    if row is None:
        raise NotFound(f"No {model.__name__.lower()} with id {id_}", ids=[id_])
    mark_locked(session.sync_session, [row], model)
    return row


async def lock_where(session: AsyncSession, stmt: Select[Any]) -> list[Any]:
    rows = list((await session.scalars(stmt.with_for_update())).all())
    mark_locked(session.sync_session, rows)
    return rows


async def find(session: ReadSession, model: type[Any], id_: str, scope: str | None) -> Any:
    parsed = parse_id(id_)
    if parsed is None:
        return None
    return (await session.scalars(_scoped(select(model).where(model.id == parsed), model, scope))).first()


async def get_many(session: ReadSession, model: type[Any], key: Any, keys: Sequence[Any]) -> list[Any]:
    return list((await session.scalars(select(model).where(key.in_(keys)))).all())


def encode_cursor(id_: int) -> str:
    return base64.urlsafe_b64encode(f"id:{id_}".encode()).decode()


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        prefix, value = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        if prefix == "id" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeError):
        pass
    raise BadInput("Malformed cursor")


async def page(
    session: ReadSession,
    model: type[M],
    org_id: str,
    filters: dict[str, str | None],
    first: int,
    after: str | None,
) -> tuple[list[M], bool]:
    """Keyset pagination by id: stable under concurrent inserts and deletes."""
    if not 0 <= first <= MAX_PAGE:
        raise BadInput(f"first must be between 0 and {MAX_PAGE}")
    stmt = select(model).where(model.org_id == org_id, model.id > decode_cursor(after))
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, column) == value)
    rows = list((await session.scalars(stmt.order_by(model.id).limit(first + 1))).all())
    return rows[:first], len(rows) > first


async def lanes_of(session: ReadSession, org_id: str) -> list[Lane]:
    return list((await session.scalars(select(Lane).where(Lane.org_id == org_id).order_by(Lane.id))).all())


async def organizations(session: ReadSession) -> list[Organization]:
    return list((await session.scalars(select(Organization).order_by(Organization.org_id))).all())


async def customer_in_org(session: ReadSession, customer_id: str | None, org_id: str) -> Customer | None:
    if customer_id is None:
        return None
    customer = await find(session, Customer, customer_id, org_id)
    if customer is None:
        raise NotFound(f"No customer with id {customer_id}", ids=[customer_id])
    return customer
