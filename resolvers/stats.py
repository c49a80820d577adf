from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

import strawberry

from db.aggregates import StatsSnapshot
from db.errors import BadInput
from schema.context import Info
from schema.shared_events import SharedEvents
from schema.types import InvoiceStatusCounts, LoadStatusCounts, OrganizationStats


async def _stats(info: Info, org_id: str) -> StatsSnapshot:
    pinned = info.context.pinned_stats.get(org_id)
    return pinned if pinned is not None else await info.context.db.read_stats(org_id)


_events = SharedEvents()


def _shared(snapshot: StatsSnapshot) -> OrganizationStats:
    """The event every subscriber woken by this snapshot shares (schema/shared_events.py)."""
    return cast(OrganizationStats, _events.of(snapshot, lambda: OrganizationStats.of(snapshot)))


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
            current = await mailbox.newer_than(None)
            last = current.version
            if current.version != since_version:
                yield _shared(current)
            while True:
                snapshot = await mailbox.newer_than(last)
                last = snapshot.version
                yield _shared(snapshot)
    finally:
        context.active_subscriptions -= 1
