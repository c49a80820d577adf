"""Load writes. Creating a load and changing its status are plans (db/row_writes.py); counters
follow from their counted inserts and updates, and from the ORM changes of the others (db/aggregates.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Customer, Invoice, Load
from db.queries import lock_one, lock_where
from db.row_writes import EnsureOrg, Find, Insert, Lock, Plan, Update
from db.rules import LOAD_TRANSITIONS, check_text, check_transition


def create_load(
    org_id: str,
    *,
    status: str,
    load_type: str,
    customer_id: str | None = None,
    load_number: str | None = None,
    hcr: str | None = None,
    trip_number: str | None = None,
) -> Plan:
    yield EnsureOrg(org_id)
    customer = None if customer_id is None else (yield Find(Customer, customer_id, org_id))
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
    return Insert(Load, row)


def set_load_status(load_id: str, status: str, scope: str | None) -> Plan:
    load = yield Lock(Load, load_id, scope)
    check_transition("Load", LOAD_TRANSITIONS, load.status, status, load_id)
    return Update(Load, load, {"status": status})


async def delete_load(session: AsyncSession, load_id: str, scope: str | None) -> Load:
    """Deletes the load and its invoice."""
    load = await lock_one(session, Load, load_id, scope)
    for invoice in await lock_where(session, select(Invoice).where(Invoice.load_id == load.id)):
        await session.delete(invoice)
    await session.flush()
    await session.delete(load)
    await session.flush()
    return load
