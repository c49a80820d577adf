"""Organizations and customers."""

from __future__ import annotations

import strawberry

from db import organizations as orgs
from db import queries
from schema.context import Info
from schema.types import Customer, Organization


async def organizations(info: Info) -> list[Organization]:
    rows = await info.context.db.read(queries.organizations)
    return [Organization.of(row) for row in rows]


async def create_organization(info: Info, org_id: strawberry.ID, name: str) -> Organization:
    row = await info.context.db.write(lambda s: orgs.create_organization(s, org_id, name))
    return Organization.of(row)


async def create_customer(info: Info, org_id: strawberry.ID, name: str) -> Customer:
    row = await info.context.db.write(lambda s: orgs.create_customer(s, org_id, name))
    return Customer.of(row)
