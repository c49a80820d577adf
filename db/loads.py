"""Load writes. Counters follow from the ORM changes and the counted inserts and updates (db/aggregates.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.aggregates import insert_counted, update_counted
from db.models import Invoice, Load, ReturnedRow
from db.organizations import ensure_organization
from db.queries import customer_in_org, lock_one, lock_row, lock_where
from db.rules import LOAD_TRANSITIONS, check_text, check_transition


async def create_load(
    session: AsyncSession,
    org_id: str,
    *,
    status: str,
    load_type: str,
    customer_id: str | None = None,
    load_number: str | None = None,
    hcr: str | None = None,
    trip_number: str | None = None,
) -> ReturnedRow:
    await ensure_organization(session, org_id)
    customer = await customer_in_org(session, customer_id, org_id)
    row = {
        "org_id": org_id,
        "status": status,
        "load_type": load_type,
        "requires_manual_review": False,
        "customer_id": customer.id if customer else None,
        "load_number": check_text(load_number, "loadNumber"),
        "hcr": check_text(hcr, "hcr"),
        "trip_number": check_text(trip_number, "tripNumber"),
    }
    (load,) = await insert_counted(session, Load, [row])  # one INSERT ... RETURNING, no ORM object
    return load


async def set_load_status(session: AsyncSession, load_id: str, status: str, scope: str | None) -> ReturnedRow:
    load = await lock_row(session, Load, load_id, scope)
    check_transition("Load", LOAD_TRANSITIONS, load.status, status, load_id)
    return await update_counted(session, Load, load, {"status": status})


async def delete_load(session: AsyncSession, load_id: str, scope: str | None) -> Load:
    """Deletes the load and its invoice."""
    load = await lock_one(session, Load, load_id, scope)
    for invoice in await lock_where(session, select(Invoice).where(Invoice.load_id == load.id)):
        await session.delete(invoice)
    await session.flush()
    await session.delete(load)
    await session.flush()
    return load
