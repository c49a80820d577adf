"""importShipment / importShipments: the sync script's path (db/imports.py does the work)."""

from __future__ import annotations

import strawberry

from db import imports
from db.errors import BadInput
from schema.context import Info
from schema.inputs import ShipmentInput
from schema.types import ImportResult, Load


def _shipment(raw: ShipmentInput) -> imports.Shipment:
    return imports.Shipment(
        shipment_id=raw.shipment_id,
        load_number=raw.load_number,
        hcr=raw.hcr,
        trip_number=raw.trip_number,
        shipper_name=raw.shipper_name,
        tracking_status=raw.tracking_status,
        updated_at=raw.updated_at,
        stops=[
            imports.Stop(
                sequence=s.sequence,
                stop_type=s.stop_type,
                city=s.city,
                state=s.state,
                postal_code=s.postal_code,
                appointment_time=s.appointment_time,
            )
            for s in raw.stops or []
        ],
    )


async def import_shipments(info: Info, org_id: strawberry.ID, shipments: list[ShipmentInput]) -> list[ImportResult]:
    if len(shipments) > info.context.limits.batch_shipments:
        raise BadInput(f"At most {info.context.limits.batch_shipments} shipments per batch")
    batch = [_shipment(raw) for raw in shipments]
    outcomes = await info.context.db.write(lambda s: imports.import_shipments(s, org_id, batch))
    return [
        ImportResult(
            shipment_id=strawberry.ID(o.shipment_id),
            outcome=o.outcome,
            load=Load.of(o.load) if o.load else None,
            error=o.error,
        )
        for o in outcomes
    ]


async def import_shipment(info: Info, org_id: strawberry.ID, shipment: ShipmentInput) -> ImportResult:
    return (await import_shipments(info, org_id, [shipment]))[0]
