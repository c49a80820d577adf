"""Lanes, and the re-matching of loads to lanes (backfill and promotion)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.errors import Conflict
from db.models import Invoice, Lane, Load
from db.money import rate_cents
from db.organizations import ensure_organization
from db.queries import customer_in_org, lock_where
from db.rules import LaneKey, check_text, is_upgrade, match_lane_type

RATE_TYPE_LENGTH = 50  # models.Lane.rate_type is String(50): PostgreSQL refuses longer text


@dataclass(frozen=True)
class Promotion:
    promoted_loads: int
    promoted_invoices: int


async def create_lane(
    session: AsyncSession,
    org_id: str,
    *,
    hcr: str,
    trip_number: str,
    customer_id: str | None = None,
    rate: float | None = None,
    rate_type: str | None = None,
) -> tuple[Lane, Promotion]:
    check_text(hcr, "hcr", required=True)
    check_text(trip_number, "tripNumber", required=True)
    check_text(rate_type, "rateType", max_len=RATE_TYPE_LENGTH)
    await ensure_organization(session, org_id)
    customer = await customer_in_org(session, customer_id, org_id)
    existing = await session.scalar(
        select(Lane.id).where(Lane.org_id == org_id, Lane.hcr == hcr, Lane.trip_number == trip_number)
    )
    if existing is not None:
        raise Conflict(f"Lane {hcr}/{trip_number} already exists in {org_id}", ids=[existing])
    lane = Lane(
        org_id=org_id,
        hcr=hcr,
        trip_number=trip_number,
        customer_id=customer.id if customer else None,
        rate=rate,
        rate_type=rate_type,
    )
    session.add(lane)
    await session.flush()
    promotion = await rematch_loads(session, org_id, Load.hcr == hcr, Load.load_type.in_(("UNMAPPED", "SPOT")))
    return lane, promotion


async def promote_spot_loads(session: AsyncSession, org_id: str) -> Promotion:
    return await rematch_loads(session, org_id, Load.load_type == "SPOT")


async def rematch_loads(session: AsyncSession, org_id: str, *where: object) -> Promotion:
    """Match the selected loads against the org's lanes; load types only move up."""
    loads: Sequence[Load] = await lock_where(
        session,
        select(Load).where(Load.org_id == org_id, *where).order_by(Load.id),  # type: ignore[arg-type]
    )
    if not loads:
        return Promotion(0, 0)
    lanes = {
        LaneKey(lane.hcr, lane.trip_number): lane
        for lane in await session.scalars(
            select(Lane).where(Lane.org_id == org_id, Lane.hcr.in_({ld.hcr for ld in loads}))
        )
    }
    promoted: list[tuple[Load, str, Lane]] = []
    for load in loads:
        load_type, key = match_lane_type(load.hcr, load.trip_number, set(lanes))
        if key is not None and is_upgrade(load.load_type, load_type):
            promoted.append((load, load_type, lanes[key]))
    invoices = await _missing_data_invoices(
        session, [load.id for load, load_type, _ in promoted if load_type == "CONTRACT"]
    )
    for load, load_type, lane in promoted:
        load.load_type = load_type
        load.lane_id = lane.id
        load.requires_manual_review = load_type == "SPOT"
    lane_of = {load.id: lane for load, _, lane in promoted}
    for invoice in invoices:
        invoice.status = "DRAFT"
        invoice.missing_data_reason = None
        if invoice.amount_cents is None:  # priced by its lane's rate, if it has one (money.md)
            invoice.amount_cents = rate_cents(lane_of[invoice.load_id].rate)
    await session.flush()
    return Promotion(len(promoted), len(invoices))


async def _missing_data_invoices(session: AsyncSession, load_ids: list[int]) -> list[Invoice]:
    if not load_ids:
        return []
    return await lock_where(
        session,
        select(Invoice).where(Invoice.load_id.in_(load_ids), Invoice.status == "MISSING_DATA").order_by(Invoice.id),
    )
