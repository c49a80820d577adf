from __future__ import annotations

import strawberry

from db.queries import get_stats
from schema.context import Info
from schema.types import InvoiceStatusCounts, LoadStatusCounts, OrganizationStats


async def _stats(info: Info, org_id: str):  # type: ignore[no-untyped-def]
    return await info.context.db.read(lambda session: get_stats(session, org_id))


async def organization_stats(info: Info, org_id: strawberry.ID) -> OrganizationStats:
    return OrganizationStats.of(await _stats(info, org_id))


async def count_loads_by_status(info: Info, org_id: strawberry.ID) -> LoadStatusCounts:
    return LoadStatusCounts.of(await _stats(info, org_id))


async def count_invoices_by_status(info: Info, org_id: strawberry.ID) -> InvoiceStatusCounts:
    return InvoiceStatusCounts.of(await _stats(info, org_id))
