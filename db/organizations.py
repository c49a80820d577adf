"""Organizations and customers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import Unread
from db.errors import Conflict
from db.models import Customer, Organization, utcnow
from db.rules import check_text


def _build_ensure_statement(insert: Any) -> Any:
    values: dict[str, Any] = {column: bindparam(column) for column in ("org_id", "name", "created_at")}
    return insert(Organization).values(**values).on_conflict_do_nothing(index_elements=["org_id"])


# On every create's path, so built once (building one per write cost ~0.1 ms of CPU).
ENSURE_ORGANIZATION = {
    "postgresql": _build_ensure_statement(postgresql.insert),
    "sqlite": _build_ensure_statement(sqlite.insert),
}
_ENSURE = Unread(ENSURE_ORGANIZATION)  # nobody reads its result: on SQLite it goes with the next statement


def organization_values(org_id: str, name: str | None = None) -> dict[str, Any]:
    """`ENSURE_ORGANIZATION`'s parameters: the org is named after its id unless a name is given."""
    check_text(org_id, "orgId", required=True)
    return {"org_id": org_id, "name": name or org_id, "created_at": utcnow()}


async def ensure_organization(session: AsyncSession, org_id: str, name: str | None = None) -> None:
    """Create the org on its first write."""
    await _ENSURE.run_async(await session.connection(), organization_values(org_id, name))


async def create_organization(session: AsyncSession, org_id: str, name: str) -> Organization:
    """Idempotent: an existing org is returned as it is."""
    check_text(name, "name", required=True)
    await ensure_organization(session, org_id, name)
    return (await session.scalars(select(Organization).where(Organization.org_id == org_id))).one()


async def create_customer(session: AsyncSession, org_id: str, name: str) -> Customer:
    check_text(name, "name", required=True)
    await ensure_organization(session, org_id)
    existing = await session.scalar(select(Customer.id).where(Customer.org_id == org_id, Customer.name == name))
    if existing is not None:
        raise Conflict(f"Customer {name!r} already exists in {org_id}", ids=[existing])
    customer = Customer(org_id=org_id, name=name)
    session.add(customer)
    await session.flush()
    return customer


async def customers_by_name(session: AsyncSession, org_id: str, names: set[str]) -> dict[str, Customer]:
    """Find, or create, the org's customers with these names."""
    if not names:
        return {}
    found = {
        c.name: c
        for c in await session.scalars(select(Customer).where(Customer.org_id == org_id, Customer.name.in_(names)))
    }
    for name in sorted(names - found.keys()):
        found[name] = Customer(org_id=org_id, name=name)
        session.add(found[name])
    await session.flush()
    return found
