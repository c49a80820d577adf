"""Fuzzing every mutation against a real server (uvicorn in a subprocess).

Hypothesis draws, one request at a time, a caller (members and admins of two orgs, a
service token, now and then a bad token), a mutation of the schema and schema-valid
arguments for it: strings of every kind (unicode, empty, blank, NUL, lone surrogates,
200/201 characters, 10 KB), ids from a pool of real ones (of every org, deleted ones too)
or ids that name nothing, every enum value, dates at the edges of time, floats of any
size. Requests are sent sequentially, so each is attributable:

- no 5xx, no INTERNAL error, no response showing a traceback, SQL, a driver or a path;
- a refused request (any error) changed nothing: the organization_stats rows (counters,
  version, timestamps) and the load/invoice/lane/customer counts of every org are the
  same before and after it;
- at the end, every org's stored counters and money values equal a recount of its rows (zero
  drift), and
  the server's log never shows a bearer token used in the run.

2,000 requests per backend (TALLY_FUZZ_REQUESTS sets another number for both). On a
2-core machine each run takes about 35 s on SQLite and on PostgreSQL (measured with other
test suites running; about 2 minutes when the machine was fully loaded): a request costs
a few milliseconds of Hypothesis, the HTTP round trip, and one ~2 ms snapshot of the stats
rows and row counts. The run is derandomized: a failure reproduces with the same draws.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import graphql
import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, literal, select, union, union_all

from api.root import schema as served_schema
from db.models import Customer, Invoice, Lane, Load, Organization, OrganizationStats
from db.unit_of_work import Database
from tests.helpers import leaks_in, money_recount, money_rows, money_totals, recount, stored, token
from tests.server import ROOT, ServerUrl, running_server

# Per backend; TALLY_FUZZ_REQUESTS sets the number for both (e.g. 500 on a crowded machine).
REQUESTS = {"sqlite": 2000, "postgresql": 2000}
if "TALLY_FUZZ_REQUESTS" in os.environ:
    REQUESTS = dict.fromkeys(REQUESTS, int(os.environ["TALLY_FUZZ_REQUESTS"]))
ORGS = ("org_a", "org_b", "org_c")
T = TypeVar("T")


# --- The database, read from the test's own thread -------------------------------------------------------


STATS_ROWS = select(OrganizationStats.__table__).order_by(*OrganizationStats.__table__.primary_key.columns)
ROW_COUNTS = union_all(
    *(
        select(literal(model.__tablename__).label("kind"), model.org_id, func.count().label("n")).group_by(model.org_id)
        for model in (Load, Invoice, Lane, Customer)
    )
)


class SyncDatabase:
    """The async Database on an event loop in a thread, so a sync (Hypothesis) test can read it."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(url, pool_size=2)
        self.conn = self.run(self.db.engine.connect)  # one connection: a snapshot takes ~2 ms

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        async def call() -> T:
            return await work()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=60)

    def fingerprint(self) -> dict[str, Any]:
        """Per org: its organization_stats rows (counters, version, timestamps) and its
        load/invoice/lane/customer counts. Two statements, whatever the number of orgs."""

        async def work() -> dict[str, Any]:
            out: dict[str, Any] = defaultdict(lambda: {"stats": []})
            for row in await self.conn.execute(STATS_ROWS):
                out[row.org_id]["stats"].append(tuple(row))
            for kind, org, n in await self.conn.execute(ROW_COUNTS):
                out[org][kind] = n
            await self.conn.rollback()  # the next snapshot sees every commit since
            return dict(out)

        return self.run(work)

    def close(self) -> None:
        self.run(self.conn.close)
        self.run(self.db.dispose)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def every_org(db: Database) -> list[str]:
    async def work(session: Any) -> list[str]:
        ids = union(
            select(Organization.org_id),
            select(OrganizationStats.org_id),
            select(Load.org_id),
            select(Invoice.org_id),
        )
        return sorted(await session.scalars(select(ids.subquery().c[0])))

    return await db.read(work)


# --- What the fuzzer knows ---------------------------------------------------------------------------------


@dataclass
class Pool:
    """Real ids seen in responses, with their org (deleted rows stay: their ids name nothing now)."""

    loads: dict[str, str] = field(default_factory=dict)
    invoices: dict[str, str] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)
    focus: str = "org_a"  # the org of the current caller (any, for a service token)


CALLERS: dict[str, str | None] = {
    "service": None,
    "admin_a": "org_a",
    "member_a": "org_a",
    "admin_b": "org_b",
    "member_b": "org_b",
    "member_c": "org_c",
}
TOKENS = {name: token(org, name.split("_")[0] if org else "service") for name, org in CALLERS.items()}
TOKENS["expired"] = token("org_a", "admin", ttl=-30)
TOKENS["garbage"] = "not.a.token"
CALLER_WEIGHTS = (
    ["service"] * 6
    + ["admin_a"] * 4
    + ["member_a"] * 3
    + ["admin_b"] * 3
    + ["member_b"] * 2
    + [
        "member_c",
        "expired",
        "garbage",
    ]
)

FIXED_TEXT = [
    "",
    " ",
    "\t\n",
    "Acme",
    "H1",
    "T1",
    "*",
    "x" * 200,
    "x" * 201,
    "y" * 10_240,
    "\x00",
    "nul\x00inside",
    "lone \ud800 surrogate",
    "\udfff",
    "\U0001f69a" * 60,
    "\u202eright-to-left",
    "e\u0301\u0301\u0301",
    "'; DROP TABLE loads; --",
    "${jndi:x}",
    "\\u0000",
    "%00",
    "null",
]
texts = st.one_of(
    st.sampled_from(["Acme", "L-100", "ok", "Z\u00fcrich", "\u6771\u4eac", "a b"]),
    st.sampled_from(FIXED_TEXT),
    st.text(max_size=24),
    # Around the 200-character limit, in any character (astral ones are 2 UTF-16 units).
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.sampled_from([199, 200, 201])),
)
hcrs = st.one_of(st.sampled_from(["H1", "H2", "H3"]), texts)
trips = st.one_of(st.sampled_from(["T1", "T2", "T3", "*"]), texts)
maybe_texts = st.one_of(st.none(), texts)
NOWHERE_IDS = ["0", "-1", "987654", "abc", "", " 1", "1.0", "9" * 25, "\u0661", "\x00"]
ZONES = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)), timezone(timedelta(minutes=330))]
datetimes_ = st.one_of(
    st.none(),
    st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1), timezones=st.sampled_from(ZONES)).map(datetime.isoformat),
    st.datetimes(datetime(2020, 1, 1), datetime(2030, 1, 1)).map(datetime.isoformat),  # naive
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00"]),
)
stops = st.one_of(
    st.none(),
    st.lists(
        st.fixed_dictionaries(
            {"sequence": st.integers(-(2**31), 2**31 - 1), "stopType": texts},
            optional={
                "city": maybe_texts,
                "state": maybe_texts,
                "postalCode": maybe_texts,
                "appointmentTime": datetimes_,
            },
        ),
        max_size=3,
    ),
    st.just([{"sequence": i, "stopType": "P"} for i in range(51)]),
    st.just([{"sequence": 1, "stopType": "P"}, {"sequence": 1, "stopType": "D"}]),
)


SHIPMENTS = st.fixed_dictionaries(
    {"shipmentId": st.one_of(st.sampled_from([f"S{i}" for i in range(12)]), texts)},
    optional={
        "loadNumber": maybe_texts,
        "hcr": st.one_of(st.none(), hcrs),
        "tripNumber": st.one_of(st.none(), trips),
        "shipperName": maybe_texts,
        "trackingStatus": st.one_of(
            st.none(),
            st.sampled_from(["CANCELED", "CANCELLED", "WITHDRAWN", "DELIVERED", "COMPLETED", "IN_TRANSIT"]),
            texts,
        ),
        "updatedAt": datetimes_,
        "stops": stops,
    },
)


SHIPMENT_LISTS = st.lists(SHIPMENTS, max_size=4)
CUSTOMER_NAMES = st.one_of(st.sampled_from(["Acme", "Globex", "Initech"]), texts)
RATES = st.floats(allow_nan=False, allow_infinity=False)
# Money strings: amounts money.md allows, and every way to get one wrong (sign, three decimals,
# exponents, NaN, blank, spaces, non-ASCII digits, too large), and any text.
MONEY = st.one_of(
    st.sampled_from(["0", "0.01", "1", "10.5", "99.99", "1250.50", "9999999999.99"]),
    st.sampled_from(["-1", "1.234", "1e3", "NaN", "", " 5", "5 ", "10000000000", "1.", ".5", "+5", "١٢", "0x10"]),
    st.decimals(min_value=0, max_value=10**10, places=2, allow_nan=False).map(str),
    texts,
)
DATES = st.one_of(st.none(), st.dates().map(str), st.sampled_from(["2026-02-29", "2024-02-29", "26-01-01", "x"]))
LOAD_STATUSES = ["OPEN", "ASSIGNED", "COMPLETED", "CANCELED"]
LOAD_TYPES = ["CONTRACT", "SPOT", "UNMAPPED"]
INVOICE_STATUSES = ["MISSING_DATA", "DRAFT", "BILLED", "PENDING_PAYMENT", "PAID", "VOID"]


@dataclass(frozen=True)
class Request:
    caller: str
    mutation: str
    query: str
    variables: dict[str, Any]


Draw = Callable[[st.DataObject, Pool], tuple[str, dict[str, Any]]]


ANY_INT = st.integers(0, 2**32 - 1)


def pick(data: st.DataObject, options: list[T], label: str) -> T:
    """One of `options`, each about equally often. (Hypothesis favours the ends of a range,
    so `sampled_from` would pick the first and last options far more often than the rest.)"""
    return options[data.draw(ANY_INT, label=label) % len(options)]


def org_id(data: st.DataObject, pool: Pool) -> str:
    """Mostly the caller's own org (so writes happen), else another one or any text."""
    source = pick(data, ["own"] * 6 + ["known"] * 2 + ["text"], "orgId from")
    if source == "own":
        return pool.focus
    return data.draw(st.sampled_from(ORGS) if source == "known" else texts, label="orgId")


def row_id(data: st.DataObject, rows: dict[str, str], pool: Pool) -> str:
    """Mostly a real id of the caller's org, else a real id of any org, or one naming nothing."""
    own = sorted(i for i, org in rows.items() if org == pool.focus)
    source = pick(data, ["own"] * 8 + ["any"] * 2 + ["nowhere", "number"], "id from")
    if source == "own" and own:
        return pick(data, own, "id")
    if source in ("own", "any") and rows:
        return pick(data, sorted(rows), "id")
    if source == "number":
        return str(data.draw(st.integers(1, 80), label="id"))
    return data.draw(st.sampled_from(NOWHERE_IDS), label="id")


def ids(data: st.DataObject, rows: dict[str, str], pool: Pool) -> list[str]:
    size = data.draw(st.sampled_from([0, 1, 1, 2, 2, 3, 5]), label="size")
    return [row_id(data, rows, pool) for _ in range(size)]


def optional(data: st.DataObject, strategy: st.SearchStrategy[Any], label: str) -> dict[str, Any]:
    """`{label: value}`, `{label: null}` or `{}` (the argument left out)."""
    how = pick(data, ["omit", "null", "value", "value"], label)
    if how == "omit":
        return {}
    return {label: None if how == "null" else data.draw(strategy, label=label)}


def optional_id(data: st.DataObject, rows: dict[str, str], pool: Pool, label: str) -> dict[str, Any]:
    how = pick(data, ["omit", "null", "value", "value"], label)
    if how == "omit":
        return {}
    return {label: None if how == "null" else row_id(data, rows, pool)}


MUTATIONS: dict[str, Draw] = {
    "createOrganization": lambda data, pool: (
        "mutation($o: ID!, $n: String!) { createOrganization(orgId: $o, name: $n) { orgId name createdAt } }",
        {"o": org_id(data, pool), "n": data.draw(texts)},
    ),
    "createCustomer": lambda data, pool: (
        "mutation($o: ID!, $n: String!) { createCustomer(orgId: $o, name: $n) { id orgId name } }",
        {"o": org_id(data, pool), "n": data.draw(CUSTOMER_NAMES)},
    ),
    "createLoad": lambda data, pool: (
        "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id orgId status loadType customer { id } } }",
        {
            "i": {
                "orgId": org_id(data, pool),
                **optional(data, st.sampled_from(LOAD_STATUSES), "status"),
                **optional(data, st.sampled_from(LOAD_TYPES), "loadType"),
                **optional_id(data, pool.customers, pool, "customerId"),
                **optional(data, maybe_texts, "loadNumber"),
                **optional(data, hcrs, "hcr"),
                **optional(data, trips, "tripNumber"),
            }
        },
    ),
    "updateLoadStatus": lambda data, pool: (
        "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id orgId status } }",
        {"id": row_id(data, pool.loads, pool), "s": data.draw(st.sampled_from(LOAD_STATUSES))},
    ),
    "deleteLoad": lambda data, pool: (
        "mutation($id: ID!) { deleteLoad(id: $id) { id stats { orgId version } } }",
        {"id": row_id(data, pool.loads, pool)},
    ),
    "importShipment": lambda data, pool: (
        "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) "
        "{ shipmentId outcome error load { id orgId status loadType invoice { id status } } } }",
        {"o": org_id(data, pool), "s": data.draw(SHIPMENTS)},
    ),
    "importShipments": lambda data, pool: (
        "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) "
        "{ shipmentId outcome error load { id orgId invoice { id } } } }",
        {"o": org_id(data, pool), "s": data.draw(SHIPMENT_LISTS)},
    ),
    "createLane": lambda data, pool: (
        "mutation($i: CreateLaneInput!) { createLane(input: $i) { lane { id orgId customer { id } } promotedLoads promotedInvoices } }",
        {
            "i": {
                "orgId": org_id(data, pool),
                "hcr": data.draw(hcrs),
                "tripNumber": data.draw(trips),
                **optional_id(data, pool.customers, pool, "customerId"),
                **optional(data, RATES, "rate"),
                **optional(data, maybe_texts, "rateType"),
            }
        },
    ),
    "promoteSpotLoads": lambda data, pool: (
        "mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }",
        {"o": org_id(data, pool)},
    ),
    "createInvoice": lambda data, pool: (
        "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id orgId status load { id } } }",
        {
            "i": {
                "loadId": row_id(data, pool.loads, pool),
                **optional(data, st.sampled_from(INVOICE_STATUSES), "status"),
                **optional(data, maybe_texts, "missingDataReason"),
                **optional(data, MONEY, "amount"),
            }
        },
    ),
    "updateInvoiceStatus": lambda data, pool: (
        "mutation($id: ID!, $s: InvoiceStatus!, $d: Date) { updateInvoiceStatus(id: $id, status: $s, invoiceDate: $d) "
        "{ id orgId status amount paidAmount balance invoiceDate } }",
        {
            "id": row_id(data, pool.invoices, pool),
            "s": data.draw(st.sampled_from(INVOICE_STATUSES)),
            "d": data.draw(DATES),
        },
    ),
    "bulkUpdateInvoiceStatus": lambda data, pool: (
        "mutation($ids: [ID!]!, $s: InvoiceStatus!, $d: Date) { bulkUpdateInvoiceStatus(ids: $ids, status: $s, "
        "invoiceDate: $d) { updated unchanged stats { orgId version money { invoiced collected } } } }",
        {
            "ids": ids(data, pool.invoices, pool),
            "s": data.draw(st.sampled_from(INVOICE_STATUSES)),
            "d": data.draw(DATES),
        },
    ),
    "setInvoiceAmount": lambda data, pool: (
        "mutation($id: ID!, $a: Money!) { setInvoiceAmount(id: $id, amount: $a) { id orgId status amount balance } }",
        {"id": row_id(data, pool.invoices, pool), "a": data.draw(MONEY)},
    ),
    "recordPayment": lambda data, pool: (
        "mutation($id: ID!, $a: Money!) { recordPayment(invoiceId: $id, amount: $a) "
        "{ id orgId status amount paidAmount balance } }",
        {"id": row_id(data, pool.invoices, pool), "a": data.draw(MONEY)},
    ),
    "bulkVoidInvoices": lambda data, pool: (
        "mutation($ids: [ID!]!, $r: String) { bulkVoidInvoices(ids: $ids, reason: $r) { updated unchanged stats { orgId } } }",
        {"ids": ids(data, pool.invoices, pool), **optional(data, maybe_texts, "r")},
    ),
    "deleteInvoice": lambda data, pool: (
        "mutation($id: ID!) { deleteInvoice(id: $id) { id stats { orgId version } } }",
        {"id": row_id(data, pool.invoices, pool)},
    ),
    "recalculateOrgStats": lambda data, pool: (
        "mutation($o: ID!) { recalculateOrgStats(orgId: $o) { orgId corrected { counter } stats { version } } }",
        {"o": org_id(data, pool)},
    ),
    "recalculateAllOrgStats": lambda data, pool: (
        "mutation { recalculateAllOrgStats { orgId corrected { counter } } }",
        {},
    ),
}
# Writes that create rows are drawn more often, so the pool fills and later requests hit real rows.
MUTATION_WEIGHTS = [
    name for name in MUTATIONS for _ in range(1 if name.startswith(("recalculate", "createOrg")) else 3)
]
MUTATION_WEIGHTS += ["createLoad", "createInvoice", "importShipments"] * 3


def test_every_mutation_has_a_strategy() -> None:
    served = set(served_schema._schema.mutation_type.fields)  # type: ignore[union-attr]
    exported = graphql.build_schema((ROOT / "schema.graphql").read_text()).mutation_type
    assert exported is not None and set(exported.fields) == served
    assert set(MUTATIONS) == served, f"mutations without a fuzz strategy: {served - set(MUTATIONS)}"


def harvest(body: dict[str, Any], pool: Pool) -> None:
    """Remember every id a response shows, with its org."""

    def walk(value: Any, kind: str | None) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, kind)
        elif isinstance(value, dict):
            if kind and "id" in value and "orgId" in value:
                getattr(pool, kind)[value["id"]] = value["orgId"]
            for key, item in value.items():
                walk(item, {"load": "loads", "invoice": "invoices", "customer": "customers"}.get(key, kind))

    data = body.get("data") or {}
    for name, value in data.items():
        kind = {
            "createLoad": "loads",
            "updateLoadStatus": "loads",
            "createInvoice": "invoices",
            "updateInvoiceStatus": "invoices",
            "setInvoiceAmount": "invoices",
            "recordPayment": "invoices",
            "createCustomer": "customers",
        }.get(name)
        walk(value, kind)
    # Loads and invoices nested without an orgId carry the parent's org.
    for value in data.values():
        for item in value if isinstance(value, list) else [value]:
            load = (item or {}).get("load") if isinstance(item, dict) else None
            if isinstance(load, dict) and load.get("orgId") and isinstance(load.get("invoice"), dict):
                pool.invoices[load["invoice"]["id"]] = load["orgId"]


# --- The run ------------------------------------------------------------------------------------------


@dataclass
class Findings:
    sent: int = 0
    refused: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: Counter[str] = field(default_factory=Counter)  # in HTTP round trips, in snapshots

    def add(self, request: Request, problem: str) -> None:
        if len(self.problems) < 40:
            variables = json.dumps(request.variables)[:400]
            self.problems.append(f"{request.caller} {request.mutation} {variables}: {problem}")


def check_response(response: httpx.Response) -> tuple[dict[str, Any] | None, str | None]:
    if response.status_code >= 500:
        return None, f"HTTP {response.status_code}: {response.text[:300]}"
    if leaks := leaks_in(response.text):
        return None, f"the response shows {leaks}: {response.text[:300]}"
    if response.status_code != 200:
        return None, f"HTTP {response.status_code}: {response.text[:300]}"
    body = response.json()
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        if code is None:
            return body, f"an error without a code: {error}"
        if code == "INTERNAL":
            return body, f"INTERNAL (requestId {error['extensions'].get('requestId')!r}): {error['message']}"
    return body, None


@pytest.mark.slow
def test_fuzz_mutations(database_url: str, databases: Any) -> None:
    env = {"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0"}
    with running_server(env) as server:
        started = time.monotonic()
        summary, problems, drift = fuzz(server, database_url, databases.backend)
        elapsed = time.monotonic() - started
    print(f"{summary}; {elapsed:.1f} s in all")
    assert not problems, summary + "\n" + "\n".join(problems)
    assert not drift, f"drift after the run: {drift}"
    # Read once the server stopped, so all its output is in the file.
    log = server.log_path.read_text(errors="replace")
    for name, bearer in TOKENS.items():
        assert bearer not in log, f"the server log shows the {name} token"
        signature = bearer.rsplit(".", 1)[-1]
        assert len(signature) < 20 or signature not in log, f"the server log shows the {name} token's signature"
    assert "Traceback" not in log, log[-3000:]


def fuzz(server: ServerUrl, database_url: str, backend: str) -> tuple[str, list[str], dict[str, Any]]:
    """Send the requests; return a summary, the problems found and any drift at the end."""
    db = SyncDatabase(database_url)
    pool = Pool()
    findings = Findings()
    client = httpx.Client(base_url=server, timeout=30)

    # Requests go one at a time and nothing else writes (the scheduler is off), so the state
    # before a request is the state after the one before: one snapshot per request suffices.
    baseline: dict[str, Any] | None = None

    def send(request: Request) -> None:
        nonlocal baseline
        t0 = time.monotonic()
        if baseline is None:
            baseline = db.fingerprint()
        t1 = time.monotonic()
        findings.seconds["snapshots"] += t1 - t0
        response = client.post(
            "/graphql",
            content=json.dumps({"query": request.query, "variables": request.variables}).encode(),
            headers={"Authorization": f"Bearer {TOKENS[request.caller]}", "content-type": "application/json"},
        )
        findings.sent += 1
        findings.seconds["http"] += time.monotonic() - t1
        body, problem = check_response(response)
        if problem:
            findings.add(request, problem)
        errors = (body or {}).get("errors") or []
        findings.codes.update((e.get("extensions") or {}).get("code", "?") for e in errors)
        if body is not None and not errors:
            findings.codes["ok"] += 1
            harvest(body, pool)
            baseline = None  # it may have changed anything
            return
        findings.refused += 1
        t2 = time.monotonic()
        after = db.fingerprint()
        findings.seconds["snapshots"] += time.monotonic() - t2
        if after != baseline:
            changed = sorted(o for o in after.keys() | baseline.keys() if after.get(o) != baseline.get(o))
            reason = errors[0]["message"][:120] if errors else "no GraphQL answer"
            findings.add(request, f"refused ({reason}), yet it changed the rows or stats of {changed}")
        baseline = after

    @settings(
        max_examples=REQUESTS[backend],
        phases=[Phase.generate],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        caller = pick(data, CALLER_WEIGHTS, "caller")
        pool.focus = CALLERS.get(caller) or pick(data, list(ORGS), "focus")
        mutation = pick(data, MUTATION_WEIGHTS, "mutation")
        query, variables = MUTATIONS[mutation](data, pool)
        send(Request(caller, mutation, query, variables))

    try:
        # A few rows in each org, so the first requests already meet real ids.
        for org in ORGS:
            for status in ("OPEN", "ASSIGNED"):
                body = client.post(
                    "/graphql",
                    json={
                        "query": "mutation($o: ID!, $s: LoadStatus!) { createLoad(input: {orgId: $o, status: $s}) { id orgId } }",
                        "variables": {"o": org, "s": status},
                    },
                    headers={"Authorization": f"Bearer {TOKENS['service']}"},
                ).json()
                harvest(body, pool)
        one_request()
        orgs = db.run(lambda: every_org(db.db))
        drift = {}
        for org in orgs:
            counts, _ = db.run(lambda org=org: stored(db.db, org))
            actual = db.run(lambda org=org: recount(db.db, org))
            if counts != actual:
                drift[org] = {k: (counts[k], actual[k]) for k in counts if counts[k] != actual[k]}
            money = db.run(lambda org=org: money_rows(db.db, org)), db.run(lambda org=org: money_recount(db.db, org))
            totals, summed = db.run(lambda org=org: money_totals(db.db, org))
            if money[0] != money[1] or totals != summed:
                drift[f"{org} (money)"] = {"rows": money, "totals": (totals, summed)}
        # The server's own recount agrees.
        for org in set(ORGS) & set(orgs):
            report = client.post(
                "/graphql",
                json={"query": "query($o: ID!) { driftReport(orgId: $o) { ok } }", "variables": {"o": org}},
                headers={"Authorization": f"Bearer {TOKENS['service']}"},
            ).json()
            if report["data"]["driftReport"]["ok"] is not True:
                drift[f"{org} (driftReport)"] = report
    finally:
        client.close()
        db.close()

    summary = (
        f"{findings.sent} requests ({backend}): {findings.refused} refused; "
        f"outcomes {dict(findings.codes)}; pool: {len(pool.loads)} loads, {len(pool.invoices)} invoices, "
        f"{len(pool.customers)} customers, {len(orgs)} orgs; "
        + ", ".join(f"{v:.1f} s in {k}" for k, v in findings.seconds.items())
    )
    problems = list(findings.problems)
    if findings.sent < REQUESTS[backend]:
        problems.append(f"only {findings.sent} of {REQUESTS[backend]} requests were sent")
    # The run did more than bounce off validation: real writes, and refusals of each kind.
    if findings.codes["ok"] < REQUESTS[backend] // 5:
        problems.append("too few requests succeeded")
    for code in ("FORBIDDEN", "NOT_FOUND", "BAD_USER_INPUT", "INVALID_TRANSITION", "UNAUTHENTICATED"):
        if not findings.codes[code]:
            problems.append(f"no request was refused with {code}")
    return summary, problems, drift
