"""GraphQL input types of the mutations."""

from __future__ import annotations

from datetime import datetime

import strawberry

from schema.enums import InvoiceStatus, LoadStatus, LoadType


@strawberry.input
class CreateLoadInput:
    org_id: strawberry.ID
    customer_id: strawberry.ID | None = None
    status: LoadStatus | None = LoadStatus.OPEN
    load_type: LoadType | None = LoadType.UNMAPPED
    load_number: str | None = None
    hcr: str | None = None
    trip_number: str | None = None


@strawberry.input
class CreateInvoiceInput:
    load_id: strawberry.ID
    status: InvoiceStatus | None = InvoiceStatus.DRAFT
    missing_data_reason: str | None = None


@strawberry.input
class CreateLaneInput:
    org_id: strawberry.ID
    customer_id: strawberry.ID | None = None
    hcr: str
    trip_number: str
    rate: float | None = None
    rate_type: str | None = None


@strawberry.input(description="A FourKites shipment, reduced to what import needs.")
class StopInput:
    sequence: int
    stop_type: str
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    appointment_time: datetime | None = None


@strawberry.input
class ShipmentInput:
    shipment_id: strawberry.ID
    load_number: str | None = None
    hcr: str | None = None
    trip_number: str | None = None
    shipper_name: str | None = None
    tracking_status: str | None = None
    updated_at: datetime | None = None
    stops: list[StopInput] | None = None
