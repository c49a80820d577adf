"""The count queries read the aggregate row: exactly one SQL statement, whatever the org's size.

With Settings(query_stats=True) (the conftest settings) every GraphQL response carries
extensions.queryStats.statements, the number of SQL statements the operation ran.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from db.models import Invoice, Load
from db.organizations import ensure_organization
from db.unit_of_work import Database
from settings import Settings
from tests.helpers import Api, recount, stored, token

LOAD_STATUSES = ("OPEN", "ASSIGNED", "COMPLETED", "CANCELED")
LOAD_TYPES = ("CONTRACT", "SPOT", "UNMAPPED")
INVOICE_STATUSES = ("MISSING_DATA", "DRAFT", "BILLED", "PENDING_PAYMENT", "PAID", "VOID")
BIG = 10_000

ORGANIZATION_STATS = """query($o: ID!) { organizationStats(orgId: $o) {
  orgId version updatedAt lastRecalculatedAt
  loads { open assigned completed canceled total }
  loadTypes { contract spot unmapped total }
  invoices { missingData draft billed pendingPayment paid void total }
} }"""
COUNT_LOADS = "query($o: ID!) { countLoadsByStatus(orgId: $o) { open assigned completed canceled total } }"
COUNT_INVOICES = (
    "query($o: ID!) { countInvoicesByStatus(orgId: $o) { missingData draft billed pendingPayment paid void total } }"
)


async def statements_and_data(api: Api, query: str, **variables: Any) -> tuple[int, dict[str, Any]]:
    body = await api.raw(query, **variables)
    assert not body.get("errors"), body["errors"]
    return body["extensions"]["queryStats"]["statements"], body["data"]


async def read_all_three(api: Api, org: str) -> dict[str, Any]:
    """Each count query on its own, each asserted to run exactly one statement."""
    out: dict[str, Any] = {}
    for query in (ORGANIZATION_STATS, COUNT_LOADS, COUNT_INVOICES):
        statements, data = await statements_and_data(api, query, o=org)
        (field,) = data
        assert statements == 1, f"{field} ran {statements} statements"
        out[field] = data[field]
    return out


def finalized_money(status: str) -> dict[str, Any]:
    """What a billed invoice carries (money.md): a date and an amount (here 0.00)."""
    if status not in ("BILLED", "PENDING_PAYMENT", "PAID"):
        return {}
    return {"invoice_date": date(2026, 3, 14), "amount_cents": 0, "paid_cents": 0}


def expected_counts(n: int) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Load i has status i % 4, type i % 3 and an invoice of status i % 6 (as seeded below)."""
    statuses = Counter(LOAD_STATUSES[i % 4] for i in range(n))
    types = Counter(LOAD_TYPES[i % 3] for i in range(n))
    invoices = Counter(INVOICE_STATUSES[i % 6] for i in range(n))
    loads = {
        "open": statuses["OPEN"],
        "assigned": statuses["ASSIGNED"],
        "completed": statuses["COMPLETED"],
        "canceled": statuses["CANCELED"],
        "total": n,
    }
    load_types = {"contract": types["CONTRACT"], "spot": types["SPOT"], "unmapped": types["UNMAPPED"], "total": n}
    invoice_counts = {
        "missingData": invoices["MISSING_DATA"],
        "draft": invoices["DRAFT"],
        "billed": invoices["BILLED"],
        "pendingPayment": invoices["PENDING_PAYMENT"],
        "paid": invoices["PAID"],
        "void": invoices["VOID"],
        "total": n,
    }
    return loads, load_types, invoice_counts


async def seed(db: Database, org: str, n: int, start: int = 0) -> None:
    """Loads start..start+n-1, each with an invoice, in ONE write: the aggregate hooks count them exactly.

    Ids are given up front, so the ORM inserts each table with one executemany
    instead of one INSERT ... RETURNING per row.
    """

    async def work(session: Any) -> None:
        await ensure_organization(session, org)
        first_load = (await session.scalar(select(func.max(Load.id)))) or 0
        first_invoice = (await session.scalar(select(func.max(Invoice.id)))) or 0
        for i in range(start, start + n):
            status = INVOICE_STATUSES[i % 6]
            session.add(
                Load(
                    id=first_load + 1 + i - start,
                    org_id=org,
                    status=LOAD_STATUSES[i % 4],
                    load_type=LOAD_TYPES[i % 3],
                    requires_manual_review=False,
                )
            )
            session.add(
                Invoice(
                    id=first_invoice + 1 + i - start,
                    org_id=org,
                    load_id=first_load + 1 + i - start,
                    status=status,
                    missing_data_reason="seeded" if status == "MISSING_DATA" else None,
                    **finalized_money(status),
                )
            )
        await session.flush()
        if session.get_bind().dialect.name == "postgresql":  # keep the id sequences ahead of the rows
            for table in ("loads", "invoices"):
                await session.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
                )

    await db.write(work)


@pytest.fixture(params=[1, 4], ids=["one-stats-row", "4-stats-shards"])
def settings(database_url: str, request: pytest.FixtureRequest) -> Settings:
    """conftest's settings (query_stats on), with the org's stats in one row or spread over 4 shards."""
    return Settings(database_url=database_url, query_stats=True, recalc_interval_seconds=0, stats_shards=request.param)


@pytest.fixture
def client(app_client: tuple[httpx.AsyncClient, Database]) -> httpx.AsyncClient:
    return app_client[0]


async def test_ten_loads_one_statement_each(client: httpx.AsyncClient, db: Database) -> None:
    api = Api(client, token("org_small", "admin"))
    for i in range(10):
        created = await api.raw(
            "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }",
            i={"orgId": "org_small", "status": LOAD_STATUSES[i % 4], "loadType": LOAD_TYPES[i % 3]},
        )
        assert not created.get("errors"), created
        # The counter really counts: on PostgreSQL's driver path the org's creation, the INSERT and
        # the counter upsert are one statement (db/row_writes.py); elsewhere they are three.
        one = db.engine.dialect.name == "postgresql" and db.driver_row_writes
        assert created["extensions"]["queryStats"]["statements"] == (1 if one else 3)
        load_id = created["data"]["createLoad"]["id"]
        status = INVOICE_STATUSES[i % 6]
        invoice = await api.raw(
            "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id } }",
            i={"loadId": load_id, "status": status, "missingDataReason": "test" if status == "MISSING_DATA" else None},
        )
        assert not invoice.get("errors"), invoice
        assert invoice["extensions"]["queryStats"]["statements"] > 1

    got = await read_all_three(api, "org_small")
    loads, load_types, invoices = expected_counts(10)
    stats = got["organizationStats"]
    assert (stats["loads"], stats["loadTypes"], stats["invoices"]) == (loads, load_types, invoices)
    assert stats["version"] == 20  # one per committed write that changed a count (summed over shards)
    assert got["countLoadsByStatus"] == loads
    assert got["countInvoicesByStatus"] == invoices
    counts, _ = await stored(db, "org_small")
    assert counts == await recount(db, "org_small")


async def test_ten_thousand_loads_one_statement_each(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    # One write; with shards, four writes (each lands on a random shard row).
    parts = 1 if settings.stats_shards == 1 else 4
    for part in range(parts):
        await seed(db, "org_big", BIG // parts, start=part * BIG // parts)
    await seed(db, "org_other", 7)  # another org's rows change nothing here
    api = Api(client, token("org_big", "member"))

    got = await read_all_three(api, "org_big")
    loads, load_types, invoices = expected_counts(BIG)
    stats = got["organizationStats"]
    assert stats["orgId"] == "org_big"
    assert (stats["loads"], stats["loadTypes"], stats["invoices"]) == (loads, load_types, invoices)
    assert stats["loads"]["total"] == BIG and stats["invoices"]["total"] == BIG
    assert stats["version"] == parts  # one per seeding transaction
    assert got["countLoadsByStatus"] == loads
    assert got["countInvoicesByStatus"] == invoices
    counts, version = await stored(db, "org_big")
    assert counts == await recount(db, "org_big")
    assert version == parts

    # For contrast: listing rows is not a count query, and costs more than one statement.
    statements, _ = await statements_and_data(
        api, "query($o: ID!) { loads(orgId: $o, first: 5) { nodes { id invoice { id } } } }", o="org_big"
    )
    assert statements > 1


@pytest.mark.parametrize("bearer", [token("org_nobody", "admin"), token(None, "service")])
async def test_unknown_org_reads_zeros_and_version_0_in_one_statement(client: httpx.AsyncClient, bearer: str) -> None:
    api = Api(client, bearer)
    got = await read_all_three(api, "org_nobody")
    zero_loads = {"open": 0, "assigned": 0, "completed": 0, "canceled": 0, "total": 0}
    zero_invoices = {"missingData": 0, "draft": 0, "billed": 0, "pendingPayment": 0, "paid": 0, "void": 0, "total": 0}
    stats = got["organizationStats"]
    assert stats["orgId"] == "org_nobody"
    assert stats["version"] == 0
    assert stats["lastRecalculatedAt"] is None
    assert stats["loads"] == zero_loads
    assert stats["loadTypes"] == {"contract": 0, "spot": 0, "unmapped": 0, "total": 0}
    assert stats["invoices"] == zero_invoices
    assert got["countLoadsByStatus"] == zero_loads
    assert got["countInvoicesByStatus"] == zero_invoices
