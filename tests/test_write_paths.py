"""Every write path moves exactly its counters, bumps version by exactly 1 (0 for a no-op),
and leaves the stored row equal to a recount from source rows (domain.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from db.unit_of_work import Database
from tests.helpers import (
    INVOICE_FIELDS,
    INVOICE_MOVES,
    LOAD_FIELDS,
    LOAD_MOVES,
    STATS_FIELDS,
    Api,
    counter_diff,
    counters_of,
    create_invoice,
    create_lane,
    create_load,
    dump_tables,
    import_shipment,
    import_shipments,
    recount,
    stored,
    token,
)

LOAD_COUNTER = {s: f"loads_{s.lower()}" for s in LOAD_MOVES}
TYPE_COUNTER = {t: f"type_{t.lower()}" for t in ("CONTRACT", "SPOT", "UNMAPPED")}
INVOICE_COUNTER = {s: f"invoices_{s.lower()}" for s in INVOICE_MOVES}

T0 = "2024-05-01T10:00:00+00:00"
T_OLDER = "2024-05-01T09:00:00+00:00"
T1 = "2024-05-01T11:00:00+00:00"
T2 = "2024-05-01T12:00:00+00:00"

UPDATE_LOAD = f"mutation($id: ID!, $s: LoadStatus!) {{ updateLoadStatus(id: $id, status: $s) {{ {LOAD_FIELDS} }} }}"
UPDATE_INVOICE = (
    f"mutation($id: ID!, $s: InvoiceStatus!) {{ updateInvoiceStatus(id: $id, status: $s) {{ {INVOICE_FIELDS} }} }}"
)
DELETE_LOAD = f"mutation($id: ID!) {{ deleteLoad(id: $id) {{ id stats {{ {STATS_FIELDS} }} }} }}"
DELETE_INVOICE = f"mutation($id: ID!) {{ deleteInvoice(id: $id) {{ id stats {{ {STATS_FIELDS} }} }} }}"
BULK_UPDATE = (
    "mutation($ids: [ID!]!, $s: InvoiceStatus!) { bulkUpdateInvoiceStatus(ids: $ids, status: $s) "
    f"{{ updated unchanged stats {{ {STATS_FIELDS} }} }} }}"
)
BULK_VOID = (
    "mutation($ids: [ID!]!, $r: String) { bulkVoidInvoices(ids: $ids, reason: $r) "
    f"{{ updated unchanged stats {{ {STATS_FIELDS} }} }} }}"
)
PROMOTE = "mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }"
GET_LOAD = f"query($id: ID!) {{ load(id: $id) {{ {LOAD_FIELDS} }} }}"
GET_INVOICE = f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE_FIELDS} }} }}"


@asynccontextmanager
async def moves(db: Database, delta: dict[str, int], *, version: int = 1, org: str = "org_a") -> AsyncIterator[None]:
    """The block moves exactly `delta` (nothing else) and bumps version by `version`."""
    before, v0 = await stored(db, org)
    yield
    after, v1 = await stored(db, org)
    assert counter_diff(before, after) == delta
    assert v1 - v0 == version
    assert after == await recount(db, org)


@asynccontextmanager
async def untouched(db: Database, org: str) -> AsyncIterator[None]:
    async with moves(db, {}, version=0, org=org):
        yield


async def stored_matches(db: Database, stats: dict[str, Any]) -> None:
    """A mutation's returned stats are the stored row as of its commit."""
    counts, version = await stored(db, stats["orgId"])
    assert counters_of(stats) == counts
    assert stats["version"] == version


def shipment(sid: str, **fields: Any) -> dict[str, Any]:
    return {"shipmentId": sid, "updatedAt": T0, "trackingStatus": "IN_TRANSIT", **fields}


def legal_pairs(table: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a, targets in table.items() for b in sorted(targets)]


# --- Loads -------------------------------------------------------------------------------


async def test_create_load_defaults(api: Api, db: Database) -> None:
    async with moves(db, {"loads_open": 1, "type_unmapped": 1}):
        load = await create_load(api)
    assert (load["status"], load["loadType"], load["requiresManualReview"]) == ("OPEN", "UNMAPPED", False)
    assert load["invoice"] is None


@pytest.mark.parametrize(
    ("status", "load_type"), [("ASSIGNED", "SPOT"), ("COMPLETED", "CONTRACT"), ("CANCELED", "UNMAPPED")]
)
async def test_create_load_takes_status_and_type_as_given(api: Api, db: Database, status: str, load_type: str) -> None:
    await create_lane(api, "H1", "T1")  # createLoad never matches lanes itself
    async with moves(db, {LOAD_COUNTER[status]: 1, TYPE_COUNTER[load_type]: 1}):
        load = await create_load(api, status=status, loadType=load_type, hcr="H1", tripNumber="T1")
    assert (load["status"], load["loadType"], load["lane"]) == (status, load_type, None)


@pytest.mark.parametrize(("start", "target"), legal_pairs(LOAD_MOVES))
async def test_update_load_status_legal(api: Api, db: Database, start: str, target: str) -> None:
    load = await create_load(api, status=start, loadType="SPOT")
    await create_invoice(api, load["id"], "BILLED")
    async with moves(db, {LOAD_COUNTER[start]: -1, LOAD_COUNTER[target]: 1}):
        data = await api.ok(UPDATE_LOAD, id=load["id"], s=target)
    assert data["updateLoadStatus"]["status"] == target
    assert data["updateLoadStatus"]["loadType"] == "SPOT"


@pytest.mark.parametrize("status", list(LOAD_MOVES))
async def test_update_load_status_to_same_is_a_no_op(api: Api, db: Database, status: str) -> None:
    load = await create_load(api, status=status)
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        data = await api.ok(UPDATE_LOAD, id=load["id"], s=status)
    assert data["updateLoadStatus"]["status"] == status
    assert await dump_tables(db) == before


async def test_delete_load_takes_its_invoice_counters_down(api: Api, db: Database) -> None:
    load = await create_load(api, status="ASSIGNED", loadType="CONTRACT")
    invoice = await create_invoice(api, load["id"], "PENDING_PAYMENT")
    other = await create_load(api)  # untouched bystander
    async with moves(db, {"loads_assigned": -1, "type_contract": -1, "invoices_pending_payment": -1}):
        data = await api.ok(DELETE_LOAD, id=load["id"])
    assert data["deleteLoad"]["id"] == load["id"]
    await stored_matches(db, data["deleteLoad"]["stats"])
    assert (await api.ok(GET_LOAD, id=load["id"]))["load"] is None
    assert (await api.ok(GET_INVOICE, id=invoice["id"]))["invoice"] is None
    assert (await api.ok(GET_LOAD, id=other["id"]))["load"]["status"] == "OPEN"


async def test_delete_load_without_invoice(api: Api, db: Database) -> None:
    load = await create_load(api, status="CANCELED", loadType="SPOT")
    async with moves(db, {"loads_canceled": -1, "type_spot": -1}):
        data = await api.ok(DELETE_LOAD, id=load["id"])
    await stored_matches(db, data["deleteLoad"]["stats"])


# --- Import: first import -----------------------------------------------------------------


async def test_import_contract_on_exact_lane(api: Api, db: Database) -> None:
    customer = (await api.ok('mutation { createCustomer(orgId: "org_a", name: "Lane Co") { id } }'))["createCustomer"]
    await create_lane(api, "H1", "*")
    lane = (await create_lane(api, "H1", "T1", customer_id=customer["id"]))["lane"]
    delta = {"loads_assigned": 1, "type_contract": 1, "invoices_draft": 1}
    async with moves(db, delta):
        result = await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1", loadNumber="L1"))
    assert (result["shipmentId"], result["outcome"], result["error"]) == ("S1", "CREATED", None)
    load = result["load"]
    assert (load["status"], load["loadType"], load["requiresManualReview"]) == ("ASSIGNED", "CONTRACT", False)
    assert load["externalId"] == "S1" and load["loadNumber"] == "L1"
    assert load["lane"]["id"] == lane["id"]  # the most specific lane wins over H1/*
    assert load["customer"] == {"id": customer["id"], "name": "Lane Co"}
    assert load["invoice"]["status"] == "DRAFT"
    assert load["invoice"]["missingDataReason"] is None


async def test_import_contract_lane_without_customer_uses_shipper(api: Api, db: Database) -> None:
    await create_lane(api, "H1", "T1")
    async with moves(db, {"loads_assigned": 1, "type_contract": 1, "invoices_draft": 1}):
        result = await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1", shipperName="Acme"))
    assert result["load"]["customer"]["name"] == "Acme"
    # A second shipment of that shipper finds the same customer.
    again = await import_shipment(api, shipment("S2", shipperName="Acme"))
    assert again["load"]["customer"] == result["load"]["customer"]


async def test_import_contract_lane_customer_creates_no_shipper_customer(api: Api, db: Database) -> None:
    """domain.md: the customer comes from shipperName only 'where no lane gives one'."""
    customer = (await api.ok('mutation { createCustomer(orgId: "org_a", name: "Lane Co") { id } }'))["createCustomer"]
    await create_lane(api, "H1", "T1", customer_id=customer["id"])
    before = len((await dump_tables(db))["customers"])
    result = await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1", shipperName="Shipper"))
    assert result["load"]["customer"]["name"] == "Lane Co"
    assert len((await dump_tables(db))["customers"]) == before


@pytest.mark.parametrize("trip", ["T9", None])
async def test_import_spot_on_wildcard_lane(api: Api, db: Database, trip: str | None) -> None:
    wildcard = (await create_lane(api, "H1", "*"))["lane"]
    await create_lane(api, "H1", "T1")
    delta = {"loads_assigned": 1, "type_spot": 1, "invoices_missing_data": 1}
    async with moves(db, delta):
        result = await import_shipment(api, shipment("S1", hcr="H1", tripNumber=trip))
    load = result["load"]
    assert result["outcome"] == "CREATED"
    assert (load["status"], load["loadType"], load["requiresManualReview"]) == ("ASSIGNED", "SPOT", True)
    assert load["lane"]["id"] == wildcard["id"] and load["lane"]["isWildcard"] is True
    assert load["invoice"]["status"] == "MISSING_DATA"
    assert load["invoice"]["missingDataReason"]


@pytest.mark.parametrize(("hcr", "trip"), [("H2", "T1"), (None, "T1"), (None, None)])
async def test_import_unmapped(api: Api, db: Database, hcr: str | None, trip: str | None) -> None:
    await create_lane(api, "H1", "T1")
    await create_lane(api, "H1", "*")
    delta = {"loads_assigned": 1, "type_unmapped": 1, "invoices_missing_data": 1}
    async with moves(db, delta):
        result = await import_shipment(api, shipment("S1", hcr=hcr, tripNumber=trip, shipperName="Acme"))
    load = result["load"]
    assert (load["status"], load["loadType"], load["requiresManualReview"]) == ("ASSIGNED", "UNMAPPED", False)
    assert load["lane"] is None
    assert load["customer"]["name"] == "Acme"
    assert load["invoice"]["status"] == "MISSING_DATA"
    assert load["invoice"]["missingDataReason"]


async def test_import_never_matches_another_orgs_lane(api: Api, db: Database) -> None:
    service = api.as_(token(None, "service"))
    await create_lane(service, "H1", "T1", org="org_b")
    async with untouched(db, "org_b"):
        result = await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1"))
    assert result["load"]["loadType"] == "UNMAPPED"


async def test_same_shipment_id_in_two_orgs_makes_two_loads(api: Api, db: Database) -> None:
    service = api.as_(token(None, "service"))
    first = await import_shipment(api, shipment("S1"))
    delta = {"loads_assigned": 1, "type_unmapped": 1, "invoices_missing_data": 1}
    async with untouched(db, "org_a"), moves(db, delta, org="org_b"):
        second = await import_shipment(service, shipment("S1", updatedAt=T1, trackingStatus="CANCELED"), "org_b")
    assert second["outcome"] == "CREATED"
    assert second["load"]["orgId"] == "org_b" and second["load"]["id"] != first["load"]["id"]
    assert (await api.ok(GET_LOAD, id=first["load"]["id"]))["load"]["status"] == "ASSIGNED"


# --- Import: re-import ------------------------------------------------------------------------


@pytest.mark.parametrize("updated_at", [T0, T_OLDER, None])
async def test_reimport_not_newer_is_unchanged(api: Api, db: Database, updated_at: str | None) -> None:
    first = await import_shipment(api, shipment("S1", loadNumber="L1"))
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        result = await import_shipment(
            api, shipment("S1", updatedAt=updated_at, trackingStatus="CANCELED", loadNumber="L2")
        )
    assert result["outcome"] == "UNCHANGED"
    assert result["load"]["id"] == first["load"]["id"]
    assert result["load"]["status"] == "ASSIGNED" and result["load"]["loadNumber"] == "L1"
    assert await dump_tables(db) == before


async def test_reimport_creates_no_customer(api: Api, db: Database) -> None:
    """Re-import never re-matches: a new shipperName on a known shipment writes nothing."""
    await import_shipment(api, shipment("S1", shipperName="Acme"))
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        result = await import_shipment(api, shipment("S1", shipperName="Someone Else"))
    assert result["outcome"] == "UNCHANGED"
    assert result["load"]["customer"]["name"] == "Acme"
    assert await dump_tables(db) == before


@pytest.mark.parametrize(
    ("tracking", "target"),
    [
        ("CANCELED", "CANCELED"),
        ("CANCELLED", "CANCELED"),
        ("WITHDRAWN", "CANCELED"),
        ("DELIVERED", "COMPLETED"),
        ("COMPLETED", "COMPLETED"),
    ],
)
async def test_reimport_newer_moves_status(api: Api, db: Database, tracking: str, target: str) -> None:
    first = await import_shipment(api, shipment("S1"))
    async with moves(db, {"loads_assigned": -1, LOAD_COUNTER[target]: 1}):
        result = await import_shipment(api, shipment("S1", updatedAt=T1, trackingStatus=tracking))
    assert result["outcome"] == "UPDATED"
    assert result["load"]["id"] == first["load"]["id"]
    assert result["load"]["status"] == target
    assert result["load"]["invoice"]["status"] == "MISSING_DATA"  # invoices are not touched


async def test_reimport_newer_with_neutral_status_only_records_time(api: Api, db: Database) -> None:
    await import_shipment(api, shipment("S1"))
    async with untouched(db, "org_a"):
        result = await import_shipment(api, shipment("S1", updatedAt=T1, trackingStatus="IN_TRANSIT"))
    assert result["outcome"] == "UNCHANGED"
    # The newer updatedAt was recorded: a cancel at T1 is now "not newer".
    async with untouched(db, "org_a"):
        again = await import_shipment(api, shipment("S1", updatedAt=T1, trackingStatus="CANCELED"))
    assert again["outcome"] == "UNCHANGED" and again["load"]["status"] == "ASSIGNED"


async def test_reimport_newer_illegal_transition_keeps_status(api: Api, db: Database) -> None:
    await import_shipment(api, shipment("S1"))
    await import_shipment(api, shipment("S1", updatedAt=T1, trackingStatus="CANCELED"))
    async with untouched(db, "org_a"):
        result = await import_shipment(api, shipment("S1", updatedAt=T2, trackingStatus="DELIVERED"))
    assert (result["outcome"], result["load"]["status"]) == ("UNCHANGED", "CANCELED")


async def test_reimport_illegal_transition_with_other_change_is_updated(api: Api, db: Database) -> None:
    await import_shipment(api, shipment("S1", loadNumber="L1"))
    await import_shipment(api, shipment("S1", updatedAt=T1, trackingStatus="DELIVERED"))
    async with untouched(db, "org_a"):
        result = await import_shipment(api, shipment("S1", updatedAt=T2, trackingStatus="CANCELED", loadNumber="L2"))
    assert result["outcome"] == "UPDATED"
    assert (result["load"]["status"], result["load"]["loadNumber"]) == ("COMPLETED", "L2")


async def test_reimport_never_rematches_lanes(api: Api, db: Database) -> None:
    await create_lane(api, "H1", "T1")
    await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1"))
    async with untouched(db, "org_a"):
        result = await import_shipment(api, shipment("S1", updatedAt=T1, hcr="H9", tripNumber="T9"))
    assert result["load"]["loadType"] == "CONTRACT"
    assert (result["load"]["hcr"], result["load"]["tripNumber"]) == ("H1", "T1")


# --- Import: rejected -------------------------------------------------------------------------

LONG = "x" * 201
REJECTED = {
    "blank id": shipment(""),
    "whitespace id": shipment("   "),
    "id over 200": shipment("S" * 201),
    "loadNumber over 200": shipment("S1", loadNumber=LONG),
    "hcr over 200": shipment("S1", hcr=LONG),
    "shipperName over 200": shipment("S1", shipperName=LONG),
    "trackingStatus over 200": shipment("S1", trackingStatus=LONG),
    "stop city over 200": shipment("S1", stops=[{"sequence": 1, "stopType": "PICKUP", "city": LONG}]),
    "51 stops": shipment("S1", stops=[{"sequence": i, "stopType": "DROP"} for i in range(51)]),
    "duplicate sequence": shipment(
        "S1", stops=[{"sequence": 1, "stopType": "PICKUP"}, {"sequence": 1, "stopType": "DROP"}]
    ),
}


async def test_rejected_shipment_writes_nothing(api: Api, db: Database, subtests: pytest.Subtests) -> None:
    await create_load(api)  # the org exists and has data
    for name, rejected in REJECTED.items():
        with subtests.test(name):
            before = await dump_tables(db)
            async with untouched(db, "org_a"):
                result = await import_shipment(api, rejected)
            assert result["outcome"] == "REJECTED"
            assert result["error"]
            assert result["load"] is None
            assert await dump_tables(db) == before


async def test_rejected_reimport_leaves_known_load_alone(api: Api, db: Database) -> None:
    await import_shipment(api, shipment("S1"))
    bad = shipment("S1", updatedAt=T1, trackingStatus="CANCELED", stops=[{"sequence": 1, "stopType": "A"}] * 2)
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        result = await import_shipment(api, bad)
    assert result["outcome"] == "REJECTED"
    assert await dump_tables(db) == before


async def test_limits_are_inclusive(api: Api, db: Database) -> None:
    fine = shipment(
        "S" * 200,
        loadNumber="x" * 200,
        stops=[{"sequence": i, "stopType": "DROP"} for i in range(50)],
    )
    async with moves(db, {"loads_assigned": 1, "type_unmapped": 1, "invoices_missing_data": 1}):
        result = await import_shipment(api, fine)
    assert result["outcome"] == "CREATED"


# --- Import: batches ----------------------------------------------------------------------------


async def test_batch_is_one_version_and_rejections_do_not_stop_it(api: Api, db: Database) -> None:
    await create_lane(api, "H1", "T1")
    await create_lane(api, "H2", "*")
    await import_shipment(api, shipment("KNOWN"))
    batch = [
        shipment("C1", hcr="H1", tripNumber="T1"),
        REJECTED["51 stops"] | {"shipmentId": "BAD1"},
        shipment("SP1", hcr="H2", tripNumber="T5"),
        shipment(""),
        shipment("U1"),
        shipment("KNOWN", updatedAt=T1, trackingStatus="DELIVERED"),
        shipment("KNOWN2", updatedAt=T1),
    ]
    delta = {
        "loads_assigned": 4 - 1,
        "loads_completed": 1,
        "type_contract": 1,
        "type_spot": 1,
        "type_unmapped": 2,
        "invoices_draft": 1,
        "invoices_missing_data": 3,
    }
    async with moves(db, delta):
        results = await import_shipments(api, batch)
    assert [(r["shipmentId"], r["outcome"]) for r in results] == [
        ("C1", "CREATED"),
        ("BAD1", "REJECTED"),
        ("SP1", "CREATED"),
        ("", "REJECTED"),
        ("U1", "CREATED"),
        ("KNOWN", "UPDATED"),
        ("KNOWN2", "CREATED"),
    ]
    assert [r["load"]["loadType"] if r["load"] else None for r in results] == [
        "CONTRACT",
        None,
        "SPOT",
        None,
        "UNMAPPED",
        "UNMAPPED",
        "UNMAPPED",
    ]
    assert all(r["error"] for r in results if r["outcome"] == "REJECTED")


async def test_batch_with_one_shipment_twice(api: Api, db: Database) -> None:
    delta = {"loads_canceled": 1, "type_unmapped": 1, "invoices_missing_data": 1}
    async with moves(db, delta):
        results = await import_shipments(api, [shipment("S1"), shipment("S1", updatedAt=T1, trackingStatus="CANCELED")])
    assert [r["outcome"] for r in results] == ["CREATED", "UPDATED"]
    assert results[0]["load"]["id"] == results[1]["load"]["id"]


async def test_batch_results_follow_request_order_for_one_id_rejected_and_valid(api: Api, db: Database) -> None:
    """Each result belongs to its own entry of the request, also when two entries share an id."""
    bad = REJECTED["51 stops"]  # shipmentId S1
    async with moves(db, {"loads_assigned": 1, "type_unmapped": 1, "invoices_missing_data": 1}):
        results = await import_shipments(api, [shipment("S1"), bad])
    assert [r["outcome"] for r in results] == ["CREATED", "REJECTED"]
    assert results[0]["load"] is not None and results[0]["error"] is None
    assert results[1]["load"] is None and results[1]["error"]


async def test_batch_of_only_unchanged_or_rejected_bumps_nothing(api: Api, db: Database) -> None:
    await import_shipment(api, shipment("S1"))
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        results = await import_shipments(
            api, [shipment("S1"), shipment(""), REJECTED["duplicate sequence"] | {"shipmentId": "S2"}]
        )
    assert [r["outcome"] for r in results] == ["UNCHANGED", "REJECTED", "REJECTED"]
    assert await dump_tables(db) == before
    async with untouched(db, "org_a"):
        assert await import_shipments(api, []) == []


# --- Lanes: backfill and promotion ----------------------------------------------------------


async def test_create_lane_exact_backfill(api: Api, db: Database) -> None:
    service = api.as_(token(None, "service"))
    wildcard = await create_lane(api, "H1", "*")
    # SPOT via import on the wildcard (invoice MISSING_DATA).
    spot = (await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1")))["load"]
    # SPOT with a BILLED invoice: the type rises, the invoice stays.
    spot_billed = await create_load(api, loadType="SPOT", hcr="H1", tripNumber="T1")
    await create_invoice(api, spot_billed["id"], "BILLED")
    # UNMAPPED (createLoad never matches) with MISSING_DATA, and one without invoice.
    unmapped = await create_load(api, loadType="UNMAPPED", hcr="H1", tripNumber="T1", status="ASSIGNED")
    await create_invoice(api, unmapped["id"], "MISSING_DATA")
    bare = await create_load(api, loadType="UNMAPPED", hcr="H1", tripNumber="T1")
    # Bystanders: other trip, other hcr, already CONTRACT, other org.
    other_trip = (await import_shipment(api, shipment("S2", hcr="H1", tripNumber="T2")))["load"]
    other_hcr = (await import_shipment(api, shipment("S3", hcr="H9", tripNumber="T1")))["load"]
    contract = await create_load(api, loadType="CONTRACT", hcr="H1", tripNumber="T1")
    await create_invoice(api, contract["id"], "MISSING_DATA")
    foreign = (await import_shipment(service, shipment("S1", hcr="H1", tripNumber="T1"), "org_b"))["load"]

    delta = {
        "type_spot": -2,
        "type_unmapped": -2,
        "type_contract": 4,
        "invoices_missing_data": -2,
        "invoices_draft": 2,
    }
    async with moves(db, delta), untouched(db, "org_b"):
        result = await create_lane(api, "H1", "T1")
    assert (result["promotedLoads"], result["promotedInvoices"]) == (4, 2)
    lane = result["lane"]
    assert (lane["hcr"], lane["tripNumber"], lane["isWildcard"]) == ("H1", "T1", False)

    for load, invoice_status in ((spot, "DRAFT"), (spot_billed, "BILLED"), (unmapped, "DRAFT"), (bare, None)):
        got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
        assert (got["loadType"], got["requiresManualReview"]) == ("CONTRACT", False)
        assert got["lane"]["id"] == lane["id"]
        assert (got["invoice"] or {}).get("status") == invoice_status
        if invoice_status == "DRAFT":
            assert got["invoice"]["missingDataReason"] is None
    for load, load_type in ((other_trip, "SPOT"), (other_hcr, "UNMAPPED"), (contract, "CONTRACT")):
        got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
        assert got["loadType"] == load_type
    assert (await api.ok(GET_LOAD, id=other_trip["id"]))["load"]["lane"]["id"] == wildcard["lane"]["id"]
    assert (await api.ok(GET_LOAD, id=contract["id"]))["load"]["invoice"]["status"] == "MISSING_DATA"
    assert (await service.ok(GET_LOAD, id=foreign["id"]))["load"]["loadType"] == "UNMAPPED"


async def test_create_lane_wildcard_backfill(api: Api, db: Database) -> None:
    unmapped = [
        (await import_shipment(api, shipment("S1", hcr="H1", tripNumber="T1")))["load"],
        (await import_shipment(api, shipment("S2", hcr="H1")))["load"],
    ]
    drafted = await create_load(api, hcr="H1", tripNumber="T7")
    await create_invoice(api, drafted["id"], "DRAFT")
    unmapped.append(drafted)
    no_hcr = (await import_shipment(api, shipment("S3", tripNumber="T1")))["load"]
    spot = await create_load(api, loadType="SPOT", hcr="H1", tripNumber="T8")
    async with moves(db, {"type_unmapped": -3, "type_spot": 3}):
        result = await create_lane(api, "H1", "*")
    assert (result["promotedLoads"], result["promotedInvoices"]) == (3, 0)
    assert result["lane"]["isWildcard"] is True
    for load in unmapped:
        got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
        assert (got["loadType"], got["requiresManualReview"]) == ("SPOT", True)
        assert got["lane"]["id"] == result["lane"]["id"]
        assert got["invoice"]["status"] == (load["invoice"] or {"status": "DRAFT"})["status"]
    assert (await api.ok(GET_LOAD, id=no_hcr["id"]))["load"]["loadType"] == "UNMAPPED"
    got_spot = (await api.ok(GET_LOAD, id=spot["id"]))["load"]
    assert (got_spot["loadType"], got_spot["lane"]) == ("SPOT", None)


async def test_wildcard_lane_rematches_against_all_lanes(api: Api, db: Database) -> None:
    """An UNMAPPED load whose exact lane already exists becomes CONTRACT, not SPOT."""
    exact = (await create_lane(api, "H1", "T1"))["lane"]
    load = await create_load(api, hcr="H1", tripNumber="T1")
    await create_invoice(api, load["id"], "MISSING_DATA")
    delta = {"type_unmapped": -1, "type_contract": 1, "invoices_missing_data": -1, "invoices_draft": 1}
    async with moves(db, delta):
        result = await create_lane(api, "H1", "*")
    assert (result["promotedLoads"], result["promotedInvoices"]) == (1, 1)
    got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
    assert (got["loadType"], got["lane"]["id"], got["invoice"]["status"]) == (
        "CONTRACT",
        exact["id"],
        "DRAFT",
    )


async def test_create_lane_without_matches_bumps_nothing(api: Api, db: Database) -> None:
    await create_load(api, hcr="H2", tripNumber="T1")
    async with untouched(db, "org_a"):
        result = await create_lane(api, "H1", "T1")
    assert (result["promotedLoads"], result["promotedInvoices"]) == (0, 0)


async def test_promote_spot_loads(api: Api, db: Database) -> None:
    lane = (await create_lane(api, "H1", "T1"))["lane"]
    await create_lane(api, "H2", "*")
    late = await create_load(api, loadType="SPOT", hcr="H1", tripNumber="T1", status="ASSIGNED")
    await create_invoice(api, late["id"], "MISSING_DATA")
    late_no_invoice = await create_load(api, loadType="SPOT", hcr="H1", tripNumber="T1")
    stays = [
        await create_load(api, loadType="SPOT", hcr="H1", tripNumber="T2"),
        await create_load(api, loadType="SPOT", hcr="H2", tripNumber="T1"),
        await create_load(api, loadType="SPOT"),
    ]
    unmapped = await create_load(api, loadType="UNMAPPED", hcr="H1", tripNumber="T1")  # not SPOT: not promoted
    delta = {"type_spot": -2, "type_contract": 2, "invoices_missing_data": -1, "invoices_draft": 1}
    async with moves(db, delta):
        data = await api.ok(PROMOTE, o="org_a")
    assert data["promoteSpotLoads"]["promotedLoads"] == 2
    for load in (late, late_no_invoice):
        got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
        assert (got["loadType"], got["lane"]["id"], got["requiresManualReview"]) == (
            "CONTRACT",
            lane["id"],
            False,
        )
    assert (await api.ok(GET_LOAD, id=late["id"]))["load"]["invoice"]["status"] == "DRAFT"
    for load in stays:
        assert (await api.ok(GET_LOAD, id=load["id"]))["load"]["loadType"] == "SPOT"
    assert (await api.ok(GET_LOAD, id=unmapped["id"]))["load"]["loadType"] == "UNMAPPED"
    async with untouched(db, "org_a"):
        again = await api.ok(PROMOTE, o="org_a")
    assert again["promoteSpotLoads"]["promotedLoads"] == 0


# --- Invoices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(INVOICE_MOVES))
async def test_create_invoice(api: Api, db: Database, status: str) -> None:
    load = await create_load(api)
    async with moves(db, {INVOICE_COUNTER[status]: 1}):
        invoice = await create_invoice(api, load["id"], status, "no rate" if status == "MISSING_DATA" else None)
    assert invoice["status"] == status
    assert invoice["load"]["id"] == load["id"]
    assert invoice["missingDataReason"] == ("no rate" if status == "MISSING_DATA" else None)


async def test_create_invoice_defaults_to_draft(api: Api, db: Database) -> None:
    load = await create_load(api)
    async with moves(db, {"invoices_draft": 1}):
        data = await api.ok("mutation($id: ID!) { createInvoice(input: {loadId: $id}) { status } }", id=load["id"])
    assert data["createInvoice"]["status"] == "DRAFT"


@pytest.mark.parametrize(("start", "target"), legal_pairs(INVOICE_MOVES))
async def test_update_invoice_status_legal(api: Api, db: Database, start: str, target: str) -> None:
    load = await create_load(api, status="ASSIGNED")
    invoice = await create_invoice(api, load["id"], start)
    async with moves(db, {INVOICE_COUNTER[start]: -1, INVOICE_COUNTER[target]: 1}):
        data = await api.ok(UPDATE_INVOICE, id=invoice["id"], s=target)
    got = data["updateInvoiceStatus"]
    assert got["status"] == target
    assert got["missingDataReason"] is None  # only a MISSING_DATA invoice carries one
    assert got["load"]["status"] == "ASSIGNED"


@pytest.mark.parametrize("status", list(INVOICE_MOVES))
async def test_update_invoice_status_to_same_is_a_no_op(api: Api, db: Database, status: str) -> None:
    invoice = await create_invoice(api, (await create_load(api))["id"], status)
    before = await dump_tables(db)
    async with untouched(db, "org_a"):
        data = await api.ok(UPDATE_INVOICE, id=invoice["id"], s=status)
    assert data["updateInvoiceStatus"]["status"] == status
    assert await dump_tables(db) == before


async def new_invoices(api: Api, *statuses: str, org: str = "org_a") -> list[str]:
    ids = []
    for status in statuses:
        load = await create_load(api, org=org)
        ids.append((await create_invoice(api, load["id"], status))["id"])
    return ids


async def test_bulk_update_invoice_status(api: Api, db: Database) -> None:
    drafts = await new_invoices(api, "DRAFT", "DRAFT", "DRAFT")
    billed = await new_invoices(api, "BILLED")
    bystander = await new_invoices(api, "DRAFT")
    async with moves(db, {"invoices_draft": -3, "invoices_billed": 3}):
        data = await api.ok(BULK_UPDATE, ids=[*drafts, *billed], s="BILLED")
    result = data["bulkUpdateInvoiceStatus"]
    assert (result["updated"], result["unchanged"]) == (3, 1)
    await stored_matches(db, result["stats"])
    for id_ in (*drafts, *billed):
        assert (await api.ok(GET_INVOICE, id=id_))["invoice"]["status"] == "BILLED"
    assert (await api.ok(GET_INVOICE, id=bystander[0]))["invoice"]["status"] == "DRAFT"


async def test_bulk_update_from_mixed_statuses(api: Api, db: Database) -> None:
    ids = await new_invoices(api, "BILLED", "PENDING_PAYMENT", "DRAFT", "MISSING_DATA")
    delta = {
        "invoices_billed": -1,
        "invoices_pending_payment": -1,
        "invoices_missing_data": -1,
        "invoices_draft": 3,
    }
    async with moves(db, delta):
        data = await api.ok(BULK_UPDATE, ids=ids, s="DRAFT")
    assert (data["bulkUpdateInvoiceStatus"]["updated"], data["bulkUpdateInvoiceStatus"]["unchanged"]) == (
        3,
        1,
    )


async def test_bulk_update_all_unchanged_bumps_nothing(api: Api, db: Database) -> None:
    ids = await new_invoices(api, "PAID", "PAID")
    async with untouched(db, "org_a"):
        data = await api.ok(BULK_UPDATE, ids=ids, s="PAID")
    result = data["bulkUpdateInvoiceStatus"]
    assert (result["updated"], result["unchanged"]) == (0, 2)
    await stored_matches(db, result["stats"])


async def test_bulk_update_by_service_token_on_another_org(api: Api, db: Database) -> None:
    service = api.as_(token(None, "service"))
    ids = await new_invoices(service, "DRAFT", "DRAFT", org="org_b")
    async with untouched(db, "org_a"), moves(db, {"invoices_draft": -2, "invoices_void": 2}, org="org_b"):
        data = await service.ok(BULK_UPDATE, ids=ids, s="VOID")
    assert data["bulkUpdateInvoiceStatus"]["stats"]["orgId"] == "org_b"
    await stored_matches(db, data["bulkUpdateInvoiceStatus"]["stats"])


async def test_bulk_void_invoices(api: Api, db: Database) -> None:
    ids = await new_invoices(api, "MISSING_DATA", "DRAFT", "BILLED", "PENDING_PAYMENT", "PAID")
    delta = {
        "invoices_missing_data": -1,
        "invoices_draft": -1,
        "invoices_billed": -1,
        "invoices_pending_payment": -1,
        "invoices_paid": -1,
        "invoices_void": 5,
    }
    async with moves(db, delta):
        data = await api.ok(BULK_VOID, ids=ids, r="customer went bust")
    result = data["bulkVoidInvoices"]
    assert (result["updated"], result["unchanged"]) == (5, 0)
    await stored_matches(db, result["stats"])
    for id_ in ids:
        got = (await api.ok(GET_INVOICE, id=id_))["invoice"]
        assert (got["status"], got["voidReason"], got["missingDataReason"]) == (
            "VOID",
            "customer went bust",
            None,
        )


async def test_bulk_void_counts_already_void_as_unchanged(api: Api, db: Database) -> None:
    void = await new_invoices(api, "VOID")
    draft = await new_invoices(api, "DRAFT")
    async with moves(db, {"invoices_draft": -1, "invoices_void": 1}):
        data = await api.ok(BULK_VOID, ids=[*void, *draft])
    assert (data["bulkVoidInvoices"]["updated"], data["bulkVoidInvoices"]["unchanged"]) == (1, 1)
    assert (await api.ok(GET_INVOICE, id=draft[0]))["invoice"]["voidReason"] is None


async def test_update_invoice_to_void_then_load_delete(api: Api, db: Database) -> None:
    load = await create_load(api, status="ASSIGNED")
    invoice = await create_invoice(api, load["id"], "PAID")
    async with moves(db, {"invoices_paid": -1, "invoices_void": 1}):
        await api.ok(UPDATE_INVOICE, id=invoice["id"], s="VOID")
    async with moves(db, {"invoices_void": -1, "loads_assigned": -1, "type_unmapped": -1}):
        await api.ok(DELETE_LOAD, id=load["id"])


@pytest.mark.parametrize("status", list(INVOICE_MOVES))
async def test_delete_invoice(api: Api, db: Database, status: str) -> None:
    load = await create_load(api)
    invoice = await create_invoice(api, load["id"], status)
    async with moves(db, {INVOICE_COUNTER[status]: -1}):
        data = await api.ok(DELETE_INVOICE, id=invoice["id"])
    assert data["deleteInvoice"]["id"] == invoice["id"]
    await stored_matches(db, data["deleteInvoice"]["stats"])
    got = (await api.ok(GET_LOAD, id=load["id"]))["load"]
    assert got["status"] == "OPEN" and got["invoice"] is None
    # The load can be invoiced again.
    async with moves(db, {"invoices_draft": 1}):
        await create_invoice(api, load["id"])
