"""PostgreSQL: a status change's update and money upserts go with COMMIT in one round trip,
their values written into the SQL text (db/postgres/inlined.py). Each value must come back from the server as it
went in, whatever characters an org id holds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from db.postgres.inlined import literal
from db.unit_of_work import Database
from settings import Settings
from tests.helpers import Api, assert_exact, create_invoice, create_load, token

HOSTILE = ("o'rg", "o\\'rg", "org\\", "a'); DROP TABLE invoices; --", "$$x$$", "-- not a comment", "Zürich ☃", "''")
BILL = 'mutation($i: ID!) { updateInvoiceStatus(id: $i, status: BILLED, invoiceDate: "2026-03-14") { id } }'
PRICE = "mutation($i: ID!, $a: Money!) { setInvoiceAmount(id: $i, amount: $a) { id } }"
PAY = 'mutation($i: ID!) { recordPayment(invoiceId: $i, amount: "2.50") { id balance } }'


@pytest.fixture
def settings(database_url: str) -> Settings:
    """conftest's, with the driver path on whatever the environment says: it is the path that
    sends the batch (CI's second pass turns the fast paths off for the rest of the suite)."""
    return Settings(database_url=database_url, query_stats=True, recalc_interval_seconds=0, postgres_fast_paths=True)


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's simple protocol")
    return database_url


def test_literals_are_refused_for_what_has_no_unambiguous_text() -> None:
    assert [literal(v) for v in (None, True, 0, 7, -7, date(2024, 2, 29))] == [
        "NULL", "true", "0", "7", "(-7)", "DATE '2024-02-29'",
    ]  # fmt: skip
    assert literal("o'r\\g") == "E'o''r\\\\g'"
    assert literal(datetime(2024, 2, 29, 23, 59, 59, 7, tzinfo=UTC)) == "TIMESTAMPTZ '2024-02-29T23:59:59.000007+00:00'"
    for value in ("a\x00b", 1.5, datetime(2026, 1, 1), b"x"):  # a naive datetime: in whose time zone?
        with pytest.raises((ValueError, TypeError)):
            literal(value)


async def test_every_literal_comes_back_from_the_server_as_it_went_in(postgres_url: str) -> None:
    east = timezone(timedelta(hours=5, minutes=30))
    values: list[Any] = [
        *HOSTILE,
        None,
        True,
        -(2**62),
        2**62,
        date(2024, 2, 29),
        datetime(1999, 12, 31, 23, 0, 0, 1, east),
        date.min,
        date.max,
    ]
    connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        for day in (date.min, date(2024, 2, 29), date.max):  # the server stores what asyncpg would bind
            assert await connection.fetchval(f"SELECT {literal(day)}::text = $1::date::text", day), day
        for standard_strings, backslash_quote in (("on", "off"), ("off", "on")):  # E'' reads the same under each
            await connection.execute(f"SET standard_conforming_strings = {standard_strings}")
            await connection.execute(f"SET backslash_quote = {backslash_quote}")
            row = await connection.fetchrow("SELECT " + ", ".join(literal(v) for v in values))
            assert list(row) == values
    finally:
        await connection.close()


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements asyncpg sends, one entry per round trip."""
    sent: list[str] = []
    for name in ("fetchrow", "execute"):
        original = getattr(asyncpg.Connection, name)

        async def counted(self: Any, query: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            sent.append(query)
            return await _original(self, query, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, name, counted)
    yield sent


@pytest.mark.parametrize("org", ["org_a", HOSTILE[3], HOSTILE[1]])
async def test_a_payment_sends_its_update_and_four_money_rows_with_commit_in_one_round_trip(
    postgres_url: str, api: Api, db: Database, round_trips: list[str], org: str
) -> None:
    assert db.driver_row_writes
    api = api.as_(token(org, "admin"))
    customer = await api.ok('mutation($o: ID!) { createCustomer(orgId: $o, name: "C") { id } }', o=org)
    load = await create_load(api, org=org, customerId=customer["createCustomer"]["id"])
    invoice = await create_invoice(api, load["id"])
    await api.ok(PRICE, i=invoice["id"], a="10.00")
    await api.ok(BILL, i=invoice["id"])

    round_trips.clear()
    paid = await api.ok(PAY, i=invoice["id"])
    assert paid["recordPayment"]["balance"] == "7.50"
    begin, lock, last = round_trips
    assert (begin, lock.split()[0]) == ("BEGIN", "SELECT")
    assert "UPDATE invoices" in last[: last.index("; INSERT INTO")]  # first, with the counters' CTE
    tables = ["customer_balances", "receivable_days", "receivables", "revenue_months"]  # in a fixed order
    assert re.findall(r"; INSERT INTO (\w+)", last) == tables
    assert last.endswith("; COMMIT")
    await assert_exact(db, org)


LOAD = "query($i: ID!) { load(id: $i) { id status updatedAt } }"
ASSIGN = "mutation($i: ID!) { updateLoadStatus(id: $i, status: ASSIGNED) { id status updatedAt } }"


async def test_a_status_change_answers_the_row_as_the_server_stored_it(
    postgres_url: str, api: Api, db: Database, round_trips: list[str]
) -> None:
    """Its update goes with COMMIT, so nothing is returned: the answer is the locked row with the
    columns it set, which must be what a later read gets, to the microsecond."""
    load = await create_load(api)
    round_trips.clear()
    assigned = (await api.ok(ASSIGN, i=load["id"]))["updateLoadStatus"]
    assert [sql.split()[0] for sql in round_trips] == ["BEGIN", "SELECT", "WITH"]  # the counters' CTE first
    assert "UPDATE loads" in round_trips[-1] and round_trips[-1].endswith("; COMMIT")
    assert assigned == (await api.ok(LOAD, i=load["id"]))["load"] != load
    assert assigned["status"] == "ASSIGNED" and "." in assigned["updatedAt"]  # microseconds kept
    await assert_exact(db, "org_a")


async def test_a_connection_lost_while_commit_was_on_its_way_is_not_run_again(
    postgres_url: str, api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write may have committed: running it again could apply a payment twice. The caller
    gets the error; a connection lost before COMMIT is run again (test_row_writes.py)."""
    invoice = await create_invoice(api, (await create_load(api))["id"])
    await api.ok(PRICE, i=invoice["id"], a="10.00")
    await api.ok(BILL, i=invoice["id"])
    execute = asyncpg.Connection.execute

    async def lost_at_commit(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if query.endswith("COMMIT"):
            self.terminate()  # the server is gone before it answers
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "execute", lost_at_commit)
    body = await api.raw(PAY, i=invoice["id"])
    assert body["errors"][0]["extensions"]["code"] == "INTERNAL" and db.write_retries == 0
    monkeypatch.setattr(asyncpg.Connection, "execute", execute)
    assert (await api.ok(PAY, i=invoice["id"]))["recordPayment"]["balance"] == "7.50"  # the lost one never reached it
    await assert_exact(db, "org_a")
