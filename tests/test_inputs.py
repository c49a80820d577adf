"""Input types convert their values from a plan made once (schema/inputs.py, Strawberry's
`from_input` hook): the result must be exactly what Strawberry's own conversion builds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import coerce_input_value
from strawberry.types.arguments import convert_argument

from api.root import build_schema
from schema.inputs import CreateLoadInput, ShipmentInput
from schema.limits import Limits

SHIPMENT = {
    "shipmentId": "s-1",
    "loadNumber": "L1",
    "hcr": None,
    "updatedAt": "2026-01-02T03:04:05+00:00",
    "stops": [
        {"sequence": 1, "stopType": "PICKUP", "city": "Austin", "appointmentTime": "2026-01-02T10:00:00Z"},
        {"sequence": 2, "stopType": "DELIVERY"},
    ],
}
CREATE_LOAD = {"orgId": "org_a", "status": "ASSIGNED", "loadType": "SPOT", "customerId": None}


@pytest.mark.parametrize(
    ("cls", "value"), [(ShipmentInput, SHIPMENT), (CreateLoadInput, CREATE_LOAD), (CreateLoadInput, {"orgId": "o"})]
)
def test_an_input_built_from_the_plan_equals_strawberrys_own(
    cls: type, value: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = build_schema(Limits())
    graphql_type = schema.schema_converter.from_input_object(cls)
    coerced = coerce_input_value(value, graphql_type)  # as graphql-core hands it to Strawberry
    convert = lambda: convert_argument(coerced, cls, schema.schema_converter.scalar_registry, schema.config)  # noqa: E731

    from_plan = convert()
    monkeypatch.setattr(cls.__strawberry_definition__, "from_input", None)  # type: ignore[attr-defined]
    assert from_plan == convert()
    if cls is ShipmentInput:
        assert from_plan.stops[0].appointment_time == datetime(2026, 1, 2, 10, tzinfo=UTC)
