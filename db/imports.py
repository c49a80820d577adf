"""FourKites shipment import: create, re-import, reject (domain.md, Import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.errors import BadInput
from db.models import Customer, Invoice, Lane, Load
from db.organizations import customers_by_name, ensure_organization
from db.queries import lock_where
from db.rules import (
    LOAD_TRANSITIONS,
    REASON_NO_LANE,
    REASON_SPOT_RATE,
    LaneKey,
    can_move,
    check_text,
    match_lane_type,
    tracking_target,
)

SOURCE = "fourkites"
MAX_STOPS = 50


@dataclass(frozen=True)
class Stop:
    sequence: int
    stop_type: str
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    appointment_time: datetime | None = None


@dataclass(frozen=True)
class Shipment:
    shipment_id: str
    load_number: str | None = None
    hcr: str | None = None
    trip_number: str | None = None
    shipper_name: str | None = None
    tracking_status: str | None = None
    updated_at: datetime | None = None
    stops: list[Stop] = field(default_factory=list)


@dataclass
class ImportOutcome:
    shipment_id: str
    outcome: str  # CREATED, UPDATED, UNCHANGED or REJECTED
    load: Load | None = None
    error: str | None = None


def validate(shipment: Shipment) -> None:
    check_text(shipment.shipment_id, "shipmentId", required=True)
    for name in ("load_number", "hcr", "trip_number", "shipper_name", "tracking_status"):
        check_text(getattr(shipment, name), name)
    if shipment.updated_at is not None:
        try:
            _utc(shipment.updated_at)
        except OverflowError as error:  # e.g. 0001-01-01T00:00:00+14:00 has no UTC time
            raise BadInput("updatedAt is out of range") from error
    if len(shipment.stops) > MAX_STOPS:
        raise BadInput(f"A shipment has at most {MAX_STOPS} stops")
    sequences = [stop.sequence for stop in shipment.stops]
    if len(set(sequences)) != len(sequences):
        raise BadInput("Two stops share one sequence number")
    for stop in shipment.stops:
        for name in ("stop_type", "city", "state", "postal_code"):
            check_text(getattr(stop, name), f"stops.{name}")


async def import_shipments(session: AsyncSession, org_id: str, shipments: list[Shipment]) -> list[ImportOutcome]:
    """One transaction for the batch; rejected shipments do not stop the rest."""
    await ensure_organization(session, org_id)
    # One slot per request entry: results follow the request even when an id repeats.
    outcomes: list[ImportOutcome | None] = [None] * len(shipments)
    valid: list[tuple[int, Shipment]] = []
    for index, shipment in enumerate(shipments):
        try:
            validate(shipment)
            valid.append((index, shipment))
        except BadInput as error:
            outcomes[index] = ImportOutcome(shipment.shipment_id, "REJECTED", error=error.message)
    known = await _known_loads(session, org_id, {s.shipment_id for _, s in valid})
    lanes = await _lanes(session, org_id, {s.hcr for _, s in valid if s.hcr})
    customers = await customers_by_name(session, org_id, _shipper_names(valid, known, lanes))
    for index, shipment in valid:
        load = known.get(shipment.shipment_id)
        if load is None:
            load = _create(org_id, shipment, lanes, customers)
            session.add(load)
            known[shipment.shipment_id] = load
            outcomes[index] = ImportOutcome(shipment.shipment_id, "CREATED", load)
        else:
            outcome = "UPDATED" if _reimport(load, shipment) else "UNCHANGED"
            outcomes[index] = ImportOutcome(shipment.shipment_id, outcome, load)
    await session.flush()
    return [outcome for outcome in outcomes if outcome is not None]


def _shipper_names(valid: list[tuple[int, Shipment]], known: dict[str, Load], lanes: dict[LaneKey, Lane]) -> set[str]:
    """Shippers of the shipments that create a load whose lane gives it no customer."""
    names: set[str] = set()
    creating: set[str] = set()
    for _, shipment in valid:
        if shipment.shipment_id in known or shipment.shipment_id in creating:
            continue  # re-imports never re-match, so never need a customer
        creating.add(shipment.shipment_id)
        if not (shipment.shipper_name and shipment.shipper_name.strip()):
            continue
        _, key = match_lane_type(shipment.hcr, shipment.trip_number, set(lanes))
        if key is None or lanes[key].customer_id is None:
            names.add(shipment.shipper_name)
    return names


async def _known_loads(session: AsyncSession, org_id: str, ids: set[str]) -> dict[str, Load]:
    if not ids:
        return {}
    loads = await lock_where(
        session,
        select(Load)
        .where(Load.org_id == org_id, Load.external_source == SOURCE, Load.external_id.in_(ids))
        .order_by(Load.id),
    )
    return {load.external_id: load for load in loads}


async def _lanes(session: AsyncSession, org_id: str, hcrs: set[str]) -> dict[LaneKey, Lane]:
    if not hcrs:
        return {}
    lanes = await session.scalars(select(Lane).where(Lane.org_id == org_id, Lane.hcr.in_(hcrs)))
    return {LaneKey(lane.hcr, lane.trip_number): lane for lane in lanes}


def _create(org_id: str, shipment: Shipment, lanes: dict[LaneKey, Lane], customers: dict[str, Customer]) -> Load:
    load_type, key = match_lane_type(shipment.hcr, shipment.trip_number, set(lanes))
    lane = lanes[key] if key else None
    customer = customers.get(shipment.shipper_name or "")
    customer_id = lane.customer_id if lane and lane.customer_id else None
    load = Load(
        org_id=org_id,
        status="ASSIGNED",
        load_type=load_type,
        requires_manual_review=load_type == "SPOT",
        lane_id=lane.id if lane else None,
        customer_id=customer_id or (customer.id if customer else None),
        external_source=SOURCE,
        external_id=shipment.shipment_id,
        external_updated_at=_utc(shipment.updated_at) if shipment.updated_at else None,
        load_number=shipment.load_number,
        hcr=shipment.hcr,
        trip_number=shipment.trip_number,
    )
    reason = {"SPOT": REASON_SPOT_RATE, "UNMAPPED": REASON_NO_LANE}.get(load_type)
    load.invoice = Invoice(
        org_id=org_id,
        status="MISSING_DATA" if reason else "DRAFT",
        missing_data_reason=reason,
    )
    return load


def _reimport(load: Load, shipment: Shipment) -> bool:
    """Apply a newer shipment version; returns whether anything but updatedAt changed."""
    seen = load.external_updated_at
    if shipment.updated_at is None or (seen is not None and _utc(shipment.updated_at) <= _utc(seen)):
        return False
    load.external_updated_at = _utc(shipment.updated_at)
    changed = False
    target = tracking_target(shipment.tracking_status)
    if target and target != load.status and can_move(LOAD_TRANSITIONS, load.status, target):
        load.status = target
        changed = True
    if shipment.load_number is not None and shipment.load_number != load.load_number:
        load.load_number = shipment.load_number
        changed = True
    return changed


def _utc(value: datetime) -> datetime:
    """In UTC (naive means UTC). Stored this way: SQLite keeps no offset, only the wall clock."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
