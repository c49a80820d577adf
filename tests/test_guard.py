"""The aggregate's guard (db/aggregates.py): a write path that would change a counted status
without its counter delta is refused, and nothing of it is committed."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Load
from db.unit_of_work import Database
from tests.helpers import Api, create_load, recount, stored


async def test_a_bulk_orm_write_to_a_counted_table_is_refused(api: Api, db: Database) -> None:
    load = await create_load(api)

    async def bulk(session: AsyncSession) -> None:
        await session.execute(update(Load).where(Load.id == int(load["id"])).values(status="ASSIGNED"))

    with pytest.raises(RuntimeError, match="bypass the aggregate"):
        await db.write(bulk)
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")


async def test_a_row_changed_without_its_lock_is_refused(api: Api, db: Database) -> None:
    """Deltas start from the row's locked current state; an unlocked change has none to start from."""
    load = await create_load(api)

    async def unlocked(session: AsyncSession) -> None:
        row = await session.get(Load, int(load["id"]))
        assert row is not None
        row.status = "ASSIGNED"
        await session.flush()

    with pytest.raises(RuntimeError, match="without being locked"):
        await db.write(unlocked)
    counts, version = await stored(db, "org_a")
    assert (counts["loads_open"], counts["loads_assigned"], version) == (1, 0, 1)
    assert counts == await recount(db, "org_a")
