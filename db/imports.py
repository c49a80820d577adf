"""FourKites shipment import: create, re-import, reject (domain.md, Import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.aggregates import insert_counted
from db.errors import BadInput
from db.models import Customer, Invoice, Lane, Load, ReturnedRow
from db.money import rate_cents
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
    load: Load | ReturnedRow | None = None  # a created load is the row its INSERT returned
    error: str | None = None


@dataclass
class NewLoad:
    """A load the batch creates, as it will be inserted (a later entry of the batch may re-import it)."""

    org_id: str
    status: str
    load_type: str
    requires_manual_review: bool
    lane_id: int | None
    customer_id: int | None
    external_source: str
    external_id: str
    external_updated_at: datetime | None
    load_number: str | None
    hcr: str | None
    trip_number: str | None
    invoice_reason: str | None  # MISSING_DATA's reason, or None for a DRAFT invoice
    invoice_amount: int | None  # cents: a CONTRACT load's lane rate

    def load_row(self) -> dict[str, Any]:
        row = dict(vars(self))  # not dataclasses.asdict: it deep-copies every value
        del row["invoice_reason"], row["invoice_amount"]
        return row

    def invoice_row(self, load_id: int) -> dict[str, Any]:
        status = "MISSING_DATA" if self.invoice_reason else "DRAFT"
        return {
            "org_id": self.org_id,
            "load_id": load_id,
            "status": status,
            "missing_data_reason": self.invoice_reason,
            "customer_id": self.customer_id,
            "amount_cents": self.invoice_amount,
        }


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
    creating: dict[str, NewLoad] = {}
    of_new_loads: list[tuple[int, str, str]] = []  # (entry, shipment, outcome) answered once inserted
    for index, shipment in valid:
        shipment_id = shipment.shipment_id
        if (load := known.get(shipment_id)) is not None:
            outcomes[index] = ImportOutcome(shipment_id, _reimport(load, shipment), load)
        elif (new := creating.get(shipment_id)) is not None:  # again, in the batch that creates it
            of_new_loads.append((index, shipment_id, _reimport(new, shipment)))
        else:
            creating[shipment_id] = _create(org_id, shipment, lanes, customers)
            of_new_loads.append((index, shipment_id, "CREATED"))
    await session.flush()
    # New loads and their invoices: two counted INSERTs for the batch, not an ORM object each.
    rows = await insert_counted(session, Load, [new.load_row() for new in creating.values()])
    inserted = {row.external_id: row for row in rows}  # the batch's ids are distinct (creating's keys)
    await insert_counted(session, Invoice, [new.invoice_row(inserted[key].id) for key, new in creating.items()])
    for index, shipment_id, outcome in of_new_loads:
        outcomes[index] = ImportOutcome(shipment_id, outcome, inserted[shipment_id])
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


def _create(org_id: str, shipment: Shipment, lanes: dict[LaneKey, Lane], customers: dict[str, Customer]) -> NewLoad:
    load_type, key = match_lane_type(shipment.hcr, shipment.trip_number, set(lanes))
    lane = lanes[key] if key else None
    customer = customers.get(shipment.shipper_name or "")
    customer_id = lane.customer_id if lane and lane.customer_id else None
    return NewLoad(
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
        invoice_reason={"SPOT": REASON_SPOT_RATE, "UNMAPPED": REASON_NO_LANE}.get(load_type),
        invoice_amount=rate_cents(lane.rate) if lane and load_type == "CONTRACT" else None,
    )


def _reimport(load: Load | NewLoad, shipment: Shipment) -> str:
    """Apply a newer shipment version: UPDATED if anything but updatedAt changed, else UNCHANGED."""
    seen = load.external_updated_at
    if shipment.updated_at is None or (seen is not None and _utc(shipment.updated_at) <= _utc(seen)):
        return "UNCHANGED"
    load.external_updated_at = _utc(shipment.updated_at)
    changed = False
    target = tracking_target(shipment.tracking_status)
    if target and target != load.status and can_move(LOAD_TRANSITIONS, load.status, target):
        load.status = target
        changed = True
    if shipment.load_number is not None and shipment.load_number != load.load_number:
        load.load_number = shipment.load_number
        changed = True
    return "UPDATED" if changed else "UNCHANGED"


def _utc(value: datetime) -> datetime:
    """In UTC (naive means UTC). Stored this way: SQLite keeps no offset, only the wall clock."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
