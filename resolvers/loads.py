"""Load reads and writes."""

from __future__ import annotations

import strawberry

from db import loads, models, queries
from schema.context import Info
from schema.enums import LoadStatus, LoadType
from schema.inputs import CreateLoadInput
from schema.types import DeleteResult, Load, LoadConnection, OrganizationStats, PageInfo


async def load(info: Info, id: strawberry.ID) -> Load | None:
    scope = info.context.principal.scope
    row = await info.context.db.read(lambda s: queries.find(s, models.Load, id, scope))
    return Load.of(row) if row else None


async def loads_page(
    info: Info,
    org_id: strawberry.ID,
    status: LoadStatus | None = None,
    load_type: LoadType | None = None,
    first: int | None = 50,
    after: str | None = None,
) -> LoadConnection:
    filters = {
        "status": status.value if status else None,
        "load_type": load_type.value if load_type else None,
    }
    rows, has_next = await info.context.db.read(
        lambda s: queries.page(s, models.Load, org_id, filters, 50 if first is None else first, after)
    )
    end = queries.encode_cursor(rows[-1].id) if rows else None
    return LoadConnection(nodes=[Load.of(r) for r in rows], page_info=PageInfo(has_next_page=has_next, end_cursor=end))


async def create_load(info: Info, input: CreateLoadInput) -> Load:
    row = await info.context.db.write_row(
        lambda: loads.create_load(
            input.org_id,
            status=(input.status or LoadStatus.OPEN).value,
            load_type=(input.load_type or LoadType.UNMAPPED).value,
            customer_id=input.customer_id,
            load_number=input.load_number,
            hcr=input.hcr,
            trip_number=input.trip_number,
        )
    )
    return Load.of(row)


async def update_load_status(info: Info, id: strawberry.ID, status: LoadStatus) -> Load:
    scope = info.context.principal.scope
    row = await info.context.db.write_row(lambda: loads.set_load_status(id, status.value, scope))
    return Load.of(row)


async def delete_load(info: Info, id: strawberry.ID) -> DeleteResult:
    scope = info.context.principal.scope
    row, stats = await info.context.db.write_with_stats(
        lambda s: loads.delete_load(s, id, scope), lambda row: row.org_id
    )
    return DeleteResult(id=strawberry.ID(str(row.id)), stats=OrganizationStats.of(stats))
