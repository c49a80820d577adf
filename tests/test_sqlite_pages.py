"""SQLite's page size: a new file gets 1 KB pages; `python main.py vacuum` rewrites an older one."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

from db.engine import SQLITE_PAGE_SIZE
from db.migrate import upgrade_async
from db.unit_of_work import Database
from settings import Settings
from tests.helpers import Api, assert_exact, create_invoice, create_load, dump_tables, served_in_process
from tests.test_drift import cli

PAY = "mutation($i: ID!, $a: Money!) { recordPayment(invoiceId: $i, amount: $a) { id } }"
PRICE = "mutation($i: ID!, $a: Money!) { setInvoiceAmount(id: $i, amount: $a) { id } }"
BILL = 'mutation($i: ID!) { updateInvoiceStatus(id: $i, status: BILLED, invoiceDate: "2026-03-14") { id } }'


def pragma(path: Path, name: str) -> str | int:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore[no-any-return]


@asynccontextmanager
async def served(url: str) -> AsyncIterator[tuple[Api, Database]]:
    async with served_in_process(Settings(database_url=url, recalc_interval_seconds=0)) as (api, app):
        yield api, app.state.db


async def older_file(tmp_path: Path) -> tuple[Path, str]:
    """A migrated file with 4 KB pages (SQLite's default), as files made before Tally chose 1 KB."""
    path = tmp_path / "older.db"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA page_size=4096")
        connection.execute("PRAGMA journal_mode=WAL")
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    assert pragma(path, "page_size") == 4096
    return path, url


async def test_a_new_file_gets_1kb_pages_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    await upgrade_async(f"sqlite+aiosqlite:///{path}")
    assert SQLITE_PAGE_SIZE == 1024
    assert (pragma(path, "page_size"), pragma(path, "journal_mode")) == (1024, "wal")


async def test_vacuum_rewrites_an_older_file_with_1kb_pages_and_keeps_every_row(tmp_path: Path) -> None:
    path, url = await older_file(tmp_path)
    async with served(url) as (api, db):
        for amount, paid in (("1250.50", "250.50"), ("99.99", None)):
            invoice = await create_invoice(api, (await create_load(api))["id"])
            await api.ok(PRICE, i=invoice["id"], a=amount)
            await api.ok(BILL, i=invoice["id"])
            if paid:
                await api.ok(PAY, i=invoice["id"], a=paid)
        before = await dump_tables(db)

    done = cli(url, "vacuum")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: pages of 1024 bytes (were 4096)"
    assert (pragma(path, "page_size"), pragma(path, "journal_mode")) == (1024, "wal")
    async with served(url) as (api, db):
        assert await dump_tables(db) == before
        await assert_exact(db, "org_a")
        await api.ok(PAY, i=invoice["id"], a="1.00")  # the unpaid one: the rewritten file takes writes
        await assert_exact(db, "org_a")

    again = cli(url, "vacuum")
    assert (again.returncode, again.stdout.strip()) == (0, f"{path}: pages of 1024 bytes")


async def test_vacuum_changes_nothing_while_a_server_has_the_file_open(tmp_path: Path) -> None:
    path, url = await older_file(tmp_path)
    async with served(url) as (api, db):
        await create_load(api)
        done = cli(url, "vacuum")
        assert done.returncode == 2 and "another connection has it open" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert (pragma(path, "page_size"), pragma(path, "journal_mode")) == (4096, "wal")
        await create_load(api)
        await assert_exact(db, "org_a")


def test_vacuum_takes_only_an_existing_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not a database, but longer than a header of one " * 3)
    for url, reason in (
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", "only an SQLite file"),
        (f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}", "no database at"),
        (f"sqlite+aiosqlite:///{tmp_path}", "no database at"),
        (f"sqlite+aiosqlite:///{tmp_path / 'notes.db'}", "file is not a database"),
    ):
        done = cli(url, "vacuum")
        assert done.returncode == 2 and reason in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "missing.db").exists()
