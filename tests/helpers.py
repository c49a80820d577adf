"""Plain helpers shared by tests: GraphQL calls, tokens, recounts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
from sqlalchemy import func, select

from db.aggregates import (
    COUNTERS,
    INVOICE_STATUS_COUNTERS,
    LOAD_STATUS_COUNTERS,
    LOAD_TYPE_COUNTERS,
)
from db.counters import MONEY_TOTALS
from db.models import CustomerBalance, Invoice, Load, Receivable, ReceivableDay, RevenueMonth
from db.queries import get_stats
from db.unit_of_work import Database
from edge.tokens import TokenVerifier
from settings import DEV_SECRET, Settings

VERIFIER = TokenVerifier(DEV_SECRET)


def token(org: str | None = "org_a", role: str = "admin", ttl: int = 3600) -> str:
    return VERIFIER.issue(org_id=org, role=role, subject="test", ttl_seconds=ttl)


class Counted:
    """An async function that counts its calls (instrumentation, not a stand-in)."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return await self.function(*args)


class Api:
    """A GraphQL client bound to one token."""

    def __init__(self, client: httpx.AsyncClient, bearer: str | None) -> None:
        self.client = client
        self.bearer = bearer

    def as_(self, bearer: str | None) -> Api:
        return Api(self.client, bearer)

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        response = await self.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        body = await self.raw(query, **variables)
        assert not body.get("errors"), body["errors"]
        return body["data"]

    async def error(self, query: str, **variables: Any) -> dict[str, Any]:
        """The first error of a call that must fail."""
        body = await self.raw(query, **variables)
        assert body.get("errors"), f"expected an error, got {body}"
        return body["errors"][0]


async def recount(db: Database, org_id: str) -> dict[str, int]:
    """Every counter, counted from the source rows."""

    async def work(session: Any) -> dict[str, int]:
        counts = dict.fromkeys(COUNTERS, 0)
        for column, mapping in (
            (Load.status, LOAD_STATUS_COUNTERS),
            (Load.load_type, LOAD_TYPE_COUNTERS),
            (Invoice.status, INVOICE_STATUS_COUNTERS),
        ):
            model = column.class_
            rows = await session.execute(select(column, func.count()).where(model.org_id == org_id).group_by(column))
            for value, n in rows:
                counts[mapping[value]] = n
        return counts

    return await db.read(work)


async def money_totals(db: Database, org_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """The org's stored money totals, and the same summed from its finalized invoices."""

    async def work(session: Any) -> dict[str, int]:
        finalized = (Invoice.org_id == org_id, Invoice.status.in_(["BILLED", "PENDING_PAYMENT", "PAID"]))
        money = select(func.sum(Invoice.amount_cents), func.sum(Invoice.paid_cents)).where(*finalized)
        invoiced, collected = (await session.execute(money)).one()
        return {"money_invoiced": int(invoiced or 0), "money_collected": int(collected or 0)}

    snapshot = await db.read(lambda s: get_stats(s, org_id))
    return {c: snapshot.counts[c] for c in MONEY_TOTALS}, await db.read(work)


Owed = dict[tuple[int, str], tuple[int, int]]  # (customer key, invoice date) -> (invoices, balance)
MoneyRows = tuple[dict[str, tuple[int, ...]], Owed, dict[str, tuple[int, int]], dict[int, tuple[int, int]]]


def owed_rollups(owed: Owed) -> tuple[dict[str, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Receivables summed per invoice date and per customer (what receivable_days and customer_balances hold)."""
    by_day: dict[str, list[int]] = {}
    by_customer: dict[int, list[int]] = {}
    for (customer, day), (n, balance) in owed.items():
        for row in (by_day.setdefault(day, [0, 0]), by_customer.setdefault(customer, [0, 0])):
            row[0] += n
            row[1] += balance
    return {k: (n, b) for k, (n, b) in by_day.items()}, {k: (n, b) for k, (n, b) in by_customer.items()}


async def money_rows(db: Database, org_id: str) -> MoneyRows:
    """The org's stored revenue months, receivables, receivables per date and per customer (non-zero rows only)."""

    async def work(session: Any) -> Any:
        months = await session.execute(
            select(RevenueMonth.month, RevenueMonth.invoiced_count, RevenueMonth.invoiced, RevenueMonth.paid_count,
                   RevenueMonth.collected).where(RevenueMonth.org_id == org_id)
        )  # fmt: skip
        owed = await session.execute(
            select(Receivable.customer_key, Receivable.invoice_date, Receivable.invoices, Receivable.balance).where(
                Receivable.org_id == org_id
            )
        )
        days = await session.execute(
            select(ReceivableDay.invoice_date, ReceivableDay.invoices, ReceivableDay.balance).where(
                ReceivableDay.org_id == org_id
            )
        )
        customers = await session.execute(
            select(CustomerBalance.customer_key, CustomerBalance.invoices, CustomerBalance.balance).where(
                CustomerBalance.org_id == org_id
            )
        )
        return (
            {m: tuple(rest) for m, *rest in months if any(rest)},
            {(c, str(d)): (n, b) for c, d, n, b in owed if n or b},
            {str(d): (n, b) for d, n, b in days if n or b},
            {c: (n, b) for c, n, b in customers if n or b},
        )

    return cast(MoneyRows, await db.read(work))


async def money_recount(db: Database, org_id: str) -> MoneyRows:
    """The same, recomputed from the invoices, in Python (independent of db/aggregates.py)."""

    async def work(session: Any) -> Any:
        return (await session.execute(select(Invoice).where(Invoice.org_id == org_id))).scalars().all()

    months: dict[str, list[int]] = {}
    owed: dict[tuple[int, str], list[int]] = {}
    for i in await db.read(work):
        amount, paid = i.amount_cents or 0, i.paid_cents
        if i.status in ("BILLED", "PENDING_PAYMENT", "PAID"):
            month = months.setdefault(str(i.invoice_date)[:7], [0, 0, 0, 0])
            month[0] += 1
            month[1] += amount
            month[2] += paid > 0
            month[3] += paid
        if i.status in ("BILLED", "PENDING_PAYMENT") and amount - paid > 0:
            row = owed.setdefault((i.customer_id or 0, str(i.invoice_date)), [0, 0])
            row[0] += 1
            row[1] += amount - paid
    receivables = {k: (n, b) for k, (n, b) in owed.items()}
    return ({m: tuple(v) for m, v in months.items()}, receivables, *owed_rollups(receivables))


async def stored(db: Database, org_id: str) -> tuple[dict[str, int], int]:
    """The org's stored counters (not the money totals: `money_totals`) and version."""
    snapshot = await db.read(lambda s: get_stats(s, org_id))
    return {c: snapshot.counts[c] for c in COUNTERS}, snapshot.version


async def assert_exact(db: Database, org_id: str) -> None:
    """Every aggregate of the org equals its recount: counters, money totals, revenue months, receivables."""
    counts, _ = await stored(db, org_id)
    assert counts == await recount(db, org_id)
    totals, summed = await money_totals(db, org_id)
    assert totals == summed
    assert await money_rows(db, org_id) == await money_recount(db, org_id)


# --- Write paths and access --------------------------------------------------

LOAD_FIELDS = (
    "id orgId status loadType requiresManualReview externalId loadNumber hcr tripNumber "
    "customer { id name } lane { id hcr tripNumber isWildcard } "
    "invoice { id status missingDataReason voidReason }"
)
INVOICE_FIELDS = "id orgId status missingDataReason voidReason load { id status loadType }"
STATS_FIELDS = (
    "orgId version loads { open assigned completed canceled total } "
    "loadTypes { contract spot unmapped total } "
    "invoices { missingData draft billed pendingPayment paid void total }"
)


def counter_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved, and by how much."""
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


def counters_of(stats: dict[str, Any]) -> dict[str, int]:
    """A GraphQL OrganizationStats (queried with STATS_FIELDS) as the stored counter dict."""
    loads, types, invoices = stats["loads"], stats["loadTypes"], stats["invoices"]
    return {
        "loads_open": loads["open"],
        "loads_assigned": loads["assigned"],
        "loads_completed": loads["completed"],
        "loads_canceled": loads["canceled"],
        "type_contract": types["contract"],
        "type_spot": types["spot"],
        "type_unmapped": types["unmapped"],
        "invoices_missing_data": invoices["missingData"],
        "invoices_draft": invoices["draft"],
        "invoices_billed": invoices["billed"],
        "invoices_pending_payment": invoices["pendingPayment"],
        "invoices_paid": invoices["paid"],
        "invoices_void": invoices["void"],
    }


async def dump_tables(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every application table, in primary-key order."""
    from db.models import Base

    async def work(session: Any) -> dict[str, list[tuple[Any, ...]]]:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in Base.metadata.sorted_tables:
            rows = await session.execute(select(table).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(row) for row in rows]
        return out

    return await db.read(work)


async def create_load(api: Api, org: str = "org_a", **fields: Any) -> dict[str, Any]:
    data = await api.ok(
        f"mutation($i: CreateLoadInput!) {{ createLoad(input: $i) {{ {LOAD_FIELDS} }} }}",
        i={"orgId": org, **fields},
    )
    return data["createLoad"]


async def create_invoice(api: Api, load_id: str, status: str = "DRAFT", reason: str | None = None) -> dict[str, Any]:
    if status == "MISSING_DATA" and reason is None:
        reason = "test reason"
    data = await api.ok(
        f"mutation($i: CreateInvoiceInput!) {{ createInvoice(input: $i) {{ {INVOICE_FIELDS} }} }}",
        i={"loadId": load_id, "status": status, "missingDataReason": reason},
    )
    return data["createInvoice"]


async def create_lane(
    api: Api, hcr: str, trip: str, org: str = "org_a", customer_id: str | None = None
) -> dict[str, Any]:
    data = await api.ok(
        "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads promotedInvoices "
        "lane { id orgId hcr tripNumber isWildcard customer { id name } } } }",
        i={"orgId": org, "hcr": hcr, "tripNumber": trip, "customerId": customer_id, "rate": 100.0},
    )
    return data["createLane"]


async def import_shipments(api: Api, shipments: list[dict[str, Any]], org: str = "org_a") -> list[dict[str, Any]]:
    data = await api.ok(
        "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) "
        f"{{ shipmentId outcome error load {{ {LOAD_FIELDS} }} }} }}",
        o=org,
        s=shipments,
    )
    return data["importShipments"]


async def import_shipment(api: Api, shipment: dict[str, Any], org: str = "org_a") -> dict[str, Any]:
    data = await api.ok(
        "mutation($o: ID!, $s: ShipmentInput!) { importShipment(orgId: $o, shipment: $s) "
        f"{{ shipmentId outcome error load {{ {LOAD_FIELDS} }} }} }}",
        o=org,
        s=shipment,
    )
    return data["importShipment"]


# --- Isolation, bad input and fuzzing -----------------------------------------

LEAK_MARKERS = ("Traceback", "sqlalchemy", "SELECT ", "asyncpg", "sqlite3", '.py"')


def leaks_in(text: str) -> list[str]:
    """The internals (stack traces, SQL, driver names, source paths) a response body shows."""
    return [marker for marker in LEAK_MARKERS if marker in text]


async def org_fingerprint(db: Database, org_id: str) -> dict[str, Any]:
    """Everything a refused request must leave alone in one org: its whole organization_stats
    row(s) (counters, version, timestamps; one row per shard) and how many loads, invoices,
    lanes and customers it has."""
    from db.models import Customer, Lane, OrganizationStats

    async def work(session: Any) -> dict[str, Any]:
        table = OrganizationStats.__table__
        rows = await session.execute(select(table).where(table.c.org_id == org_id).order_by(*table.primary_key.columns))
        out: dict[str, Any] = {"stats": [tuple(row) for row in rows]}
        for model in (Load, Invoice, Lane, Customer):
            out[model.__tablename__] = await session.scalar(
                select(func.count()).select_from(model).where(model.org_id == org_id)
            )
        return out

    return await db.read(work)


def replace_ids(value: Any, ids: dict[str, str]) -> Any:
    """`value` (a decoded JSON body) with each whole-word occurrence of an id, in strings only,
    replaced by its placeholder: two responses equal after this differ only by the ids."""
    import re

    if not ids:
        return value
    pattern = re.compile("|".join(rf"(?<![\w-]){re.escape(i)}(?![\w-])" for i in sorted(ids, key=len, reverse=True)))
    if isinstance(value, str):
        return pattern.sub(lambda m: ids[m.group(0)], value)
    if isinstance(value, list):
        return [replace_ids(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: replace_ids(v, ids) for k, v in value.items()}
    return value


# The transition tables of domain.md, written out here so tests do not trust db/rules.py.
LOAD_MOVES = {
    "OPEN": {"ASSIGNED", "CANCELED"},
    "ASSIGNED": {"OPEN", "COMPLETED", "CANCELED"},
    "COMPLETED": set(),
    "CANCELED": set(),
}
INVOICE_MOVES = {
    "MISSING_DATA": {"DRAFT", "VOID"},
    "DRAFT": {"BILLED", "VOID"},
    "BILLED": {"PENDING_PAYMENT", "DRAFT", "VOID"},
    "PENDING_PAYMENT": {"PAID", "DRAFT", "VOID"},
    "PAID": {"PENDING_PAYMENT", "VOID"},
    "VOID": set(),
}


@contextlib.asynccontextmanager
async def served_in_process(settings: Settings, org: str = "org_a") -> AsyncIterator[tuple[Api, Any]]:
    """The app on `settings`, its hub started, served in process over httpx: an admin of `org`, and the app."""
    from main import create_app

    app = create_app(settings)
    await app.state.hub.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tally") as client:
            yield Api(client, token(org, "admin")), app
    finally:
        await app.state.hub.stop()
        await app.state.db.dispose()
