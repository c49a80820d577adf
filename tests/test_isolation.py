"""Tenant isolation and role rules, for every operation of the schema.

The matrix below has one entry per query, mutation and subscription; a test enumerates
the operations from the schema itself (the served one and schema.graphql) and fails when
one has no entry, so a new operation cannot ship without its isolation cases.

For each entry a member and an admin of org A aim at org B: B's orgId, or B's load,
invoice and customer ids (no operation takes a lane id; lanes are reached through
their org). Each call is refused (FORBIDDEN or NOT_FOUND, or null for `load(id)` /
`invoice(id)`), the response for B's real id equals the response for an unknown id once
each id is replaced by a placeholder (the whole body: data, errors, locations, codes, ids
and even the statement count), and nothing changes: B's organization_stats row (counters,
version, timestamps), B's row counts of loads, invoices, lanes and customers, and indeed
every row of every table.

Role rules (domain.md, Access) are checked the same way on the caller's own org: members
may not call the admin-only operations, admins may not call the service-only ones, and a
service token may call everything on any org.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import graphql
import httpx
import pytest
import websockets
from sqlalchemy import text

from api.root import schema as served_schema
from db.unit_of_work import Database
from tests.helpers import (
    Api,
    assert_exact,
    dump_tables,
    leaks_in,
    org_fingerprint,
    replace_ids,
    stored,
    token,
)
from tests.live import ws_url
from tests.server import ROOT, running_server

ORG_A, ORG_B = "org_a", "org_b"
UNKNOWN = {"org": "org_nobody", "load": "987651", "invoice": "987652", "customer": "987653"}

ADMIN_ONLY = {
    "deleteLoad",
    "deleteInvoice",
    "driftReport",
    "recalculateOrgStats",
    "createOrganization",
    "recalculationRuns",
}
SERVICE_ONLY = {"recalculateAllOrgStats", "organizations"}
ROLES = ("member", "admin", "service")


def allowed(op: str, role: str) -> bool:
    """domain.md, Access: who may call what (on an org the caller may act on)."""
    if op in SERVICE_ONLY:
        return role == "service"
    if op in ADMIN_ONLY:
        return role in ("admin", "service")
    return True


# --- The two orgs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """One org's rows, seeded through a service token."""

    org: str
    customer: str
    lane: str
    load: str  # ASSIGNED, with a DRAFT invoice
    invoice: str
    bare_load: str  # OPEN, no invoice yet
    spot_load: str  # imported SPOT load (wildcard lane), invoice MISSING_DATA
    shipment: str  # the external id of spot_load


@dataclass(frozen=True)
class Aim:
    """What a caller of org A points at: B's real ids, or ids that name nothing."""

    org: str
    load: str
    invoice: str
    customer: str

    @property
    def placeholders(self) -> dict[str, str]:
        """Row ids of different tables may be equal numbers, so all read alike as <id>."""
        return {self.org: "<org>", self.load: "<id>", self.invoice: "<id>", self.customer: "<id>"}


def aim_at(world: World) -> Aim:
    return Aim(org=world.org, load=world.bare_load, invoice=world.invoice, customer=world.customer)


UNKNOWN_AIM = Aim(**UNKNOWN)


async def seed(svc: Api, org: str) -> World:
    async def ok(query: str, **variables: Any) -> dict[str, Any]:
        return await svc.ok(query, **variables)

    await ok("mutation($o: ID!, $n: String!) { createOrganization(orgId: $o, name: $n) { orgId } }", o=org, n=org)
    customer = (await ok('mutation($o: ID!) { createCustomer(orgId: $o, name: "Acme") { id } }', o=org))[
        "createCustomer"
    ]["id"]
    lane = (
        await ok(
            "mutation($i: CreateLaneInput!) { createLane(input: $i) { lane { id } } }",
            i={"orgId": org, "hcr": "H1", "tripNumber": "T1", "customerId": customer, "rate": 10.0},
        )
    )["createLane"]["lane"]["id"]
    await ok(
        "mutation($i: CreateLaneInput!) { createLane(input: $i) { lane { id } } }",
        i={"orgId": org, "hcr": "H2", "tripNumber": "*"},
    )
    load = (await ok(CREATE_LOAD, i={"orgId": org, "status": "ASSIGNED", "customerId": customer}))["createLoad"]["id"]
    invoice = (await ok(CREATE_INVOICE, i={"loadId": load, "status": "DRAFT"}))["createInvoice"]["id"]
    bare = (await ok(CREATE_LOAD, i={"orgId": org, "hcr": "H9", "tripNumber": "T9"}))["createLoad"]["id"]
    shipment = f"SHIP-{org}"
    spot = (
        await ok(
            "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) { outcome load { id loadType } } }",
            o=org,
            s={"shipmentId": shipment, "hcr": "H2", "tripNumber": "T7", "shipperName": "Shipper"},
        )
    )["importShipment"]
    assert spot["outcome"] == "CREATED" and spot["load"]["loadType"] == "SPOT"
    return World(org, customer, lane, load, invoice, bare, spot["load"]["id"], shipment)


@pytest.fixture
def svc(api: Api) -> Api:
    return api.as_(token(None, "service"))


@pytest.fixture
async def worlds(svc: Api, db: Database) -> dict[str, World]:
    """Orgs A and B with data, and a recorded recalculation run that corrected both."""
    made = {org: await seed(svc, org) for org in (ORG_A, ORG_B)}
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE organization_stats SET loads_open = loads_open + 3"))
    await svc.ok("mutation { recalculateAllOrgStats { orgId corrected { counter } } }")
    for org in made:
        await assert_exact(db, org)
    return made


# --- Operations --------------------------------------------------------------------------------------

Call = tuple[str, dict[str, Any]]

CREATE_LOAD = "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id orgId status } }"
CREATE_INVOICE = "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id orgId status } }"
STATS = "orgId version loads { open assigned completed canceled total } invoices { draft void total }"
SUBSCRIBE = f"subscription($o: ID!) {{ organizationStatsChanged(orgId: $o) {{ {STATS} }} }}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def fresh_load(svc: Api, org: str, status: str = "OPEN") -> str:
    return str((await svc.ok(CREATE_LOAD, i={"orgId": org, "status": status}))["createLoad"]["id"])


async def fresh_invoice(svc: Api, org: str, status: str = "DRAFT") -> str:
    load = await fresh_load(svc, org, "ASSIGNED")
    return str((await svc.ok(CREATE_INVOICE, i={"loadId": load, "status": status}))["createInvoice"]["id"])


Happy = Callable[[Api, World], Awaitable[Call]]


def const(query: str, **variables: Any) -> Happy:
    """A call that needs no fresh rows; `$o` is the caller's org."""

    async def build(svc: Api, world: World) -> Call:
        return query, {k: (world.org if v is ORG else v) for k, v in variables.items()}

    return build


ORG: Any = object()  # placeholder for "the caller's org" in `const`


@dataclass(frozen=True)
class Foreign:
    """One way to aim at org B; `expect`: FORBIDDEN, NOT_FOUND, NULL, or SCOPED (answers, shows nothing of B)."""

    label: str
    expect: str
    build: Callable[[World, Aim], Call]


@dataclass(frozen=True)
class Op:
    kind: str
    happy: Happy
    foreign: tuple[Foreign, ...]


def by_org(query: str, **extra: Any) -> Foreign:
    return Foreign("B's orgId", "FORBIDDEN", lambda own, aim: (query, {"o": aim.org, **extra}))


async def happy_create_load(svc: Api, world: World) -> Call:
    return CREATE_LOAD, {"i": {"orgId": world.org, "status": "ASSIGNED", "customerId": world.customer}}


async def happy_update_load(svc: Api, world: World) -> Call:
    return "mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { id status } }", {
        "id": await fresh_load(svc, world.org)
    }


async def happy_delete_load(svc: Api, world: World) -> Call:
    return "mutation($id: ID!) { deleteLoad(id: $id) { id stats { version } } }", {
        "id": await fresh_load(svc, world.org)
    }


async def happy_create_invoice(svc: Api, world: World) -> Call:
    return CREATE_INVOICE, {"i": {"loadId": await fresh_load(svc, world.org, "ASSIGNED")}}


async def happy_update_invoice(svc: Api, world: World) -> Call:
    return "mutation($id: ID!) { updateInvoiceStatus(id: $id, status: BILLED) { id status } }", {
        "id": await fresh_invoice(svc, world.org)
    }


async def happy_set_amount(svc: Api, world: World) -> Call:
    return 'mutation($id: ID!) { setInvoiceAmount(id: $id, amount: "12.50") { id amount } }', {
        "id": await fresh_invoice(svc, world.org)
    }


async def happy_record_payment(svc: Api, world: World) -> Call:
    invoice = await fresh_invoice(svc, world.org)
    await svc.ok('mutation($id: ID!) { setInvoiceAmount(id: $id, amount: "12.50") { id } }', id=invoice)
    await svc.ok("mutation($id: ID!) { updateInvoiceStatus(id: $id, status: BILLED) { id } }", id=invoice)
    return 'mutation($id: ID!) { recordPayment(invoiceId: $id, amount: "2.50") { id paidAmount } }', {"id": invoice}


async def happy_bulk_update(svc: Api, world: World) -> Call:
    return "mutation($ids: [ID!]!) { bulkUpdateInvoiceStatus(ids: $ids, status: BILLED) { updated unchanged } }", {
        "ids": [await fresh_invoice(svc, world.org), await fresh_invoice(svc, world.org)]
    }


async def happy_bulk_void(svc: Api, world: World) -> Call:
    return 'mutation($ids: [ID!]!) { bulkVoidInvoices(ids: $ids, reason: "test") { updated unchanged } }', {
        "ids": [await fresh_invoice(svc, world.org)]
    }


async def happy_delete_invoice(svc: Api, world: World) -> Call:
    return "mutation($id: ID!) { deleteInvoice(id: $id) { id stats { version } } }", {
        "id": await fresh_invoice(svc, world.org)
    }


async def happy_create_lane(svc: Api, world: World) -> Call:
    return "mutation($i: CreateLaneInput!) { createLane(input: $i) { lane { id orgId } promotedLoads } }", {
        "i": {"orgId": world.org, "hcr": unique("H"), "tripNumber": "*", "customerId": world.customer}
    }


async def happy_load(svc: Api, world: World) -> Call:
    return "query($id: ID!) { load(id: $id) { id orgId } }", {"id": world.load}


async def happy_invoice(svc: Api, world: World) -> Call:
    return "query($id: ID!) { invoice(id: $id) { id orgId } }", {"id": world.invoice}


async def happy_create_customer(svc: Api, world: World) -> Call:
    return "mutation($o: ID!, $n: String!) { createCustomer(orgId: $o, name: $n) { id orgId } }", {
        "o": world.org,
        "n": unique("Customer"),
    }


async def happy_import(svc: Api, world: World) -> Call:
    return (
        "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) { outcome load { id orgId } } }",
        {
            "o": world.org,
            "s": {"shipmentId": unique("S"), "hcr": "H1", "tripNumber": "T1"},
        },
    )


async def happy_import_many(svc: Api, world: World) -> Call:
    return "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) { outcome } }", {
        "o": world.org,
        "s": [{"shipmentId": unique("S")}, {"shipmentId": unique("S"), "hcr": "H2"}],
    }


MATRIX: dict[str, Op] = {
    # --- Query ---
    "organizationStats": Op(
        "query",
        const(f"query($o: ID!) {{ organizationStats(orgId: $o) {{ {STATS} }} }}", o=ORG),
        (by_org(f"query($o: ID!) {{ organizationStats(orgId: $o) {{ {STATS} }} }}"),),
    ),
    "countLoadsByStatus": Op(
        "query",
        const("query($o: ID!) { countLoadsByStatus(orgId: $o) { open total } }", o=ORG),
        (by_org("query($o: ID!) { countLoadsByStatus(orgId: $o) { open total } }"),),
    ),
    "countInvoicesByStatus": Op(
        "query",
        const("query($o: ID!) { countInvoicesByStatus(orgId: $o) { draft total } }", o=ORG),
        (by_org("query($o: ID!) { countInvoicesByStatus(orgId: $o) { draft total } }"),),
    ),
    "organizations": Op(
        "query",
        const("query { organizations { orgId name } }"),
        (Foreign("every org", "FORBIDDEN", lambda own, aim: ("query { organizations { orgId name } }", {})),),
    ),
    "load": Op(
        "query",
        happy_load,
        (
            Foreign(
                "B's load id",
                "NULL",
                lambda own, aim: ("query($id: ID!) { load(id: $id) { id orgId status } }", {"id": aim.load}),
            ),
        ),
    ),
    "loads": Op(
        "query",
        const("query($o: ID!) { loads(orgId: $o) { nodes { id } pageInfo { hasNextPage } } }", o=ORG),
        (
            by_org("query($o: ID!) { loads(orgId: $o) { nodes { id orgId } } }"),
            by_org("query($o: ID!) { loads(orgId: $o, status: OPEN, loadType: UNMAPPED, first: 1) { nodes { id } } }"),
        ),
    ),
    "invoice": Op(
        "query",
        happy_invoice,
        (
            Foreign(
                "B's invoice id",
                "NULL",
                lambda own, aim: ("query($id: ID!) { invoice(id: $id) { id orgId load { id } } }", {"id": aim.invoice}),
            ),
        ),
    ),
    "revenueByMonth": Op(
        "query",
        const('query($o: ID!) { revenueByMonth(orgId: $o, from: "2026-01", to: "2026-03") { month invoiced } }', o=ORG),
        (by_org('query($o: ID!) { revenueByMonth(orgId: $o, from: "2026-01", to: "2026-12") { month invoiced } }'),),
    ),
    "receivablesAging": Op(
        "query",
        const("query($o: ID!) { receivablesAging(orgId: $o) { buckets { total } customers { invoices } } }", o=ORG),
        (by_org("query($o: ID!) { receivablesAging(orgId: $o, first: 5) { buckets { total } } }"),),
    ),
    "invoices": Op(
        "query",
        const("query($o: ID!) { invoices(orgId: $o) { nodes { id } } }", o=ORG),
        (by_org("query($o: ID!) { invoices(orgId: $o, status: DRAFT) { nodes { id orgId } } }"),),
    ),
    "lanes": Op(
        "query",
        const("query($o: ID!) { lanes(orgId: $o) { id orgId } }", o=ORG),
        (by_org("query($o: ID!) { lanes(orgId: $o) { id orgId hcr customer { id name } } }"),),
    ),
    "driftReport": Op(
        "query",
        const("query($o: ID!) { driftReport(orgId: $o) { orgId ok drift { counter } } }", o=ORG),
        (by_org("query($o: ID!) { driftReport(orgId: $o) { orgId ok drift { counter stored actual } } }"),),
    ),
    "recalculationRuns": Op(
        "query",
        const("query { recalculationRuns { id orgsChecked details { orgId } } }"),
        (
            Foreign(
                "B's corrections",
                "SCOPED",
                lambda own, aim: (
                    "query { recalculationRuns(limit: 100) { id error details { orgId counter stored actual } } }",
                    {},
                ),
            ),
        ),
    ),
    # --- Mutation ---
    "createOrganization": Op(
        "mutation",
        const('mutation($o: ID!) { createOrganization(orgId: $o, name: "Renamed") { orgId name } }', o=ORG),
        (by_org('mutation($o: ID!) { createOrganization(orgId: $o, name: "Mine now") { orgId name } }'),),
    ),
    "createCustomer": Op(
        "mutation",
        happy_create_customer,
        (by_org('mutation($o: ID!) { createCustomer(orgId: $o, name: "Acme 2") { id orgId } }'),),
    ),
    "createLoad": Op(
        "mutation",
        happy_create_load,
        (
            Foreign(
                "B's orgId",
                "FORBIDDEN",
                lambda own, aim: (CREATE_LOAD, {"i": {"orgId": aim.org, "status": "ASSIGNED"}}),
            ),
            Foreign(
                "B's customer id",
                "NOT_FOUND",
                lambda own, aim: (CREATE_LOAD, {"i": {"orgId": own.org, "customerId": aim.customer}}),
            ),
        ),
    ),
    "updateLoadStatus": Op(
        "mutation",
        happy_update_load,
        (
            Foreign(
                "B's load id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($id: ID!) { updateLoadStatus(id: $id, status: CANCELED) { id status } }",
                    {"id": aim.load},
                ),
            ),
        ),
    ),
    "deleteLoad": Op(
        "mutation",
        happy_delete_load,
        (
            Foreign(
                "B's load id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($id: ID!) { deleteLoad(id: $id) { id stats { orgId version } } }",
                    {"id": aim.load},
                ),
            ),
        ),
    ),
    "importShipment": Op(
        "mutation",
        happy_import,
        (
            by_org(
                "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) { outcome load { id } } }",
                s={"shipmentId": "SHIP-org_b", "trackingStatus": "CANCELED", "updatedAt": "2099-01-01T00:00:00+00:00"},
            ),
        ),
    ),
    "importShipments": Op(
        "mutation",
        happy_import_many,
        (
            by_org(
                "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) { outcome } }",
                s=[{"shipmentId": "SHIP-org_b", "trackingStatus": "DELIVERED", "updatedAt": "2099-01-01T00:00:00Z"}],
            ),
        ),
    ),
    "createLane": Op(
        "mutation",
        happy_create_lane,
        (
            Foreign(
                "B's orgId",
                "FORBIDDEN",
                lambda own, aim: (
                    "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }",
                    {"i": {"orgId": aim.org, "hcr": "H9", "tripNumber": "T9"}},
                ),
            ),
            Foreign(
                "B's customer id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }",
                    {"i": {"orgId": own.org, "hcr": "H5", "tripNumber": "T5", "customerId": aim.customer}},
                ),
            ),
        ),
    ),
    "promoteSpotLoads": Op(
        "mutation",
        const("mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }", o=ORG),
        (by_org("mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }"),),
    ),
    "createInvoice": Op(
        "mutation",
        happy_create_invoice,
        (
            Foreign(
                "B's load id",
                "NOT_FOUND",
                lambda own, aim: (CREATE_INVOICE, {"i": {"loadId": aim.load, "status": "DRAFT"}}),
            ),
        ),
    ),
    "setInvoiceAmount": Op(
        "mutation",
        happy_set_amount,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    'mutation($id: ID!) { setInvoiceAmount(id: $id, amount: "1") { id amount } }',
                    {"id": aim.invoice},
                ),
            ),
        ),
    ),
    "recordPayment": Op(
        "mutation",
        happy_record_payment,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    'mutation($id: ID!) { recordPayment(invoiceId: $id, amount: "1") { id paidAmount } }',
                    {"id": aim.invoice},
                ),
            ),
        ),
    ),
    "updateInvoiceStatus": Op(
        "mutation",
        happy_update_invoice,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($id: ID!) { updateInvoiceStatus(id: $id, status: VOID) { id status } }",
                    {"id": aim.invoice},
                ),
            ),
        ),
    ),
    "bulkUpdateInvoiceStatus": Op(
        "mutation",
        happy_bulk_update,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($ids: [ID!]!) { bulkUpdateInvoiceStatus(ids: $ids, status: BILLED) { updated stats { orgId version } } }",
                    {"ids": [aim.invoice]},
                ),
            ),
            Foreign(
                "own and B's invoice ids",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($ids: [ID!]!) { bulkUpdateInvoiceStatus(ids: $ids, status: BILLED) { updated } }",
                    {"ids": [own.invoice, aim.invoice]},
                ),
            ),
        ),
    ),
    "bulkVoidInvoices": Op(
        "mutation",
        happy_bulk_void,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($ids: [ID!]!) { bulkVoidInvoices(ids: $ids) { updated } }",
                    {"ids": [aim.invoice]},
                ),
            ),
            Foreign(
                "own and B's invoice ids",
                "NOT_FOUND",
                lambda own, aim: (
                    'mutation($ids: [ID!]!) { bulkVoidInvoices(ids: $ids, reason: "x") { updated } }',
                    {"ids": [aim.invoice, own.invoice]},
                ),
            ),
        ),
    ),
    "deleteInvoice": Op(
        "mutation",
        happy_delete_invoice,
        (
            Foreign(
                "B's invoice id",
                "NOT_FOUND",
                lambda own, aim: (
                    "mutation($id: ID!) { deleteInvoice(id: $id) { id stats { orgId } } }",
                    {"id": aim.invoice},
                ),
            ),
        ),
    ),
    "recalculateOrgStats": Op(
        "mutation",
        const(
            "mutation($o: ID!) { recalculateOrgStats(orgId: $o) { orgId corrected { counter } stats { version } } }",
            o=ORG,
        ),
        (by_org("mutation($o: ID!) { recalculateOrgStats(orgId: $o) { orgId corrected { counter } } }"),),
    ),
    "recalculateAllOrgStats": Op(
        "mutation",
        const("mutation { recalculateAllOrgStats { orgId corrected { counter } } }"),
        (
            Foreign(
                "every org",
                "FORBIDDEN",
                lambda own, aim: ("mutation { recalculateAllOrgStats { orgId corrected { counter } } }", {}),
            ),
        ),
    ),
    # --- Subscription (over a real WebSocket: test_subscription_isolation_over_websocket) ---
    "organizationStatsChanged": Op("subscription", const(SUBSCRIBE, o=ORG), (by_org(SUBSCRIBE),)),
}


HTTP_OPS = [name for name, op in MATRIX.items() if op.kind != "subscription"]


# --- Coverage of the matrix ---------------------------------------------------------------------------


def operations(schema: graphql.GraphQLSchema) -> dict[str, str]:
    found: dict[str, str] = {}
    for kind, root in (
        ("query", schema.query_type),
        ("mutation", schema.mutation_type),
        ("subscription", schema.subscription_type),
    ):
        for name in root.fields if root else {}:
            assert name not in found, f"{name} is both a {found[name]} and a {kind}"
            found[name] = kind
    return found


def test_matrix_covers_every_operation_of_the_schema() -> None:
    served = operations(served_schema._schema)
    exported = operations(graphql.build_schema((ROOT / "schema.graphql").read_text()))
    assert served == exported, "schema.graphql is stale: run `python main.py schema > schema.graphql`"
    missing = sorted(set(served) - set(MATRIX))
    assert not missing, f"operations without isolation cases (add them to MATRIX): {missing}"
    assert not set(MATRIX) - set(served), f"MATRIX names operations the schema lacks: {set(MATRIX) - set(served)}"
    for name, kind in served.items():
        assert MATRIX[name].kind == kind, name
        assert MATRIX[name].foreign, f"{name} has no case aiming at another org"
    # Every rule of domain.md names real operations.
    assert set(served) >= ADMIN_ONLY | SERVICE_ONLY


# --- Checks -------------------------------------------------------------------------------------------


async def post(api: Api, call: Call) -> dict[str, Any]:
    query, variables = call
    response = await api.client.post(
        "/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {api.bearer}"}
    )
    assert response.status_code == 200, response.text
    assert not leaks_in(response.text), response.text
    return response.json()


def refusal(body: dict[str, Any], expect: str, field: str) -> None:
    """`body` refuses the call as `expect` says, and shows nothing of the target."""
    if expect == "NULL":
        assert not body.get("errors"), body
        assert body["data"] == {field: None}, body
        return
    assert body.get("errors"), f"expected {expect}, got {body}"
    assert [e.get("extensions", {}).get("code") for e in body["errors"]] == [expect], body
    assert body.get("data") is None or all(v is None for v in body["data"].values()), body
    if "ids" in body["errors"][0]["extensions"]:
        assert expect == "NOT_FOUND", body


async def state(db: Database) -> tuple[Any, ...]:
    return await org_fingerprint(db, ORG_B), await org_fingerprint(db, ORG_A), await dump_tables(db)


@pytest.mark.parametrize("op", HTTP_OPS)
async def test_aiming_at_another_org_is_refused_and_changes_nothing(
    api: Api, db: Database, worlds: dict[str, World], op: str
) -> None:
    own, b = worlds[ORG_A], worlds[ORG_B]
    before = await state(db)
    for role, case in [(role, case) for role in ("member", "admin") for case in MATRIX[op].foreign]:
        caller = api.as_(token(ORG_A, role))
        expect = case.expect if allowed(op, role) else "FORBIDDEN"
        real = await post(caller, case.build(own, aim_at(b)))
        unknown = await post(caller, case.build(own, UNKNOWN_AIM))
        where = f"{op} as {role} of A, aiming at {case.label}"
        if expect == "SCOPED":
            assert not real.get("errors"), (where, real)
            assert ORG_B not in json.dumps(real), (where, real)
            details = [d for run in real["data"][op] for d in run["details"]]
            assert details and {d["orgId"] for d in details} == {ORG_A}, (where, real)
            continue
        refusal(real, expect, op)
        refusal(unknown, expect, op)
        if expect == "NOT_FOUND" and "ids" in real["errors"][0]["extensions"]:
            # The failing ids are B's, never the caller's own.
            named = replace_ids(real["errors"][0]["extensions"]["ids"], aim_at(b).placeholders)
            assert named and set(named) == {"<id>"}, (where, real)
        # B's real ids are answered exactly like ids that name nothing.
        assert replace_ids(real, aim_at(b).placeholders) == replace_ids(unknown, UNKNOWN_AIM.placeholders), where
        assert await state(db) == before, f"{where} changed something"


@pytest.mark.parametrize("op", HTTP_OPS)
async def test_role_rules_on_the_callers_own_org(api: Api, db: Database, worlds: dict[str, World], op: str) -> None:
    """Members: no admin-only or service-only operation; admins: no service-only one; a
    service token: everything, on any org (here B, then A)."""
    svc = api.as_(token(None, "service"))
    for role, org in (("member", ORG_A), ("admin", ORG_A), ("service", ORG_B), ("service", ORG_A)):
        caller = api.as_(token(None if role == "service" else org, role))
        call = await MATRIX[op].happy(svc, worlds[org])
        before = None if allowed(op, role) else await state(db)
        body = await post(caller, call)
        where = f"{op} as {role} on {org}"
        if allowed(op, role):
            assert not body.get("errors"), (where, body)
            assert all(v is not None for v in body["data"].values()), (where, body)
        else:
            refusal(body, "FORBIDDEN", op)
            assert await state(db) == before, f"refused {where} changed something"
        for each in (ORG_A, ORG_B):
            await assert_exact(db, each)


async def test_an_import_never_finds_another_orgs_shipment(api: Api, db: Database, worlds: dict[str, World]) -> None:
    """A's import of B's shipment id creates A's own load; B's load is not found, matched or changed."""
    b = worlds[ORG_B]
    before = await org_fingerprint(db, ORG_B)
    body = await post(
        api.as_(token(ORG_A, "member")),
        (
            "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) { outcome load { id orgId } } }",
            {
                "o": ORG_A,
                "s": {"shipmentId": b.shipment, "trackingStatus": "CANCELED", "updatedAt": "2099-01-01T00:00:00Z"},
            },
        ),
    )
    result = body["data"]["importShipment"]
    assert result["outcome"] == "CREATED" and result["load"]["orgId"] == ORG_A and result["load"]["id"] != b.spot_load
    assert await org_fingerprint(db, ORG_B) == before
    await assert_exact(db, ORG_A)


async def test_a_lane_never_promotes_another_orgs_loads(api: Api, db: Database, worlds: dict[str, World]) -> None:
    """B has an UNMAPPED load on H9/T9 and a SPOT load on H2/T7; A's lanes on those routes leave them alone."""
    before = await org_fingerprint(db, ORG_B)
    admin = api.as_(token(ORG_A, "admin"))
    for hcr, trip in (("H9", "T9"), ("H9", "*"), ("H2", "T7")):
        body = await post(
            admin,
            (
                "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads promotedInvoices } }",
                {"i": {"orgId": ORG_A, "hcr": hcr, "tripNumber": trip}},
            ),
        )
        assert not body.get("errors"), body
    body = await post(admin, ('mutation { promoteSpotLoads(orgId: "org_a") { promotedLoads } }', {}))
    assert not body.get("errors"), body
    assert await org_fingerprint(db, ORG_B) == before
    load = await post(
        api.as_(token(None, "service")),
        ("query($id: ID!) { load(id: $id) { loadType } }", {"id": worlds[ORG_B].bare_load}),
    )
    assert load["data"]["load"]["loadType"] == "UNMAPPED"


# --- The subscription, over a real WebSocket ----------------------------------------------------------------


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    with running_server({"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0"}) as base:
        yield base


async def ws_subscribe(base: str, bearer: str, call: Call) -> dict[str, Any]:
    """connection_init with the token, one subscribe; the first message about it."""
    async with websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {bearer}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        query, variables = call
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
        while True:
            raw = await asyncio.wait_for(ws.recv(), 5)
            assert not leaks_in(str(raw)), raw
            message = json.loads(raw)
            if message.get("id") == "1":
                return dict(message)


@pytest.mark.slow
async def test_subscription_isolation_over_websocket(server: str, database_url: str) -> None:
    op = MATRIX["organizationStatsChanged"]
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        svc = Api(client, token(None, "service"))
        worlds = {org: await seed(svc, org) for org in (ORG_A, ORG_B)}
    db = Database(database_url)
    try:
        before = await state(db)
        for role in ("member", "admin"):
            bearer = token(ORG_A, role)
            for case in op.foreign:
                real = await ws_subscribe(server, bearer, case.build(worlds[ORG_A], aim_at(worlds[ORG_B])))
                unknown = await ws_subscribe(server, bearer, case.build(worlds[ORG_A], UNKNOWN_AIM))
                assert real["type"] == "error", real
                assert [e["extensions"]["code"] for e in real["payload"]] == ["FORBIDDEN"], real
                assert replace_ids(real, aim_at(worlds[ORG_B]).placeholders) == replace_ids(
                    unknown, UNKNOWN_AIM.placeholders
                )
            # Its own org: the current stats at once.
            own = await ws_subscribe(server, bearer, await op.happy(svc, worlds[ORG_A]))
            assert own["type"] == "next" and own["payload"]["data"]["organizationStatsChanged"]["orgId"] == ORG_A, own
        assert await state(db) == before
        # A service token subscribes to any org.
        for org in (ORG_B, ORG_A):
            event = await ws_subscribe(server, token(None, "service"), await op.happy(svc, worlds[org]))
            assert event["type"] == "next", event
            stats = event["payload"]["data"]["organizationStatsChanged"]
            _, version = await stored(db, org)
            assert stats["orgId"] == org and stats["version"] == version, stats
            assert stats["loads"]["total"] == 3 == await recount_loads(db, org), stats
    finally:
        await db.dispose()


async def recount_loads(db: Database, org: str) -> int:
    return int((await org_fingerprint(db, org))["loads"])
