"""The revisions that introduce organization_stats and the money aggregates backfill them from existing rows;
0006 rebuilds the money tables and 0007 drops two of their indexes without losing a row."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import pytest
from alembic import command
from sqlalchemy import make_url, text

from db.engine import create_engine
from db.migrate import alembic_config, upgrade_async
from db.unit_of_work import Database
from tests.databases import Databases
from tests.helpers import Api, assert_exact, create_invoice, create_load, money_rows, recount, stored


async def test_backfill_counts_rows_that_existed_before_the_stats_table(databases: Databases) -> None:
    url = databases.empty()
    await upgrade_async(url, "0001")
    engine = create_engine(url)  # rows written as before Tally counted them: no Database, no guard
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO organizations VALUES ('org_a', 'A', CURRENT_TIMESTAMP), ('org_b', 'B', CURRENT_TIMESTAMP), ('org_c', 'C', CURRENT_TIMESTAMP)"
            )
        )
        statuses = ["OPEN", "ASSIGNED", "COMPLETED", "CANCELED"]
        types = ["CONTRACT", "SPOT", "UNMAPPED"]
        invoice_statuses = ["MISSING_DATA", "DRAFT", "BILLED", "PENDING_PAYMENT", "PAID", "VOID"]
        for i in range(60):
            org = "org_a" if i % 3 else "org_b"
            await conn.execute(
                text(
                    "INSERT INTO loads (id, org_id, status, load_type, requires_manual_review, created_at, updated_at) VALUES (:i, :o, :s, :t, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"i": i + 1, "o": org, "s": statuses[i % 4], "t": types[i % 3]},
            )
            if i % 2:
                await conn.execute(
                    text(
                        "INSERT INTO invoices (org_id, load_id, status, created_at, updated_at) VALUES (:o, :l, :s, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                    ),
                    {"o": org, "l": i + 1, "s": invoice_statuses[i % 6]},
                )
    await engine.dispose()

    await upgrade_async(url)

    db = Database(url)
    try:
        for org in ("org_a", "org_b"):
            counts, version = await stored(db, org)
            assert counts == await recount(db, org)
            assert sum(counts.values()) > 0 and version == 1
            # 0005 (money): invoices billed before it are billed at 0.00 on the day of their last
            # change; the money totals, revenue months and receivables are filled from them
            await assert_exact(db, org)
            months, _, _, _ = await money_rows(db, org)
            assert (
                sum(count for count, *_ in months.values())
                == counts["invoices_billed"] + counts["invoices_pending_payment"] + counts["invoices_paid"]
            )
        counts, version = await stored(db, "org_c")
        assert set(counts.values()) == {0} and version == 0
    finally:
        await db.dispose()


@pytest.mark.slow
def test_processes_started_together_do_not_race_migrations(databases: Databases) -> None:
    """Four `main.py migrate` at the same moment on an empty database: all succeed, once."""
    import os
    import subprocess
    import sys

    from tests.server import ROOT

    url = databases.empty()
    env = {**os.environ, "TALLY_DATABASE_URL": url}
    processes = [
        subprocess.Popen(
            [sys.executable, "main.py", "migrate"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    assert sum("Running upgrade  -> 0001" in out for out in outputs) == 1


async def test_0006_and_0007_rebuild_the_money_tables_without_losing_a_row(api: Api, db: Database) -> None:
    """0006 clusters the money tables by key on SQLite (WITHOUT ROWID; nothing on PostgreSQL);
    0007 drops the partial indexes of receivables and receivable_days (both databases). Down to
    0006, then 0005, and up again, every money row and aggregate is what it was."""
    for amount, paid in (("1250.50", "250.50"), ("99.99", None), ("10.00", "10.00")):
        load = await create_load(api)
        invoice = await create_invoice(api, load["id"])
        await api.ok(
            "mutation($i: ID!, $a: Money!) { setInvoiceAmount(id: $i, amount: $a) { id } }", i=invoice["id"], a=amount
        )
        await api.ok(
            'mutation($i: ID!) { updateInvoiceStatus(id: $i, status: BILLED, invoiceDate: "2026-03-14") { id } }',
            i=invoice["id"],
        )
        if paid:
            await api.ok(
                "mutation($i: ID!, $a: Money!) { recordPayment(invoiceId: $i, amount: $a) { id } }",
                i=invoice["id"],
                a=paid,
            )
    before = await money_rows(db, "org_a")
    assert before[1], "an open balance to keep"
    clustered, indexes = _money_schema(db)
    assert clustered in ({True}, None) and (indexes is None or len(indexes) == 1)  # the ranking index
    assert await _partial_indexes(db) == set()

    await asyncio.to_thread(command.downgrade, alembic_config(db.url), "0006")
    assert await _partial_indexes(db) == {"ix_receivables_open", "ix_receivable_days_open"}
    assert await money_rows(db, "org_a") == before
    partial_too = _money_schema(db)[1]
    await asyncio.to_thread(command.downgrade, alembic_config(db.url), "0005")
    assert _money_schema(db) in (({False}, partial_too), (None, None))
    assert await money_rows(db, "org_a") == before
    await upgrade_async(db.url)
    assert _money_schema(db) == (clustered, indexes)  # the same indexes, on the tables of their name
    assert await money_rows(db, "org_a") == before
    await assert_exact(db, "org_a")


MONEY_TABLES = "('revenue_months', 'receivables', 'receivable_days', 'customer_balances')"


async def _partial_indexes(db: Database) -> set[str]:
    """The names of the `balance <> 0` indexes on the money tables, on either database."""
    sqlite = make_url(db.url).get_backend_name() == "sqlite"
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%balance <> 0%'"
        if sqlite
        else "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%balance <> 0%'"
    )
    engine = create_engine(db.url)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(text(query))).scalars())
    finally:
        await engine.dispose()


def _money_schema(db: Database) -> tuple[set[bool], set[str]] | tuple[None, None]:
    """Whether each money table is WITHOUT ROWID, and their indexes' SQL (None, None on PostgreSQL,
    which has no rowids)."""
    path = make_url(db.url).database
    if make_url(db.url).get_backend_name() != "sqlite" or path is None:
        return None, None
    with closing(sqlite3.connect(path)) as connection:
        tables = connection.execute(
            f"SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN {MONEY_TABLES}"
        ).fetchall()
        indexes = connection.execute(
            f"SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN {MONEY_TABLES} AND sql IS NOT NULL"
        ).fetchall()
    assert len(tables) == 4
    return {sql.rstrip().endswith("WITHOUT ROWID") for (sql,) in tables}, {sql for (sql,) in indexes}
