"""GraphQL input types of the mutations."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types.arguments import InputContext
from strawberry.types.base import StrawberryOptional
from strawberry.types.enum import StrawberryEnumDefinition

from schema.enums import InvoiceStatus, LoadStatus, LoadType
from schema.scalars import Money


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
    amount: Money | None = None


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


LEAVES = (str, int, float, bool, datetime)


def _is_leaf(type_: object) -> bool:
    """A scalar or enum (or an optional one), which graphql-core has already coerced to its Python value."""
    type_ = type_.of_type if isinstance(type_, StrawberryOptional) else type_
    if isinstance(type_, StrawberryEnumDefinition):
        return True  # graphql-core hands over the enum's member
    return type_ is strawberry.ID or (isinstance(type_, type) and issubclass(type_, LEAVES))


def _built_from_plan(cls: type) -> None:
    """Give `cls` a `from_input` (Strawberry's documented hook) that converts its input value from
    a plan made once: Strawberry's own conversion renames and resolves the type of every field of
    every value, a quarter of the CPU of an importShipments of 1,000 shipments. Scalars and enums
    are taken as graphql-core coerced them; lists and nested inputs go through `context.convert`."""
    definition = cls.__strawberry_definition__  # type: ignore[attr-defined]
    plan: list[tuple[str, str, Any, bool]] = []

    def from_input(built: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if not plan:  # the field types resolve once the whole schema is defined
            for field in definition.fields:
                type_ = field.resolve_type(type_definition=definition)
                plan.append(
                    (context.config.name_converter.from_field(field), field.python_name, type_, _is_leaf(type_))
                )
        kwargs = {}
        for name, python_name, type_, leaf in plan:
            if name in value:
                kwargs[python_name] = value[name] if leaf else context.convert(value[name], type_, name)
        return built(**kwargs)

    definition.from_input = from_input


for _input in (CreateLoadInput, CreateInvoiceInput, CreateLaneInput, StopInput, ShipmentInput):
    _built_from_plan(_input)
