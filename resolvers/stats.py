"""The counts: one read of the org's stats row, and the live subscription to its changes."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from db.aggregates import StatsSnapshot
from db.errors import BadInput
from schema.context import Info
from schema.types import InvoiceStatusCounts, LoadStatusCounts, OrganizationStats


async def _stats(info: Info, org_id: str) -> StatsSnapshot:
    pinned = info.context.pinned_stats.get(org_id)
    return pinned if pinned is not None else await info.context.db.read_stats(org_id)


async def organization_stats(info: Info, org_id: strawberry.ID) -> OrganizationStats:
    return OrganizationStats.of(await _stats(info, org_id))


async def count_loads_by_status(info: Info, org_id: strawberry.ID) -> LoadStatusCounts:
    return LoadStatusCounts.of(await _stats(info, org_id))


async def count_invoices_by_status(info: Info, org_id: strawberry.ID) -> InvoiceStatusCounts:
    return InvoiceStatusCounts.of(await _stats(info, org_id))


async def organization_stats_changed(
    info: Info, org_id: strawberry.ID, since_version: int | None = None
) -> AsyncGenerator[OrganizationStats, None]:
    """Current stats at once (unless already at sinceVersion), then every newer version.

    The channel is joined before the snapshot is read, so no commit falls between.
    """
    context = info.context
    if context.active_subscriptions >= context.limits.subscriptions_per_connection:
        raise BadInput(f"At most {context.limits.subscriptions_per_connection} subscriptions per connection")
    context.active_subscriptions += 1
    try:
        async with context.hub.subscribe(org_id) as mailbox:
            mailbox.offer(await _stats(info, org_id))
            snapshot = await mailbox.newer_than(None)
            if snapshot.version == since_version:
                snapshot = await mailbox.newer_than(snapshot.version)
            while True:
                yield OrganizationStats.of(snapshot)
                snapshot = await mailbox.newer_than(snapshot.version)
    finally:
        context.active_subscriptions -= 1
