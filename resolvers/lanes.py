"""Lanes: creation with its backfill, and the promotion of SPOT loads."""

from __future__ import annotations

import strawberry

from db import lanes, queries
from schema.context import Info
from schema.inputs import CreateLaneInput
from schema.types import Lane, LaneBackfillResult, PromotionResult


async def lanes_of(info: Info, org_id: strawberry.ID) -> list[Lane]:
    rows = await info.context.db.read(lambda s: queries.lanes_of(s, org_id))
    return [Lane.of(row) for row in rows]


async def create_lane(info: Info, input: CreateLaneInput) -> LaneBackfillResult:
    lane, promotion = await info.context.db.write(
        lambda s: lanes.create_lane(
            s,
            input.org_id,
            hcr=input.hcr,
            trip_number=input.trip_number,
            customer_id=input.customer_id,
            rate=input.rate,
            rate_type=input.rate_type,
        )
    )
    return LaneBackfillResult(
        lane=Lane.of(lane),
        promoted_loads=promotion.promoted_loads,
        promoted_invoices=promotion.promoted_invoices,
    )


async def promote_spot_loads(info: Info, org_id: strawberry.ID) -> PromotionResult:
    promotion = await info.context.db.write(lambda s: lanes.promote_spot_loads(s, org_id))
    return PromotionResult(promoted_loads=promotion.promoted_loads)
