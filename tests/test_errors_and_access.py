"""Refusals carry a domain.md code and change nothing; access rules; cursor pagination."""

from __future__ import annotations

import base64
import json
import re
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
    create_invoice,
    create_lane,
    create_load,
    dump_tables,
    import_shipment,
    recount,
    stored,
    token,
)

UPDATE_LOAD = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"
UPDATE_INVOICE = "mutation($id: ID!, $s: InvoiceStatus!) { updateInvoiceStatus(id: $id, status: $s) { id status } }"
DELETE_LOAD = "mutation($id: ID!) { deleteLoad(id: $id) { id } }"
DELETE_INVOICE = "mutation($id: ID!) { deleteInvoice(id: $id) { id } }"
BULK_UPDATE = (
    "mutation($ids: [ID!]!, $s: InvoiceStatus!) { bulkUpdateInvoiceStatus(ids: $ids, status: $s) "
    "{ updated unchanged } }"
)
BULK_VOID = "mutation($ids: [ID!]!, $r: String) { bulkVoidInvoices(ids: $ids, reason: $r) { updated unchanged } }"
CREATE_INVOICE = "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id } }"
CREATE_LOAD = "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }"
CREATE_LANE = "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }"
CREATE_ORG = "mutation($o: ID!, $n: String!) { createOrganization(orgId: $o, name: $n) { orgId name } }"
STATS = f"query($o: ID!) {{ organizationStats(orgId: $o) {{ {STATS_FIELDS} }} }}"
GET_LOAD = f"query($id: ID!) {{ load(id: $id) {{ {LOAD_FIELDS} }} }}"
GET_INVOICE = f"query($id: ID!) {{ invoice(id: $id) {{ {INVOICE_FIELDS} }} }}"
ORGS = "{ organizations { orgId name } }"
LOADS_PAGE = (
    "query($o: ID!, $s: LoadStatus, $t: LoadType, $f: Int, $a: String) "
    "{ loads(orgId: $o, status: $s, loadType: $t, first: $f, after: $a) "
    "{ nodes { id status loadType } pageInfo { hasNextPage endCursor } } }"
)
INVOICES_PAGE = (
    "query($o: ID!, $s: InvoiceStatus, $f: Int, $a: String) "
    "{ invoices(orgId: $o, status: $s, first: $f, after: $a) "
    "{ nodes { id status } pageInfo { hasNextPage endCursor } } }"
)
UNKNOWN = "987654"

LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|sqlalchemy|sqlite|asyncpg|psycopg|\bSELECT\b|\bINSERT\b|\bUPDATE\b|"
    r"\bDELETE\b|\bFROM\b|\bWHERE\b|IntegrityError|OperationalError|RuntimeError|KeyError|AssertionError"
)


def assert_no_leak(body: Any) -> None:
    text = json.dumps(body)
    assert not LEAKS.search(text), f"error response leaks internals: {text}"


async def refused(api: Api, query: str, code: str, **variables: Any) -> dict[str, Any]:
    """The call fails with `code` on its first error, and the response leaks nothing."""
    body = await api.raw(query, **variables)
    assert body.get("errors"), f"expected {code}, got {body}"
    assert_no_leak(body)
    error = body["errors"][0]
    assert error.get("extensions", {}).get("code") == code, error
    assert body.get("data") is None or all(v is None for v in body["data"].values()), body
    return error


@asynccontextmanager
async def unchanged(db: Database, *orgs: str) -> AsyncIterator[None]:
    """No row of any table, no counter and no version changes inside the block."""
    orgs = orgs or ("org_a", "org_b")
    tables = await dump_tables(db)
    stats = {org: await stored(db, org) for org in orgs}
    yield
    assert {org: await stored(db, org) for org in orgs} == stats
    assert await dump_tables(db) == tables
    for org in orgs:
        assert stats[org][0] == await recount(db, org)


def same_shape(message: str, id_: str, other: str, other_id: str) -> None:
    """Two messages are equal once each names its own id: a foreign id is reported like an unknown one."""
    assert message.replace(id_, "<id>") == other.replace(other_id, "<id>")


def illegal_pairs(table: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [(a, b) for a in table for b in table if b != a and b not in table[a]]


@pytest.fixture
def service(api: Api) -> Api:
    return api.as_(token(None, "service"))


@pytest.fixture
def member(api: Api) -> Api:
    return api.as_(token("org_a", "member"))


@pytest.fixture
async def org_b(service: Api) -> dict[str, str]:
    """org_b with one load and its invoice."""
    load = await create_load(service, org="org_b", status="ASSIGNED")
    invoice = await create_invoice(service, load["id"], "DRAFT")
    return {"load": load["id"], "invoice": invoice["id"]}


# --- Transitions ---------------------------------------------------------------------------------


async def test_illegal_load_transitions(api: Api, db: Database, subtests: pytest.Subtests) -> None:
    loads = {status: (await create_load(api, status=status))["id"] for status in LOAD_MOVES}
    for start, target in illegal_pairs(LOAD_MOVES):
        with subtests.test(f"{start} -> {target}"):
            async with unchanged(db):
                error = await refused(api, UPDATE_LOAD, "INVALID_TRANSITION", id=loads[start], s=target)
            assert "Load" in error["message"]
            assert start in error["message"] and target in error["message"]
            assert error["message"].index(start) < error["message"].index(target)


async def test_illegal_invoice_transitions(api: Api, db: Database, subtests: pytest.Subtests) -> None:
    invoices = {s: (await create_invoice(api, (await create_load(api))["id"], s))["id"] for s in INVOICE_MOVES}
    for start, target in illegal_pairs(INVOICE_MOVES):
        with subtests.test(f"{start} -> {target}"):
            async with unchanged(db):
                error = await refused(api, UPDATE_INVOICE, "INVALID_TRANSITION", id=invoices[start], s=target)
            assert "Invoice" in error["message"]
            assert start in error["message"] and target in error["message"]


async def test_wildcard_lane_never_demotes_a_contract_load(api: Api, db: Database) -> None:
    """Load types only move up: creating a wildcard lane never demotes a CONTRACT load."""
    await create_lane(api, "H1", "T1")
    load = (await import_shipment(api, {"shipmentId": "S1", "hcr": "H1", "tripNumber": "T1"}))["load"]
    before = await stored(db, "org_a")
    await create_lane(api, "H1", "*")
    assert await stored(db, "org_a") == before
    assert (await api.ok(GET_LOAD, id=load["id"]))["load"]["loadType"] == "CONTRACT"


# --- Bulk ----------------------------------------------------------------------------------------


async def invoices_of(api: Api, *statuses: str, org: str = "org_a") -> list[str]:
    ids = []
    for status in statuses:
        ids.append((await create_invoice(api, (await create_load(api, org=org))["id"], status))["id"])
    return ids


@pytest.mark.parametrize("unknown", [UNKNOWN, "abc", "-1", "99999999999999999999999", ""])
async def test_bulk_with_unknown_id_is_not_found(api: Api, db: Database, unknown: str) -> None:
    ids = await invoices_of(api, "DRAFT", "DRAFT")
    async with unchanged(db):
        error = await refused(api, BULK_UPDATE, "NOT_FOUND", ids=[ids[0], unknown, ids[1]], s="BILLED")
    assert error["extensions"]["ids"] == [unknown]
    async with unchanged(db):
        error = await refused(api, BULK_VOID, "NOT_FOUND", ids=[unknown, *ids], r="x")
    assert error["extensions"]["ids"] == [unknown]


async def test_bulk_lists_every_failing_id(api: Api, db: Database) -> None:
    ids = await invoices_of(api, "DRAFT")
    async with unchanged(db):
        error = await refused(api, BULK_UPDATE, "NOT_FOUND", ids=["111111", *ids, "222222"], s="BILLED")
    assert sorted(error["extensions"]["ids"]) == ["111111", "222222"]


async def test_bulk_with_foreign_id_is_reported_like_unknown(api: Api, db: Database, org_b: dict[str, str]) -> None:
    ids = await invoices_of(api, "DRAFT")
    async with unchanged(db):
        foreign = await refused(api, BULK_UPDATE, "NOT_FOUND", ids=[*ids, org_b["invoice"]], s="BILLED")
        unknown = await refused(api, BULK_UPDATE, "NOT_FOUND", ids=[*ids, UNKNOWN], s="BILLED")
    assert foreign["extensions"]["ids"] == [org_b["invoice"]]
    same_shape(foreign["message"], org_b["invoice"], unknown["message"], UNKNOWN)


async def test_bulk_with_illegal_transition(api: Api, db: Database) -> None:
    ok, void, paid = await invoices_of(api, "DRAFT", "VOID", "PAID")
    async with unchanged(db):
        error = await refused(api, BULK_UPDATE, "INVALID_TRANSITION", ids=[ok, void, paid], s="BILLED")
    assert sorted(error["extensions"]["ids"]) == sorted([void, paid])
    assert "nvoice" in error["message"] and "BILLED" in error["message"]
    assert "VOID" in error["message"] and "PAID" in error["message"]
    assert (await api.ok(GET_INVOICE, id=ok))["invoice"]["status"] == "DRAFT"


async def test_bulk_unknown_id_wins_over_illegal_transition(api: Api, db: Database) -> None:
    void = await invoices_of(api, "VOID")
    async with unchanged(db):
        error = await refused(api, BULK_UPDATE, "NOT_FOUND", ids=[*void, UNKNOWN], s="DRAFT")
    assert error["extensions"]["ids"] == [UNKNOWN]


async def test_empty_bulk_is_bad_input(api: Api, db: Database) -> None:
    await invoices_of(api, "DRAFT")
    async with unchanged(db):
        await refused(api, BULK_UPDATE, "BAD_USER_INPUT", ids=[], s="BILLED")
        await refused(api, BULK_VOID, "BAD_USER_INPUT", ids=[])


async def test_bulk_across_two_orgs_is_bad_input(service: Api, db: Database, org_b: dict[str, str]) -> None:
    mine = await invoices_of(service, "DRAFT")
    async with unchanged(db):
        error = await refused(service, BULK_UPDATE, "BAD_USER_INPUT", ids=[*mine, org_b["invoice"]], s="BILLED")
        await refused(service, BULK_VOID, "BAD_USER_INPUT", ids=[org_b["invoice"], *mine])
    assert set(error["extensions"].get("ids", [])) <= {*mine, org_b["invoice"]}


# --- Conflicts and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("trip", ["T1", "*"])
async def test_duplicate_lane_is_conflict(api: Api, db: Database, trip: str) -> None:
    await create_lane(api, "H1", trip)
    await create_load(api, loadType="UNMAPPED", hcr="H1", tripNumber="T1")
    async with unchanged(db):
        await refused(api, CREATE_LANE, "CONFLICT", i={"orgId": "org_a", "hcr": "H1", "tripNumber": trip})


async def test_same_lane_in_another_org_is_no_conflict(api: Api, service: Api) -> None:
    await create_lane(api, "H1", "T1")
    await create_lane(service, "H1", "T1", org="org_b")


async def test_second_invoice_on_a_load_is_conflict(api: Api, db: Database) -> None:
    load = await create_load(api)
    await create_invoice(api, load["id"], "VOID")
    async with unchanged(db):
        await refused(api, CREATE_INVOICE, "CONFLICT", i={"loadId": load["id"]})
        await refused(
            api,
            CREATE_INVOICE,
            "CONFLICT",
            i={"loadId": load["id"], "status": "MISSING_DATA", "missingDataReason": "r"},
        )


@pytest.mark.parametrize("reason", [None, "", "   "])
async def test_missing_data_invoice_needs_a_reason(api: Api, db: Database, reason: str | None) -> None:
    load = await create_load(api)
    async with unchanged(db):
        await refused(
            api,
            CREATE_INVOICE,
            "BAD_USER_INPUT",
            i={"loadId": load["id"], "status": "MISSING_DATA", "missingDataReason": reason},
        )


async def test_duplicate_customer_is_conflict(api: Api, db: Database) -> None:
    query = 'mutation { createCustomer(orgId: "org_a", name: "Acme") { id } }'
    await api.ok(query)
    async with unchanged(db):
        await refused(api, query, "CONFLICT")


@pytest.mark.parametrize(
    "fields",
    [
        {"loadNumber": "x" * 201},
        {"hcr": "x" * 201},
        {"customerId": UNKNOWN},
    ],
)
async def test_create_load_bad_input(api: Api, db: Database, fields: dict[str, Any]) -> None:
    code = "NOT_FOUND" if "customerId" in fields else "BAD_USER_INPUT"
    async with unchanged(db):
        await refused(api, CREATE_LOAD, code, i={"orgId": "org_a", **fields})


@pytest.mark.parametrize("lane", [{"hcr": "", "tripNumber": "T1"}, {"hcr": "H1", "tripNumber": " "}])
async def test_create_lane_blank_key_is_bad_input(api: Api, db: Database, lane: dict[str, str]) -> None:
    async with unchanged(db):
        await refused(api, CREATE_LANE, "BAD_USER_INPUT", i={"orgId": "org_a", **lane})


async def post(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """A raw POST that may answer 200 or 400, never 5xx."""
    response = await api.client.post("/graphql", json=body, headers={"Authorization": f"Bearer {api.bearer}"})
    assert response.status_code in (200, 400), response.text
    assert_no_leak(response.text)
    return response.json()


BAD_REQUESTS = {
    "unknown enum literal": {"query": 'mutation { updateLoadStatus(id: "1", status: SHIPPED) { id } }'},
    "unknown enum variable": {
        "query": 'mutation($s: LoadStatus!) { updateLoadStatus(id: "1", status: $s) { id } }',
        "variables": {"s": "SHIPPED"},
    },
    "unknown invoice enum variable": {
        "query": ('mutation($s: InvoiceStatus!) { bulkUpdateInvoiceStatus(ids: ["1"], status: $s) { updated } }'),
        "variables": {"s": "LOST"},
    },
    "enum filter as string": {"query": 'query { loads(orgId: "org_a", status: "OPEN") { nodes { id } } }'},
    "string for Int literal": {"query": 'query { loads(orgId: "org_a", first: "ten") { nodes { id } } }'},
    "string for Int variable": {
        "query": 'query($f: Int) { loads(orgId: "org_a", first: $f) { nodes { id } } }',
        "variables": {"f": "ten"},
    },
    "Int overflow": {
        "query": 'query($f: Int) { loads(orgId: "org_a", first: $f) { nodes { id } } }',
        "variables": {"f": 2**40},
    },
    "object for ID": {
        "query": 'mutation($s: ShipmentInput!) { importShipment(orgId: "org_a", shipment: $s) { outcome } }',
        "variables": {"s": {"shipmentId": {"a": 1}}},
    },
    "bad DateTime": {
        "query": 'mutation($s: ShipmentInput!) { importShipment(orgId: "org_a", shipment: $s) { outcome } }',
        "variables": {"s": {"shipmentId": "S1", "updatedAt": "yesterday"}},
    },
    "missing required input field": {"query": "mutation { createLoad(input: {}) { id } }"},
    "unknown field": {"query": "query { nope }"},
    "syntax error": {"query": 'query { loads(orgId: "org_a" { nodes { id } } }'},
}


async def test_malformed_request_is_bad_input(api: Api, db: Database, subtests: pytest.Subtests) -> None:
    await create_load(api)
    for name, request in BAD_REQUESTS.items():
        with subtests.test(name):
            async with unchanged(db):
                body = await post(api, request)
            assert body["errors"][0].get("extensions", {}).get("code") == "BAD_USER_INPUT", body


@pytest.mark.parametrize("first", [-1, 501])
async def test_page_size_out_of_range_is_bad_input(api: Api, first: int) -> None:
    await refused(api, LOADS_PAGE, "BAD_USER_INPUT", o="org_a", f=first)
    await refused(api, INVOICES_PAGE, "BAD_USER_INPUT", o="org_a", f=first)


async def test_unexpected_failure_is_internal_rolled_back_and_hidden(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the write flushed: INTERNAL with a request id, no internals, nothing kept."""
    from sqlalchemy.exc import OperationalError

    from db import loads

    load = await create_load(api)
    original = loads.set_load_status

    def failing(*args: Any, **kwargs: Any) -> Any:  # the database fails after the row was locked
        yield from original(*args, **kwargs)
        raise OperationalError("UPDATE loads SET status=? WHERE loads.id = ?", {}, Exception("disk I/O error"))

    monkeypatch.setattr(loads, "set_load_status", failing)
    async with unchanged(db):
        error = await refused(api, UPDATE_LOAD, "INTERNAL", id=load["id"], s="ASSIGNED")
    assert error["extensions"].get("requestId")
    assert error["extensions"]["requestId"] in error["message"]


# --- Authentication -----------------------------------------------------------------------------------


def bad_tokens() -> dict[str, str | None]:
    import jwt

    from settings import DEV_SECRET

    def forge(claims: dict[str, Any], secret: str = DEV_SECRET, alg: str = "HS256") -> str:
        return jwt.encode({"sub": "x", "exp": 4102444800, **claims}, secret, algorithm=alg)

    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "wrong secret": forge({"org_id": "org_a", "role": "admin"}, secret="another-secret-of-enough-length!"),
        "expired": token("org_a", "admin", ttl=-60),
        "no exp": jwt.encode({"sub": "x", "org_id": "org_a", "role": "admin"}, DEV_SECRET, algorithm="HS256"),
        "alg none": jwt.encode({"sub": "x", "org_id": "org_a", "role": "admin", "exp": 4102444800}, None, "none"),
        "unknown role": forge({"org_id": "org_a", "role": "owner"}),
        "member without org": forge({"role": "member"}),
    }


async def test_unauthenticated(api: Api, db: Database, subtests: pytest.Subtests) -> None:
    load = await create_load(api)
    for name, bearer in bad_tokens().items():
        with subtests.test(name):
            caller = api.as_(bearer)
            async with unchanged(db):
                await refused(caller, STATS, "UNAUTHENTICATED", o="org_a")
                await refused(caller, GET_LOAD, "UNAUTHENTICATED", id=load["id"])
                await refused(caller, UPDATE_LOAD, "UNAUTHENTICATED", id=load["id"], s="ASSIGNED")
                await refused(caller, CREATE_LOAD, "UNAUTHENTICATED", i={"orgId": "org_a"})
                await refused(caller, DELETE_LOAD, "UNAUTHENTICATED", id=load["id"])
                await refused(caller, ORGS, "UNAUTHENTICATED")


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Token " + "x", "bearer  "])
async def test_malformed_authorization_header(api: Api, header: str) -> None:
    response = await api.client.post(
        "/graphql",
        json={"query": 'query { organizationStats(orgId: "org_a") { version } }'},
        headers={"Authorization": header},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert_no_leak(body)


# --- Authorization -----------------------------------------------------------------------------------------


FOREIGN_ORG_CALLS = {
    "organizationStats": (STATS, {"o": "org_b"}),
    "countLoadsByStatus": ("query($o: ID!) { countLoadsByStatus(orgId: $o) { total } }", {"o": "org_b"}),
    "countInvoicesByStatus": (
        "query($o: ID!) { countInvoicesByStatus(orgId: $o) { total } }",
        {"o": "org_b"},
    ),
    "loads": (LOADS_PAGE, {"o": "org_b"}),
    "invoices": (INVOICES_PAGE, {"o": "org_b"}),
    "lanes": ("query($o: ID!) { lanes(orgId: $o) { id } }", {"o": "org_b"}),
    "createLoad": (CREATE_LOAD, {"i": {"orgId": "org_b"}}),
    "createCustomer": ('mutation($o: ID!) { createCustomer(orgId: $o, name: "C") { id } }', {"o": "org_b"}),
    "createLane": (CREATE_LANE, {"i": {"orgId": "org_b", "hcr": "H1", "tripNumber": "T1"}}),
    "importShipment": (
        'mutation($o: ID!) { importShipment(orgId: $o, shipment: {shipmentId: "S9"}) { outcome } }',
        {"o": "org_b"},
    ),
    "importShipments": (
        'mutation($o: ID!) { importShipments(orgId: $o, shipments: [{shipmentId: "S9"}]) { outcome } }',
        {"o": "org_b"},
    ),
    "promoteSpotLoads": (
        "mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }",
        {"o": "org_b"},
    ),
    "createOrganization": (CREATE_ORG, {"o": "org_b", "n": "B"}),
}


@pytest.mark.parametrize("role", ["member", "admin"])
async def test_another_orgs_id_is_forbidden(
    api: Api, db: Database, org_b: dict[str, str], role: str, subtests: pytest.Subtests
) -> None:
    caller = api.as_(token("org_a", role))
    for name, (query, variables) in FOREIGN_ORG_CALLS.items():
        with subtests.test(name):
            async with unchanged(db):
                await refused(caller, query, "FORBIDDEN", **variables)


async def test_forbidden_for_an_org_that_does_not_exist_yet(member: Api, db: Database) -> None:
    async with unchanged(db, "org_a", "org_new"):
        await refused(member, CREATE_LOAD, "FORBIDDEN", i={"orgId": "org_new"})
        await refused(member, STATS, "FORBIDDEN", o="org_new")


ROW_CALLS = {
    "updateLoadStatus": (UPDATE_LOAD, "load", {"s": "COMPLETED"}),
    "deleteLoad": (DELETE_LOAD, "load", {}),
    "updateInvoiceStatus": (UPDATE_INVOICE, "invoice", {"s": "BILLED"}),
    "deleteInvoice": (DELETE_INVOICE, "invoice", {}),
    "bulkUpdateInvoiceStatus": (
        "mutation($id: ID!) { bulkUpdateInvoiceStatus(ids: [$id], status: BILLED) { updated } }",
        "invoice",
        {},
    ),
    "bulkVoidInvoices": ("mutation($id: ID!) { bulkVoidInvoices(ids: [$id]) { updated } }", "invoice", {}),
    "createInvoice": ("mutation($id: ID!) { createInvoice(input: {loadId: $id}) { id } }", "load", {}),
}


@pytest.mark.parametrize("name", list(ROW_CALLS))
async def test_foreign_row_id_is_not_found_like_an_unknown_id(
    api: Api, member: Api, db: Database, org_b: dict[str, str], name: str
) -> None:
    query, kind, variables = ROW_CALLS[name]
    caller = api if name.startswith("delete") else member  # deletes are admin-only
    foreign = org_b[kind]
    async with unchanged(db):
        error = await refused(caller, query, "NOT_FOUND", id=foreign, **variables)
        unknown = await refused(caller, query, "NOT_FOUND", id=UNKNOWN, **variables)
    same_shape(error["message"], foreign, unknown["message"], UNKNOWN)
    assert error["extensions"].get("ids") in (None, [foreign])
    assert org_b["load"] and (await api.as_(token(None, "service")).ok(GET_LOAD, id=org_b["load"]))["load"]


async def test_foreign_load_and_invoice_read_as_null(member: Api, org_b: dict[str, str]) -> None:
    assert (await member.ok(GET_LOAD, id=org_b["load"]))["load"] is None
    assert (await member.ok(GET_INVOICE, id=org_b["invoice"]))["invoice"] is None
    assert (await member.ok(GET_LOAD, id=UNKNOWN))["load"] is None
    assert (await member.ok(GET_LOAD, id="not-an-id"))["load"] is None


async def test_foreign_customer_is_not_found(api: Api, service: Api, db: Database) -> None:
    customer = (await service.ok('mutation { createCustomer(orgId: "org_b", name: "B Co") { id } }'))["createCustomer"]
    async with unchanged(db):
        await refused(api, CREATE_LOAD, "NOT_FOUND", i={"orgId": "org_a", "customerId": customer["id"]})
        await refused(
            api,
            CREATE_LANE,
            "NOT_FOUND",
            i={"orgId": "org_a", "hcr": "H", "tripNumber": "T", "customerId": customer["id"]},
        )


@pytest.mark.parametrize(
    ("query", "kind"),
    [(DELETE_LOAD, "load"), (DELETE_INVOICE, "invoice"), (CREATE_ORG, None)],
)
async def test_member_may_not_delete_or_create_organizations(
    api: Api, member: Api, db: Database, query: str, kind: str | None
) -> None:
    load = await create_load(api)
    invoice = await create_invoice(api, load["id"])
    variables = {"id": {"load": load["id"], "invoice": invoice["id"]}[kind]} if kind else {"o": "org_a", "n": "A"}
    async with unchanged(db):
        await refused(member, query, "FORBIDDEN", **variables)


async def test_admin_creates_own_organization_idempotently(api: Api, db: Database) -> None:
    first = await api.ok(CREATE_ORG, o="org_a", n="Org A")
    assert first["createOrganization"]["name"] == "Org A"
    async with unchanged(db):
        again = await api.ok(CREATE_ORG, o="org_a", n="Renamed")
    assert again["createOrganization"]["name"] == "Org A"


async def test_organizations_needs_a_service_token(api: Api, member: Api, service: Api, db: Database) -> None:
    await api.ok(CREATE_ORG, o="org_a", n="Org A")
    await service.ok(CREATE_ORG, o="org_b", n="Org B")
    await refused(api, ORGS, "FORBIDDEN")
    await refused(member, ORGS, "FORBIDDEN")
    orgs = (await service.ok(ORGS))["organizations"]
    assert {o["orgId"]: o["name"] for o in orgs} == {"org_a": "Org A", "org_b": "Org B"}


async def test_service_token_acts_on_any_org(api: Api, service: Api, db: Database) -> None:
    mine = await create_load(api, status="ASSIGNED")
    theirs = await create_load(service, org="org_b")
    invoice = await create_invoice(service, theirs["id"], "DRAFT")
    await service.ok(UPDATE_LOAD, id=mine["id"], s="COMPLETED")
    await service.ok(UPDATE_INVOICE, id=invoice["id"], s="BILLED")
    await service.ok('mutation { createLane(input: {orgId: "org_b", hcr: "H", tripNumber: "*"}) { promotedLoads } }')
    for org in ("org_a", "org_b"):
        stats = (await service.ok(STATS, o=org))["organizationStats"]
        counts, version = await stored(db, org)
        assert stats["version"] == version and counts == await recount(db, org)
    assert (await service.ok(GET_LOAD, id=mine["id"]))["load"]["status"] == "COMPLETED"
    assert (await service.ok(LOADS_PAGE, o="org_b"))["loads"]["nodes"][0]["id"] == theirs["id"]
    await service.ok(DELETE_INVOICE, id=invoice["id"])
    await service.ok(DELETE_LOAD, id=theirs["id"])
    await service.ok(DELETE_LOAD, id=mine["id"])
    for org in ("org_a", "org_b"):
        counts, _ = await stored(db, org)
        assert counts == await recount(db, org) and not any(counts.values())


async def test_member_may_write_in_own_org(member: Api, db: Database) -> None:
    load = await create_load(member)
    await member.ok(UPDATE_LOAD, id=load["id"], s="ASSIGNED")
    await create_invoice(member, load["id"])
    counts, version = await stored(db, "org_a")
    assert version == 3 and counts == await recount(db, "org_a")


async def test_org_without_data_reads_zeros(member: Api) -> None:
    stats = (await member.ok(STATS, o="org_a"))["organizationStats"]
    assert stats["version"] == 0 and stats["loads"]["total"] == 0 and stats["invoices"]["total"] == 0


# --- Cursor pagination ----------------------------------------------------------------------------------


async def walk(api: Api, query: str, field: str, first: int, **variables: Any) -> list[list[dict[str, Any]]]:
    pages, after = [], None
    while True:
        page = (await api.ok(query, f=first, a=after, **variables))[field]
        pages.append(page["nodes"])
        info = page["pageInfo"]
        if not info["hasNextPage"]:
            assert len(page["nodes"]) <= first
            return pages
        assert len(page["nodes"]) == first and info["endCursor"]
        assert info["endCursor"] != after
        after = info["endCursor"]
        assert len(pages) < 50, "pagination does not end"


async def test_loads_pagination(api: Api, service: Api) -> None:
    statuses = ["OPEN", "ASSIGNED", "OPEN", "COMPLETED", "OPEN", "CANCELED", "OPEN", "ASSIGNED"]
    ids = [
        (await create_load(api, status=s, loadType="SPOT" if i % 2 else "UNMAPPED"))["id"]
        for i, s in enumerate(statuses)
    ]
    await create_load(service, org="org_b")

    for first in (1, 3, 4, 8, 50):
        nodes = [n for page in await walk(api, LOADS_PAGE, "loads", first, o="org_a") for n in page]
        assert [n["id"] for n in nodes] == ids  # every load once, in a stable order
    opens = [n for page in await walk(api, LOADS_PAGE, "loads", 2, o="org_a", s="OPEN") for n in page]
    assert [n["id"] for n in opens] == [i for i, s in zip(ids, statuses, strict=True) if s == "OPEN"]
    assert {n["status"] for n in opens} == {"OPEN"}
    spots = [n for page in await walk(api, LOADS_PAGE, "loads", 3, o="org_a", t="SPOT") for n in page]
    assert [n["id"] for n in spots] == ids[1::2]
    both = [n for page in await walk(api, LOADS_PAGE, "loads", 1, o="org_a", s="OPEN", t="UNMAPPED") for n in page]
    assert [n["id"] for n in both] == [ids[0], ids[2], ids[4], ids[6]]


async def test_loads_page_edges(api: Api) -> None:
    empty = (await api.ok(LOADS_PAGE, o="org_a"))["loads"]
    assert empty == {"nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}
    ids = [(await create_load(api))["id"] for _ in range(4)]
    page = (await api.ok(LOADS_PAGE, o="org_a", f=4))["loads"]
    assert [n["id"] for n in page["nodes"]] == ids and page["pageInfo"]["hasNextPage"] is False
    last = (await api.ok(LOADS_PAGE, o="org_a", f=2, a=page["pageInfo"]["endCursor"]))["loads"]
    assert last["nodes"] == [] and last["pageInfo"]["hasNextPage"] is False
    default = (await api.ok(LOADS_PAGE, o="org_a"))["loads"]
    assert [n["id"] for n in default["nodes"]] == ids


async def test_cursor_survives_deletion_of_its_row(api: Api) -> None:
    ids = [(await create_load(api))["id"] for _ in range(5)]
    page = (await api.ok(LOADS_PAGE, o="org_a", f=2))["loads"]
    await api.ok(DELETE_LOAD, id=page["nodes"][-1]["id"])
    await api.ok(DELETE_LOAD, id=ids[2])
    rest = (await api.ok(LOADS_PAGE, o="org_a", f=10, a=page["pageInfo"]["endCursor"]))["loads"]
    assert [n["id"] for n in rest["nodes"]] == ids[3:]


async def test_invoices_pagination(api: Api, service: Api) -> None:
    statuses = ["DRAFT", "BILLED", "DRAFT", "DRAFT", "VOID", "DRAFT", "BILLED", "DRAFT"]
    ids = []
    for status in statuses:
        ids.append((await create_invoice(api, (await create_load(api))["id"], status))["id"])
    await create_invoice(service, (await create_load(service, org="org_b"))["id"], "DRAFT")
    for first in (1, 3, 8):
        nodes = [n for page in await walk(api, INVOICES_PAGE, "invoices", first, o="org_a") for n in page]
        assert [n["id"] for n in nodes] == ids
    drafts = [n for page in await walk(api, INVOICES_PAGE, "invoices", 2, o="org_a", s="DRAFT") for n in page]
    assert [n["id"] for n in drafts] == [i for i, s in zip(ids, statuses, strict=True) if s == "DRAFT"]
    assert [len(p) for p in await walk(api, INVOICES_PAGE, "invoices", 2, o="org_a", s="DRAFT")] == [2, 2, 1]
    none = (await api.ok(INVOICES_PAGE, o="org_a", s="PAID"))["invoices"]
    assert none == {"nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


BAD_CURSORS = ["garbage!!", "", "====", b64("id:abc"), b64("x:5"), b64("id:-1"), b64("5"), "\u00e9\u00e9"]


async def test_bad_cursor_is_bad_input(api: Api, subtests: pytest.Subtests) -> None:
    await create_load(api)
    for cursor in BAD_CURSORS:
        with subtests.test(cursor):
            await refused(api, LOADS_PAGE, "BAD_USER_INPUT", o="org_a", a=cursor)
            await refused(api, INVOICES_PAGE, "BAD_USER_INPUT", o="org_a", a=cursor)


async def test_an_answer_orjson_refuses_is_written_by_the_standard_encoder(api: Api) -> None:
    """A lone surrogate, echoed from the request in an error message, is not valid UTF-8 for orjson:
    the answer is still a coded error (json.dumps escapes it), never a 500."""
    query = "mutation($i: ID!) { updateLoadStatus(id: $i, status: ASSIGNED) { id } }"
    request = json.dumps({"query": query, "variables": {"i": "\ud800"}})  # ASCII: the surrogate as an escape
    response = await api.client.post(
        "/graphql",
        content=request,
        headers={"Authorization": f"Bearer {api.bearer}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "NOT_FOUND" and "\ud800" in error["message"]
