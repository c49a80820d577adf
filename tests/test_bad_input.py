"""A corpus of bad input over HTTP: every request gets the right code, no 5xx, no internals.

Each corpus entry is one HTTP request with the outcome it must get: an error code
(`errors[].extensions.code`, HTTP 200), an HTTP status where the HTTP layer answers
before GraphQL (malformed or non-object JSON, batches, wrong content types: 400 with a
plain message; oversized bodies: 413 with code BAD_USER_INPUT), REJECTED for an invalid
shipment, or OK for the values just inside a limit. A refused request changes no row of
any table; after each group a recount of both orgs shows zero drift. No response body
carries a stack trace, SQL, a driver name or a source path, and the only INTERNAL error
allowed anywhere is none at all (an INTERNAL error would also have to carry a requestId).

The corpus runs in-process (ASGI) on SQLite and PostgreSQL; the HTTP-level groups also
run against a real uvicorn server, whose log must never show a bearer token or a traceback.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from graphql import get_introspection_query

from db.unit_of_work import Database
from settings import DEV_SECRET
from tests.helpers import Api, assert_exact, dump_tables, leaks_in, token
from tests.server import running_server

KB = 1024
MB = 1024 * KB


@dataclass(frozen=True)
class Req:
    """One request. `body`: a JSON document (its strings may name seeded ids as $LOAD_A,
    $INVOICE_B, ...) or raw bytes. `expect`: an error code, HTTP400, HTTP413, REJECTED or OK."""

    name: str
    expect: str
    body: Any
    bearer: str | None = "admin_a"
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    contains: str | None = None  # a text the first error message must contain

    def __str__(self) -> str:
        return self.name


def gql(query: str, **variables: Any) -> dict[str, Any]:
    return {"query": query, "variables": variables}


UPDATE_LOAD = "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }"
UPDATE_INVOICE = "mutation($id: ID!, $s: InvoiceStatus!) { updateInvoiceStatus(id: $id, status: $s) { id status } }"
BULK = "mutation($ids: [ID!]!, $s: InvoiceStatus!) { bulkUpdateInvoiceStatus(ids: $ids, status: $s) { updated unchanged stats { version } } }"
VOID = "mutation($ids: [ID!]!, $r: String) { bulkVoidInvoices(ids: $ids, reason: $r) { updated unchanged } }"
CREATE_LOAD = "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }"
CREATE_LANE = "mutation($i: CreateLaneInput!) { createLane(input: $i) { lane { id } promotedLoads } }"
CREATE_INVOICE = "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id } }"
CUSTOMER = "mutation($o: ID!, $n: String!) { createCustomer(orgId: $o, name: $n) { id } }"
ORGANIZATION = "mutation($o: ID!, $n: String!) { createOrganization(orgId: $o, name: $n) { orgId name } }"
IMPORT = (
    "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) { outcome error load { id } } }"
)
IMPORTS = "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) { outcome error } }"
LOADS = "query($o: ID!, $f: Int, $a: String) { loads(orgId: $o, first: $f, after: $a) { nodes { id } } }"
STATS = "query($o: ID!) { organizationStats(orgId: $o) { version loads { total } } }"
DELETE_LOAD = "mutation($id: ID!) { deleteLoad(id: $id) { id } }"
RECALC = "mutation($o: ID!) { recalculateOrgStats(orgId: $o) { orgId corrected { counter } stats { version } } }"

NUL = "a\x00b"
SURROGATE = "a\ud800b"


def nested(levels: int) -> str:
    """A query whose deepest field sits `levels` fields down (depth levels - 1, the root field at 0)."""
    names = ['load(id: "1")'] + ["invoice" if i % 2 == 0 else "load" for i in range(levels - 2)] + ["id"]
    return "{ " + " { ".join(names) + " }" * (len(names) - 1) + " }"


def id_list(n: int) -> str:
    """bulkVoidInvoices with n literal ids: a document of 13 + n tokens."""
    return "mutation { bulkVoidInvoices(ids: [" + ", ".join(f'"{i}"' for i in range(n)) + "]) { updated } }"


def aliases(n: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(n)) + " }"


def forge(
    claims: dict[str, Any], key: Any = DEV_SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None
) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the development secret is short for HS512
        return jwt.encode({"sub": "x", "exp": int(time.time()) + 3600, **claims}, key, algorithm=alg, headers=headers)


def rsa_token() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return forge({"org_id": "org_a", "role": "admin"}, key, "RS256", {"kid": "k1"})


BEARERS: dict[str, str | None] = {
    "admin_a": token("org_a", "admin"),
    "member_a": token("org_a", "member"),
    "service": token(None, "service"),
    "none": None,
    "garbage": "not-a-jwt",
    "three dots": "a.b.c",
    "empty segments": "..",
    "expired": token("org_a", "admin", ttl=-60),
    "wrong secret": forge({"org_id": "org_a", "role": "admin"}, "another-secret-that-is-long-enough!"),
    "alg none": jwt.encode({"sub": "x", "org_id": "org_a", "role": "service", "exp": 4102444800}, None, "none"),
    "alg none, signature kept": token(None, "service")
    .rsplit(".", 1)[0]
    .replace(
        token(None, "service").split(".")[0],
        jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode(),
    )
    + ".",
    "RS256 without JWKS": rsa_token(),
    "HS512": forge({"org_id": "org_a", "role": "admin"}, alg="HS512"),
    "no exp": jwt.encode({"sub": "x", "org_id": "org_a", "role": "admin"}, DEV_SECRET, "HS256"),
    "no sub": jwt.encode({"org_id": "org_a", "role": "admin", "exp": 4102444800}, DEV_SECRET, "HS256"),
    "exp as text": jwt.encode({"sub": "x", "org_id": "org_a", "role": "admin", "exp": "tomorrow"}, DEV_SECRET, "HS256"),
    "unknown role": forge({"org_id": "org_a", "role": "owner"}),
    "role list": forge({"org_id": "org_a", "role": ["admin"]}),
    "member without org": forge({"role": "member"}),
    "org_id not text": forge({"org_id": 5, "role": "admin"}),
    "payload not an object": jwt.api_jws.encode(b"[1, 2]", DEV_SECRET, algorithm="HS256"),
    "10 KB token": token("org_a", "admin") + "A" * (10 * KB),
}


def token_requests() -> list[Req]:
    refused = [name for name in BEARERS if name not in ("admin_a", "member_a", "service")]
    out = []
    for name in refused:
        out.append(Req(f"token {name}: query", "UNAUTHENTICATED", gql(STATS, o="org_a"), bearer=name))
        out.append(
            Req(f"token {name}: mutation", "UNAUTHENTICATED", gql(UPDATE_LOAD, id="$LOAD_A", s="CANCELED"), bearer=name)
        )
        out.append(
            Req(f"token {name}: service-only", "UNAUTHENTICATED", gql("{ organizations { orgId } }"), bearer=name)
        )
    schemes = {
        "Basic scheme": "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer without token": "Bearer",
        "Bearer, spaces and a dot": "Bearer    .",
        "token without scheme": BEARERS["admin_a"],
        "two tokens": f"Bearer {BEARERS['admin_a']} {BEARERS['admin_a']}",
    }
    for name, header in schemes.items():
        out.append(
            Req(
                f"header {name}",
                "UNAUTHENTICATED",
                gql(STATS, o="org_a"),
                bearer=None,
                headers={"Authorization": header},
            )
        )
    return out


GROUPS: dict[str, list[Req]] = {
    "enums": [
        Req(
            "unknown LoadStatus literal",
            "BAD_USER_INPUT",
            gql('mutation { updateLoadStatus(id: "1", status: SHIPPED) { id } }'),
        ),
        Req("unknown LoadStatus variable", "BAD_USER_INPUT", gql(UPDATE_LOAD, id="$LOAD_A", s="SHIPPED")),
        Req("lower-case LoadStatus", "BAD_USER_INPUT", gql(UPDATE_LOAD, id="$LOAD_A", s="completed")),
        Req("unknown InvoiceStatus variable", "BAD_USER_INPUT", gql(UPDATE_INVOICE, id="$INVOICE_A", s="LOST")),
        Req(
            "InvoiceStatus given as a LoadStatus", "BAD_USER_INPUT", gql(UPDATE_INVOICE, id="$INVOICE_A", s="CANCELED")
        ),
        Req("unknown LoadType", "BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": "org_a", "loadType": "FREIGHT"})),
        Req(
            "enum as a quoted literal",
            "BAD_USER_INPUT",
            gql('{ loads(orgId: "org_a", status: "OPEN") { nodes { id } } }'),
        ),
        Req("enum given a number", "BAD_USER_INPUT", gql(BULK, ids=["$INVOICE_A"], s=3)),
        Req("enum given null", "BAD_USER_INPUT", gql(BULK, ids=["$INVOICE_A"], s=None)),
        Req("enum given an empty string", "BAD_USER_INPUT", gql(CREATE_INVOICE, i={"loadId": "$BARE_A", "status": ""})),
        Req("enum given a list", "BAD_USER_INPUT", gql(UPDATE_LOAD, id="$LOAD_A", s=["OPEN"])),
    ],
    "types": [
        Req("text for Int", "BAD_USER_INPUT", gql(LOADS, o="org_a", f="ten")),
        Req("float for Int", "BAD_USER_INPUT", gql(LOADS, o="org_a", f=1.5)),
        Req("Int beyond 32 bits", "BAD_USER_INPUT", gql(LOADS, o="org_a", f=2**31)),
        Req("bool for Int", "BAD_USER_INPUT", gql(LOADS, o="org_a", f=True)),
        Req("object for ID", "BAD_USER_INPUT", gql(UPDATE_LOAD, id={"id": 1}, s="OPEN")),
        Req("list for ID", "BAD_USER_INPUT", gql(UPDATE_LOAD, id=["1"], s="OPEN")),
        Req("float for ID", "BAD_USER_INPUT", gql(UPDATE_LOAD, id=1.5, s="OPEN")),
        Req("null for ID!", "BAD_USER_INPUT", gql(UPDATE_LOAD, id=None, s="OPEN")),
        Req("number for String", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n=5)),
        Req(
            "text for Float",
            "BAD_USER_INPUT",
            gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "H", "tripNumber": "T", "rate": "cheap"}),
        ),
        Req(
            "Float beyond double",
            "BAD_USER_INPUT",
            {
                "raw": b'{"query": "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }", "variables": {"i": {"orgId": "org_a", "hcr": "H", "tripNumber": "T", "rate": 1e400}}}'
            },
        ),
        Req(
            "NaN for Float",
            "HTTP400|BAD_USER_INPUT",
            {
                "raw": b'{"query": "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }", "variables": {"i": {"orgId": "org_a", "hcr": "H", "tripNumber": "T", "rate": NaN}}}'
            },
        ),
        Req("bad DateTime", "BAD_USER_INPUT", gql(IMPORT, o="org_a", s={"shipmentId": "S1", "updatedAt": "yesterday"})),
        Req(
            "DateTime as a number",
            "BAD_USER_INPUT",
            gql(IMPORT, o="org_a", s={"shipmentId": "S1", "updatedAt": 1700000000}),
        ),
        Req(
            "DateTime month 13",
            "BAD_USER_INPUT",
            gql(IMPORT, o="org_a", s={"shipmentId": "S1", "updatedAt": "2024-13-01T00:00:00Z"}),
        ),
        Req("unknown input field", "BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": "org_a", "colour": "red"})),
        Req("missing required input field", "BAD_USER_INPUT", gql("mutation { createLoad(input: {}) { id } }")),
        Req("missing required argument", "BAD_USER_INPUT", gql("mutation { updateLoadStatus(status: OPEN) { id } }")),
        Req("missing variable", "BAD_USER_INPUT", gql(UPDATE_LOAD, s="OPEN")),
        Req(
            "undeclared variable",
            "BAD_USER_INPUT",
            gql("mutation { updateLoadStatus(id: $id, status: OPEN) { id } }", id="1"),
        ),
        Req(
            "stop sequence not an Int",
            "BAD_USER_INPUT",
            gql(IMPORT, o="org_a", s={"shipmentId": "S1", "stops": [{"sequence": "1", "stopType": "P"}]}),
        ),
        Req("unknown field", "BAD_USER_INPUT", gql("{ nope }")),
        Req("syntax error", "BAD_USER_INPUT", gql('{ loads(orgId: "org_a" { nodes { id } } }')),
        Req("blank document", "BAD_USER_INPUT", gql("   ")),
        Req("query as a number", "HTTP400", {"query": 5}),
        Req("variables as a list", "HTTP400", {"query": STATS, "variables": ["org_a"]}),
    ],
    "ids": [
        Req("unknown load", "NOT_FOUND", gql(UPDATE_LOAD, id="987654", s="CANCELED")),
        Req("malformed load id", "NOT_FOUND", gql(UPDATE_LOAD, id="abc", s="CANCELED")),
        Req("negative id", "NOT_FOUND", gql(UPDATE_LOAD, id="-1", s="CANCELED")),
        Req("id beyond 64 bits", "NOT_FOUND", gql(UPDATE_LOAD, id="9" * 30, s="CANCELED")),
        Req("non-ASCII digits", "NOT_FOUND", gql(UPDATE_LOAD, id="\u0661\u0662", s="CANCELED")),
        Req("empty id", "NOT_FOUND", gql(UPDATE_LOAD, id="", s="CANCELED")),
        Req("id as a number", "NOT_FOUND", gql(DELETE_LOAD, id=987654)),
        Req("another org's load", "NOT_FOUND", gql(UPDATE_LOAD, id="$LOAD_B", s="CANCELED")),
        Req("another org's load, deleted", "NOT_FOUND", gql(DELETE_LOAD, id="$LOAD_B")),
        Req("another org's invoice", "NOT_FOUND", gql(UPDATE_INVOICE, id="$INVOICE_B", s="VOID")),
        Req("another org's load for an invoice", "NOT_FOUND", gql(CREATE_INVOICE, i={"loadId": "$BARE_B"})),
        Req("another org's customer", "NOT_FOUND", gql(CREATE_LOAD, i={"orgId": "org_a", "customerId": "$CUSTOMER_B"})),
        Req(
            "another org's customer for a lane",
            "NOT_FOUND",
            gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "HX", "tripNumber": "T", "customerId": "$CUSTOMER_B"}),
        ),
        Req("another orgId", "FORBIDDEN", gql(CREATE_LOAD, i={"orgId": "org_b"})),
        Req("bulk with another org's invoice", "NOT_FOUND", gql(BULK, ids=["$INVOICE_A", "$INVOICE_B"], s="BILLED")),
        Req("bulk, unknown and illegal", "NOT_FOUND", gql(BULK, ids=["$VOID_A", "987654"], s="DRAFT")),
        Req("bulk, empty", "BAD_USER_INPUT", gql(BULK, ids=[], s="BILLED")),
        Req("void, empty", "BAD_USER_INPUT", gql(VOID, ids=[])),
        Req(
            "bulk of two orgs (service)",
            "BAD_USER_INPUT",
            gql(BULK, ids=["$INVOICE_A", "$INVOICE_B"], s="BILLED"),
            bearer="service",
        ),
        Req("bulk over 1000 ids", "BAD_USER_INPUT", gql(VOID, ids=[str(i) for i in range(1001)])),
        Req("bulk, duplicate illegal ids", "INVALID_TRANSITION", gql(BULK, ids=["$VOID_A", "$VOID_A"], s="BILLED")),
        Req("bulk, duplicate ids", "OK", gql(BULK, ids=["$INVOICE_A", "$INVOICE_A"], s="BILLED")),
        Req("second invoice for a load", "CONFLICT", gql(CREATE_INVOICE, i={"loadId": "$LOAD_A"})),
        Req("duplicate lane", "CONFLICT", gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "H1", "tripNumber": "T1"})),
        Req("duplicate customer", "CONFLICT", gql(CUSTOMER, o="org_a", n="Acme")),
        Req("illegal transition", "INVALID_TRANSITION", gql(UPDATE_INVOICE, id="$VOID_A", s="DRAFT")),
        Req(
            "batch repeating one shipment",
            "OK",
            gql(IMPORTS, o="org_a", s=[{"shipmentId": "DUP"}, {"shipmentId": "DUP"}]),
        ),
    ],
    "strings": [
        Req("empty customer name", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n="")),
        Req("blank customer name", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n=" \t\n")),
        Req("10 KB customer name", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n="x" * (10 * KB))),
        Req("201 character name", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n="x" * 201)),
        Req("200 emoji name", "OK", gql(CUSTOMER, o="org_a", n="\U0001f69a" * 200)),
        Req("right-to-left and combining name", "OK", gql(CUSTOMER, o="org_a", n="\u202eAcme\u0301 \u4e2d\u6587")),
        Req("name with NUL", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n=NUL)),
        Req("name with a lone surrogate", "BAD_USER_INPUT", gql(CUSTOMER, o="org_a", n=SURROGATE)),
        Req("empty organization name", "BAD_USER_INPUT", gql(ORGANIZATION, o="org_a", n="")),
        Req("10 KB organization name", "BAD_USER_INPUT", gql(ORGANIZATION, o="org_a", n="y" * (10 * KB))),
        Req("empty orgId", "FORBIDDEN|BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": ""})),
        Req("empty orgId (service)", "BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": ""}), bearer="service"),
        Req("10 KB orgId (service)", "BAD_USER_INPUT", gql(CUSTOMER, o="o" * (10 * KB), n="C"), bearer="service"),
        Req("orgId with NUL (service)", "BAD_USER_INPUT", gql(CUSTOMER, o=NUL, n="C"), bearer="service"),
        Req("orgId with NUL, read (service)", "BAD_USER_INPUT", gql(STATS, o=NUL), bearer="service"),
        Req("orgId with a surrogate, read (service)", "BAD_USER_INPUT", gql(LOADS, o=SURROGATE), bearer="service"),
        Req("empty hcr", "BAD_USER_INPUT", gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "", "tripNumber": "T"})),
        Req(
            "10 KB hcr",
            "BAD_USER_INPUT",
            gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "h" * (10 * KB), "tripNumber": "T"}),
        ),
        Req("hcr with NUL", "BAD_USER_INPUT", gql(CREATE_LANE, i={"orgId": "org_a", "hcr": NUL, "tripNumber": "T"})),
        Req(
            "60 character rateType",
            "BAD_USER_INPUT",
            gql(CREATE_LANE, i={"orgId": "org_a", "hcr": "HR", "tripNumber": "T", "rateType": "r" * 60}),
        ),
        Req(
            "10 KB loadNumber", "BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": "org_a", "loadNumber": "n" * (10 * KB)})
        ),
        Req("loadNumber with NUL", "BAD_USER_INPUT", gql(CREATE_LOAD, i={"orgId": "org_a", "loadNumber": NUL})),
        Req(
            "10 KB missingDataReason",
            "BAD_USER_INPUT",
            gql(
                CREATE_INVOICE, i={"loadId": "$BARE_A", "status": "MISSING_DATA", "missingDataReason": "r" * (10 * KB)}
            ),
        ),
        Req(
            "blank missingDataReason",
            "BAD_USER_INPUT",
            gql(CREATE_INVOICE, i={"loadId": "$BARE_A", "status": "MISSING_DATA", "missingDataReason": "  "}),
        ),
        Req("10 KB void reason", "BAD_USER_INPUT", gql(VOID, ids=["$INVOICE_A"], r="v" * (10 * KB))),
        Req("void reason with a surrogate", "BAD_USER_INPUT", gql(VOID, ids=["$INVOICE_A"], r=SURROGATE)),
        Req("empty shipmentId", "REJECTED", gql(IMPORT, o="org_a", s={"shipmentId": ""})),
        Req("10 KB shipmentId", "REJECTED", gql(IMPORT, o="org_a", s={"shipmentId": "s" * (10 * KB)})),
        Req("shipmentId with NUL", "REJECTED", gql(IMPORT, o="org_a", s={"shipmentId": NUL})),
        Req(
            "shipper with a surrogate",
            "REJECTED",
            gql(IMPORT, o="org_a", s={"shipmentId": "S-sur", "shipperName": SURROGATE}),
        ),
        Req(
            "10 KB stop city",
            "REJECTED",
            gql(
                IMPORT,
                o="org_a",
                s={"shipmentId": "S-city", "stops": [{"sequence": 1, "stopType": "P", "city": "c" * (10 * KB)}]},
            ),
        ),
        Req(
            "51 stops",
            "REJECTED",
            gql(
                IMPORT,
                o="org_a",
                s={"shipmentId": "S-51", "stops": [{"sequence": i, "stopType": "P"} for i in range(51)]},
            ),
        ),
        Req(
            "two stops, one sequence",
            "REJECTED",
            gql(
                IMPORT,
                o="org_a",
                s={
                    "shipmentId": "S-seq",
                    "stops": [{"sequence": 1, "stopType": "P"}, {"sequence": 1, "stopType": "D"}],
                },
            ),
        ),
        Req(
            "updatedAt at the start of time",
            "REJECTED|OK",
            gql(IMPORT, o="org_a", s={"shipmentId": "S-min", "updatedAt": "0001-01-01T00:00:00+14:00"}),
        ),
        Req(
            "updatedAt at the end of time",
            "REJECTED|OK",
            gql(IMPORT, o="org_a", s={"shipmentId": "S-max", "updatedAt": "9999-12-31T23:59:59-14:00"}),
        ),
        Req(
            "batch of 1001 shipments",
            "BAD_USER_INPUT",
            gql(IMPORTS, o="org_a", s=[{"shipmentId": f"B{i}"} for i in range(1001)]),
        ),
        Req("bad cursor", "BAD_USER_INPUT", gql(LOADS, o="org_a", a="not a cursor")),
        Req("cursor with a surrogate", "BAD_USER_INPUT", gql(LOADS, o="org_a", a=SURROGATE)),
        Req("page of 501", "BAD_USER_INPUT", gql(LOADS, o="org_a", f=501)),
        Req("page of -1", "BAD_USER_INPUT", gql(LOADS, o="org_a", f=-1)),
        Req("recalculate an org that has no data yet", "OK", gql(RECALC, o="org_new"), bearer="admin_new"),
        Req("recalculate an unknown org (service)", "OK", gql(RECALC, o="org_unknown"), bearer="service"),
        Req("recalculate an empty orgId (service)", "BAD_USER_INPUT", gql(RECALC, o=""), bearer="service"),
    ],
    "limits": [
        Req("depth 12", "OK", gql(nested(13))),
        Req("depth 13", "BAD_USER_INPUT", gql(nested(14)), contains="depth"),
        Req("depth 40", "BAD_USER_INPUT", gql(nested(41)), contains="depth"),
        Req("30 aliases", "OK", gql(aliases(30))),
        Req("31 aliases", "BAD_USER_INPUT", gql(aliases(31)), contains="aliases"),
        Req("600 aliases", "BAD_USER_INPUT", gql(aliases(600)), contains="aliases"),
        Req("2000 tokens", "BAD_USER_INPUT", gql(id_list(1987)), contains="1000 ids"),
        Req("2001 tokens", "BAD_USER_INPUT", gql(id_list(1988)), contains="tokens"),
        Req(
            "list literal nested 900 deep",
            "BAD_USER_INPUT",
            gql("mutation { bulkVoidInvoices(ids: " + "[" * 900 + '"1"' + "]" * 900 + ") { updated } }"),
        ),
        Req(
            "object literal nested 600 deep",
            "BAD_USER_INPUT",
            gql("mutation { createLoad(input: " + "{orgId: " * 600 + '"x"' + "}" * 600 + ") { id } }"),
        ),
        Req("list variable nested", "BAD_USER_INPUT", gql(VOID, ids=[[[["1"]]]])),
        Req(
            "JSON nested 100,000 deep",
            "HTTP400|BAD_USER_INPUT",
            {"raw": b'{"query": "{ __typename }", "variables": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"},
        ),
        Req("introspection", "OK", gql(get_introspection_query(descriptions=True))),
        Req(
            "introspection, types nested deep",
            "BAD_USER_INPUT",
            gql(
                "{ __schema { types { fields { type { fields { type { fields { type { fields { type { name } } } } } } } } } } }"
            ),
        ),
        Req(
            "introspection, 31 aliased schemas",
            "BAD_USER_INPUT",
            gql("{ " + " ".join(f"s{i}: __schema {{ types {{ name }} }}" for i in range(31)) + " }"),
        ),
        Req(
            "introspection, ofType chain (bounded by the token limit)",
            "OK|BAD_USER_INPUT",
            gql('{ __type(name: "Load") { fields { type ' + "{ ofType " * 12 + "{ name }" + " }" * 12 + " } } }"),
        ),
        Req(
            "fragment cycle",
            "BAD_USER_INPUT",
            gql("query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
        ),
        Req(
            "fragment chain of 300",
            "BAD_USER_INPUT",
            gql(
                "query { ...F0 } "
                + " ".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(300))
                + " fragment F300 on Query { __typename }"
            ),
        ),
        Req("400 directives", "BAD_USER_INPUT", gql("{ __typename " + "@skip(if: false) " * 400 + "}")),
        Req("1000 repeated fields", "OK|BAD_USER_INPUT", gql("{" + " __typename" * 1000 + " }")),
        Req("900 KB of whitespace", "OK", gql("{ __typename" + " " * (900 * KB) + "}")),
    ],
    "http": [
        Req("malformed JSON", "HTTP400", {"raw": b'{"query": '}),
        Req("JSON string", "HTTP400", {"raw": b'"{ __typename }"'}),
        Req("JSON null", "HTTP400", {"raw": b"null"}),
        Req("JSON number", "HTTP400", {"raw": b"42"}),
        Req("JSON true", "HTTP400", {"raw": b"true"}),
        Req("not UTF-8", "HTTP400", {"raw": b'{"query": "\xff\xfe"}'}),
        Req("UTF-16 (json.loads accepts it)", "HTTP400|OK", {"raw": '{"query": "{ __typename }"}'.encode("utf-16")}),
        Req("empty body", "HTTP400", {"raw": b""}),
        Req("batched queries", "HTTP400", {"raw": json.dumps([gql(STATS, o="org_a"), gql(STATS, o="org_b")]).encode()}),
        Req("batched mutations", "HTTP400", {"raw": json.dumps([gql(UPDATE_LOAD, id="1", s="CANCELED")] * 3).encode()}),
        Req("empty batch", "HTTP400", {"raw": b"[]"}),
        Req("no query", "HTTP400", {"raw": b"{}"}),
        Req(
            "only a persisted-query hash",
            "HTTP400",
            {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}},
        ),
        Req("extensions not an object", "HTTP400", {"query": STATS, "extensions": "x"}),
        Req("unknown operationName", "HTTP400", {"query": "query A { __typename }", "operationName": "B"}),
        Req(
            "text/plain body",
            "HTTP400",
            {"raw": b'{"query": "{ __typename }"}'},
            headers={"content-type": "text/plain"},
        ),
        Req(
            "form body",
            "HTTP400",
            {"raw": b"query=%7B__typename%7D"},
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        Req(
            "mutation over GET",
            "HTTP400|HTTP405",
            {"params": {"query": 'mutation { createCustomer(orgId: "org_a", name: "G") { id } }'}},
            method="GET",
        ),
        Req(
            "subscription over POST",
            "HTTP400|BAD_USER_INPUT",
            gql('subscription { organizationStatsChanged(orgId: "org_a") { version } }'),
        ),
        Req(
            "subscription of another org over POST",
            "HTTP400|BAD_USER_INPUT|FORBIDDEN",
            gql('subscription { organizationStatsChanged(orgId: "org_b") { version } }'),
        ),
        Req("PUT", "HTTP405", gql(STATS, o="org_a"), method="PUT"),
        Req("2 MB body", "HTTP413", gql(CUSTOMER, o="org_a", n="z" * (2 * MB))),
        Req(
            "2 MB body, streamed without a length",
            "HTTP413",
            {"stream": json.dumps(gql(CUSTOMER, o="org_a", n="z" * (2 * MB))).encode()},
        ),
    ],
    "tokens": token_requests(),
}

HTTP_GROUPS = ("http", "tokens")


# --- Running the corpus ------------------------------------------------------------------------------


async def seed(svc: Api) -> dict[str, str]:
    ids: dict[str, str] = {}
    for suffix, org in (("A", "org_a"), ("B", "org_b")):
        await svc.ok(ORGANIZATION, o=org, n=org)
        ids[f"CUSTOMER_{suffix}"] = (await svc.ok(CUSTOMER, o=org, n="Acme"))["createCustomer"]["id"]
        await svc.ok(
            CREATE_LANE, i={"orgId": org, "hcr": "H1", "tripNumber": "T1", "customerId": ids[f"CUSTOMER_{suffix}"]}
        )
        ids[f"LOAD_{suffix}"] = (await svc.ok(CREATE_LOAD, i={"orgId": org, "status": "ASSIGNED"}))["createLoad"]["id"]
        ids[f"INVOICE_{suffix}"] = (await svc.ok(CREATE_INVOICE, i={"loadId": ids[f"LOAD_{suffix}"]}))["createInvoice"][
            "id"
        ]
        ids[f"BARE_{suffix}"] = (await svc.ok(CREATE_LOAD, i={"orgId": org}))["createLoad"]["id"]
        void_load = (await svc.ok(CREATE_LOAD, i={"orgId": org}))["createLoad"]["id"]
        ids[f"VOID_{suffix}"] = (await svc.ok(CREATE_INVOICE, i={"loadId": void_load, "status": "VOID"}))[
            "createInvoice"
        ]["id"]
    return ids


def substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("$") and value[1:] in ids:
        return ids[value[1:]]
    if isinstance(value, list):
        return [substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, ids) for k, v in value.items()}
    return value


def bearer_of(req: Req) -> str | None:
    if req.bearer == "admin_new":
        return token("org_new", "admin")
    return BEARERS[req.bearer] if req.bearer is not None else None


async def send(client: httpx.AsyncClient, req: Req, ids: dict[str, str]) -> httpx.Response:
    headers = dict(req.headers)
    bearer = bearer_of(req)
    if bearer is not None:
        headers.setdefault("Authorization", f"Bearer {bearer}")
    body = substitute(req.body, ids)
    if req.method == "GET":
        return await client.get("/graphql", params=body["params"], headers={**headers, "accept": "application/json"})
    if "raw" in body:
        content = body["raw"]
    elif "stream" in body:
        data = body["stream"]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 64 * KB):
                yield data[start : start + 64 * KB]

        headers.setdefault("content-type", "application/json")
        return await client.request(req.method, "/graphql", content=chunks(), headers=headers)
    else:
        # ASCII-escaped JSON: lone surrogates travel as \ud800, as any JSON client may send them.
        content = json.dumps(body).encode()
    headers.setdefault("content-type", "application/json")
    return await client.request(req.method, "/graphql", content=content, headers=headers)


def verdict(req: Req, response: httpx.Response) -> str | None:
    """What is wrong with this response to this request, if anything."""
    text = response.text
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {text[:300]}"
    if leaks := leaks_in(text):
        return f"leaks {leaks}: {text[:300]}"
    expected = req.expect.split("|")
    if response.status_code != 200:
        if f"HTTP{response.status_code}" not in expected:
            return f"HTTP {response.status_code} ({text[:200]!r}), expected {req.expect}"
        if response.status_code == 413:
            body = response.json()
            if [e["extensions"]["code"] for e in body["errors"]] != ["BAD_USER_INPUT"]:
                return f"413 without BAD_USER_INPUT: {text[:200]}"
        elif not text.strip() or "<html" in text.lower():
            return f"HTTP {response.status_code} without a clear message: {text[:200]!r}"
        return None
    try:
        body = response.json()
    except ValueError:
        return f"200 but not JSON: {text[:200]!r}"
    errors = body.get("errors") or []
    codes = [e.get("extensions", {}).get("code") for e in errors]
    for error, code in zip(errors, codes, strict=True):
        if code == "INTERNAL" and not error["extensions"].get("requestId"):
            return f"INTERNAL without a requestId: {error}"
    if "INTERNAL" in codes:
        return f"INTERNAL: {errors}"
    if None in codes:
        return f"an error without a code: {errors}"
    data = body.get("data") or {}
    outcomes = [v.get("outcome") for v in data.values() if isinstance(v, dict)]
    if "REJECTED" in expected and outcomes == ["REJECTED"] and not errors:
        return None
    if "OK" in expected and not errors:
        return None
    wanted = [e for e in expected if e not in ("OK", "REJECTED") and not e.startswith("HTTP")]
    if not errors:
        return f"no error (data {str(data)[:200]}), expected {req.expect}"
    if len(set(codes)) != 1 or codes[0] not in wanted:
        return f"codes {codes}, expected {req.expect}: {errors}"
    if any(v is not None for v in data.values()):
        return f"a refusal with data: {body}"
    if req.contains and req.contains not in errors[0]["message"]:
        return f"message {errors[0]['message']!r} lacks {req.contains!r}"
    return None


def changes_allowed(req: Req) -> bool:
    return "OK" in req.expect.split("|")


async def run_group(client: httpx.AsyncClient, db: Database, group: str, ids: dict[str, str]) -> list[str]:
    failures = []
    for req in GROUPS[group]:
        before = await dump_tables(db)
        try:
            response = await send(client, req, ids)
        except Exception as error:  # in-process, an unhandled exception is what a server answers with 500
            failures.append(f"{req}: raised {error!r} (a 500)")
            continue
        if problem := verdict(req, response):
            failures.append(f"{req}: {problem}")
        elif not changes_allowed(req) and await dump_tables(db) != before:
            failures.append(f"{req}: refused, yet it changed rows")
    for org in ("org_a", "org_b", "org_new"):
        await assert_exact(db, org)
    return failures


@pytest.mark.parametrize("group", list(GROUPS))
async def test_bad_input_corpus(api: Api, db: Database, group: str) -> None:
    ids = await seed(api.as_(BEARERS["service"]))
    failures = await run_group(api.client, db, group, ids)
    assert not failures, f"{len(failures)} of {len(GROUPS[group])} requests went wrong:\n" + "\n".join(failures)


def test_every_group_is_non_trivial() -> None:
    assert sum(len(reqs) for reqs in GROUPS.values()) >= 150
    assert all(len(reqs) >= 10 for reqs in GROUPS.values())


# --- The HTTP layer of a real server ----------------------------------------------------------------


@pytest.mark.slow
async def test_http_layer_of_a_real_server(database_url: str) -> None:
    """The HTTP and token groups against uvicorn (status codes as a client sees them); once the
    server stopped and flushed its output, its log shows no bearer token and no traceback."""
    db = Database(database_url)
    failures: list[str] = []
    env = {"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0"}
    try:
        with running_server(env) as server:
            async with httpx.AsyncClient(base_url=server, timeout=30) as client:
                ids = await seed(Api(client, BEARERS["service"]))
                for group in HTTP_GROUPS:
                    failures += await run_group(client, db, group, ids)
                # A huge header: refused by the HTTP server itself, never a 5xx.
                huge = await client.post(
                    "/graphql", json=gql(STATS, o="org_a"), headers={"Authorization": "Bearer " + "A" * (100 * KB)}
                )
                if huge.status_code >= 500 or leaks_in(huge.text):
                    failures.append(f"100 KB Authorization header: HTTP {huge.status_code} {huge.text[:200]}")
    finally:
        await db.dispose()
    assert not failures, "\n".join(failures)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    for name, bearer in BEARERS.items():
        if bearer and len(bearer) > 20:
            signature = bearer.rsplit(".", 1)[-1]
            assert bearer not in log, f"the server log shows the {name} token"
            assert len(signature) < 20 or signature not in log, f"the server log shows the {name} signature"


async def test_a_failed_recalculation_run_records_no_internals(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """recalculationRuns shows every admin each run's error: never the SQL of an internal one."""
    from sqlalchemy.exc import OperationalError

    from db import recalculation

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT loads.id FROM loads WHERE loads.org_id = ?", {}, Exception("disk I/O error"))

    monkeypatch.setattr(recalculation, "recalculate_org", failing)
    body = await api.raw(RECALC, o="org_a")
    assert [e["extensions"]["code"] for e in body["errors"]] == ["INTERNAL"], body
    assert body["errors"][0]["extensions"]["requestId"]
    runs = (await api.ok("{ recalculationRuns { trigger error finishedAt } }"))["recalculationRuns"]
    assert runs and runs[0]["error"] and runs[0]["finishedAt"], runs
    assert not leaks_in(json.dumps(runs)) and "disk I/O" not in runs[0]["error"], runs
