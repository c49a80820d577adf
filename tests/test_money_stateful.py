"""The money aggregates under random sequences of every write that touches an invoice's money.

A hypothesis state machine drives the GraphQL API (HTTP through the ASGI app) on one
org: it creates invoices (priced or not, in any first status, with and without a
customer), imports CONTRACT loads whose lane has a rate, prices, bills with dates
(across month ends and a leap day) or without (today), pays partially and fully,
overpays, undoes payments, resets, voids, deletes invoices and loads, and moves
invoices in bulk. It keeps its own model of money.md to predict every answer and
every refusal's code, and after EVERY step checks that:

- the money totals, every revenue month and every receivables row equal both the
  model and a recount from the invoices (tests.helpers);
- `version` moved by exactly 1 when any count or money value changed, else not;
- revenueByMonth and receivablesAging answer what the model says.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from db.aggregates import COUNTED
from db.counters import FINALIZED, OPEN
from db.money import format_cents, month_of
from db.rules import INVOICE_TRANSITIONS
from main import create_app
from settings import Settings
from tests.databases import Databases
from tests.helpers import Api, money_recount, money_rows, money_totals, owed_rollups, token

ORG = "org_a"
BEARER = token(ORG, "admin")
DAYS = [date(2024, 2, 29), date(2025, 12, 31), date(2026, 1, 1), date(2026, 3, 14)]
AMOUNTS = ["0", "0.01", "10", "99.99", "1250.5"]
LANE_RATE = 1250.125  # priced at 1250.12 (half to even)
STATUSES = ("MISSING_DATA", "DRAFT", "BILLED", "PENDING_PAYMENT", "PAID", "VOID")
FIELDS = "id status amount paidAmount balance invoiceDate"
STATS = 'query { organizationStats(orgId: "org_a") { version money { invoiced collected outstanding } } }'
REVENUE = (
    'query { revenueByMonth(orgId: "org_a", from: "2024-01", to: "2026-12") '
    "{ month invoicedCount invoiced paidCount collected } }"
)
AGING = (
    'query { receivablesAging(orgId: "org_a", asOf: "2026-03-31", first: 500) '
    "{ buckets { total } customers { customer { id } invoices buckets { total } } } }"
)


@dataclass
class MInvoice:
    id: str
    load: str
    status: str
    customer: int | None
    amount: int | None = None
    paid: int = 0
    day: date | None = None

    def enter(self, status: str, day: date | None) -> None:
        """money.md's rules for a legal move (the model's own copy)."""
        previous, self.status = self.status, status
        if status == "VOID":
            return
        if status in FINALIZED and self.day is None:
            self.day = day or datetime.now(UTC).date()
            self.amount = 0 if self.amount is None else self.amount
        if status == "PAID":
            self.paid = self.amount or 0
        elif status == "PENDING_PAYMENT" and previous == "PAID":
            self.paid = 0
        elif status == "DRAFT" and previous in OPEN:
            self.paid, self.day = 0, None


def cents(amount: str) -> int:
    whole, _, fraction = amount.partition(".")
    return int(whole) * 100 + int(fraction.ljust(2, "0"))


class MoneyMachine(RuleBasedStateMachine):
    databases: ClassVar[Databases]
    shared_url: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.url = self.shared_url or self.databases.migrated()
        self.client: httpx.AsyncClient | None = None
        self.invoices: dict[str, MInvoice] = {}
        self.loads: list[str] = []
        self.customers: list[int | None] = [None]
        self.version = 0
        self.last: tuple[Any, ...] = ()
        self.shipments = 0

    @initialize(with_lane=st.booleans())
    def start_app(self, with_lane: bool) -> None:
        self.app = create_app(Settings(database_url=self.url, recalc_interval_seconds=0))
        self.db = self.app.state.db
        self.db.after_commit.remove(self.app.state.hub.publish)  # live events are tested elsewhere
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://tally")
        if self.shared_url:
            self.run(self.truncate())
        for name in ("Acme", "Globex"):
            made = self.ok(f'mutation {{ createCustomer(orgId: "org_a", name: "{name}") {{ id }} }}')
            self.customers.append(int(made["createCustomer"]["id"]))
        self.lane_rate = LANE_RATE if with_lane else None
        rate = f", rate: {LANE_RATE}" if with_lane else ""
        self.ok(
            f'mutation {{ createLane(input: {{orgId: "org_a", hcr: "H1", tripNumber: "1"{rate}}}) {{ lane {{ id }} }} }}'
        )
        self.version = self.stats()["version"]
        self.last = (self.money_model(), self.counts_model())

    async def truncate(self) -> None:
        async with self.db.engine.begin() as conn:
            tables = "invoices, loads, lanes, customers, organization_stats, revenue_months, receivables, organizations"
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"), execution_options={COUNTED: True})

    def teardown(self) -> None:
        async def close() -> None:
            if self.client is not None:
                await self.client.aclose()
                await self.db.dispose()

        try:
            self.run(close())
        finally:
            self.loop.close()
            if self.url.startswith("sqlite"):
                for suffix in ("", "-wal", "-shm"):
                    Path(self.url.removeprefix("sqlite+aiosqlite:///") + suffix).unlink(missing_ok=True)

    # Plumbing ---------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def call(self, query: str, **variables: Any) -> dict[str, Any]:
        return self.run(Api(self.client, BEARER).raw(query, **variables))  # type: ignore[arg-type]

    def ok(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.call(query, **variables)
        assert not body.get("errors"), (query, variables, body)
        return body["data"]

    def refused(self, code: str, query: str, **variables: Any) -> None:
        body = self.call(query, **variables)
        assert body.get("errors"), (f"expected {code}", query, variables, body)
        assert body["errors"][0]["extensions"]["code"] == code, (code, variables, body["errors"])

    def stats(self) -> dict[str, Any]:
        return self.ok(STATS)["organizationStats"]

    def check(self, got: dict[str, Any], invoice: MInvoice) -> None:
        expected = {
            "id": invoice.id,
            "status": invoice.status,
            "amount": None if invoice.amount is None else format_cents(invoice.amount),
            "paidAmount": format_cents(invoice.paid),
            "balance": format_cents((invoice.amount or 0) - invoice.paid),
            "invoiceDate": invoice.day and invoice.day.isoformat(),
        }
        assert got == expected, (got, expected)

    def pick(self, data: st.DataObject) -> MInvoice:
        return self.invoices[data.draw(st.sampled_from(sorted(self.invoices)))]

    # Rules ------------------------------------------------------------------

    @rule(
        status=st.sampled_from(STATUSES[:5]),
        amount=st.sampled_from([None, *AMOUNTS]),
        customer=st.integers(0, 2),
    )
    def create_invoice(self, status: str, amount: str | None, customer: int) -> None:
        customer_id = self.customers[customer]
        load_input: dict[str, Any] = {"orgId": ORG, **({"customerId": str(customer_id)} if customer_id else {})}
        load = self.ok("mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }", i=load_input)["createLoad"]
        self.loads.append(load["id"])
        self.version += 1  # a transaction of its own, which changed the load counts
        given = {"loadId": load["id"], "status": status, "missingDataReason": "r", "amount": amount}
        got = self.ok(f"mutation($i: CreateInvoiceInput!) {{ createInvoice(input: $i) {{ {FIELDS} }} }}", i=given)
        invoice = MInvoice(
            got["createInvoice"]["id"], load["id"], "MISSING_DATA", customer_id, amount and cents(amount)
        )
        invoice.enter(status, None)
        self.invoices[invoice.id] = invoice
        self.check(got["createInvoice"], invoice)

    @rule()
    def import_contract_load(self) -> None:
        self.shipments += 1
        shipment = {"shipmentId": f"S{self.shipments}", "hcr": "H1", "tripNumber": "1"}
        query = 'mutation($s: [ShipmentInput!]!) { importShipments(orgId: "org_a", shipments: $s) { load { id invoice { id } } } }'
        (got,) = self.ok(query, s=[shipment])["importShipments"]
        self.loads.append(got["load"]["id"])
        amount = None if self.lane_rate is None else 125012
        self.invoices[got["load"]["invoice"]["id"]] = MInvoice(
            got["load"]["invoice"]["id"], got["load"]["id"], "DRAFT", None, amount
        )

    @precondition(lambda self: self.invoices)
    @rule(data=st.data(), amount=st.sampled_from([*AMOUNTS, "-1", "1.234"]))
    def set_amount(self, data: st.DataObject, amount: str) -> None:
        invoice = self.pick(data)
        query = f"mutation($id: ID!, $a: Money!) {{ setInvoiceAmount(id: $id, amount: $a) {{ {FIELDS} }} }}"
        if amount.startswith("-") or len(amount.partition(".")[2]) > 2:  # a malformed amount: before anything
            self.refused("BAD_USER_INPUT", query, id=invoice.id, a=amount)
        elif invoice.status not in ("MISSING_DATA", "DRAFT"):
            self.refused("INVALID_TRANSITION", query, id=invoice.id, a=amount)
        else:
            invoice.amount = cents(amount)
            self.check(self.ok(query, id=invoice.id, a=amount)["setInvoiceAmount"], invoice)

    @precondition(lambda self: self.invoices)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), day=st.sampled_from([None, *DAYS]))
    def move(self, data: st.DataObject, status: str, day: date | None) -> None:
        invoice = self.pick(data)
        query = (
            "mutation($id: ID!, $s: InvoiceStatus!, $d: Date) "
            f"{{ updateInvoiceStatus(id: $id, status: $s, invoiceDate: $d) {{ {FIELDS} }} }}"
        )
        variables = {"id": invoice.id, "s": status, "d": day and day.isoformat()}
        if status != invoice.status and status not in INVOICE_TRANSITIONS[invoice.status]:
            self.refused("INVALID_TRANSITION", query, **variables)
            return
        if status != invoice.status:
            invoice.enter(status, day)
        self.check(self.ok(query, **variables)["updateInvoiceStatus"], invoice)

    @precondition(lambda self: self.invoices)
    @rule(data=st.data(), share=st.sampled_from(["all", "half", "cent", "over"]))
    def pay(self, data: st.DataObject, share: str) -> None:
        invoice = self.pick(data)
        balance = (invoice.amount or 0) - invoice.paid
        amount = {"all": balance, "half": balance // 2, "cent": 1, "over": balance + 1}[share]
        query = f"mutation($id: ID!, $a: Money!) {{ recordPayment(invoiceId: $id, amount: $a) {{ {FIELDS} }} }}"
        if invoice.status not in OPEN:
            self.refused("INVALID_TRANSITION", query, id=invoice.id, a=format_cents(amount))
        elif amount <= 0 or amount > balance:
            self.refused("BAD_USER_INPUT", query, id=invoice.id, a=format_cents(amount))
        else:
            invoice.paid += amount
            invoice.status = "PAID" if invoice.paid == invoice.amount else "PENDING_PAYMENT"
            self.check(self.ok(query, id=invoice.id, a=format_cents(amount))["recordPayment"], invoice)

    @precondition(lambda self: len(self.invoices) >= 2)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), day=st.sampled_from([None, *DAYS]))
    def bulk_move(self, data: st.DataObject, status: str, day: date | None) -> None:
        chosen = data.draw(st.lists(st.sampled_from(sorted(self.invoices)), min_size=1, max_size=4, unique=True))
        query = (
            "mutation($ids: [ID!]!, $s: InvoiceStatus!, $d: Date) "
            "{ bulkUpdateInvoiceStatus(ids: $ids, status: $s, invoiceDate: $d) { updated unchanged } }"
        )
        invoices = [self.invoices[i] for i in chosen]
        if any(i.status != status and status not in INVOICE_TRANSITIONS[i.status] for i in invoices):
            self.refused("INVALID_TRANSITION", query, ids=chosen, s=status, d=day and day.isoformat())
            return
        changed = [i for i in invoices if i.status != status]
        for invoice in changed:
            invoice.enter(status, day)
        got = self.ok(query, ids=chosen, s=status, d=day and day.isoformat())["bulkUpdateInvoiceStatus"]
        assert got == {"updated": len(changed), "unchanged": len(invoices) - len(changed)}

    @precondition(lambda self: self.invoices)
    @rule(data=st.data(), whole_load=st.booleans())
    def delete(self, data: st.DataObject, whole_load: bool) -> None:
        invoice = self.pick(data)
        if whole_load:
            self.ok("mutation($id: ID!) { deleteLoad(id: $id) { id } }", id=invoice.load)
            self.loads.remove(invoice.load)
        else:
            self.ok("mutation($id: ID!) { deleteInvoice(id: $id) { id } }", id=invoice.id)
        del self.invoices[invoice.id]

    # The invariant ----------------------------------------------------------

    def money_model(self) -> tuple[Any, ...]:
        """What the model says every money aggregate holds (the shapes of tests.helpers' money_rows)."""
        invoiced = collected = 0
        months: dict[str, list[int]] = {}
        owed: dict[tuple[int, str], list[int]] = {}
        for i in self.invoices.values():
            amount = i.amount or 0
            if i.status in FINALIZED:
                assert i.day is not None
                invoiced, collected = invoiced + amount, collected + i.paid
                month = months.setdefault(month_of(i.day), [0, 0, 0, 0])
                for k, v in enumerate((1, amount, int(i.paid > 0), i.paid)):
                    month[k] += v
            if i.status in OPEN and amount > i.paid:
                row = owed.setdefault((i.customer or 0, i.day.isoformat() if i.day else ""), [0, 0])
                row[0], row[1] = row[0] + 1, row[1] + amount - i.paid
        return (
            {"money_invoiced": invoiced, "money_collected": collected},
            {m: tuple(v) for m, v in months.items()},
            {k: (n, b) for k, (n, b) in owed.items()},
        )

    def counts_model(self) -> tuple[Any, ...]:
        return tuple(sorted(i.status for i in self.invoices.values())), len(self.loads)

    @invariant()
    def money_is_exact(self) -> None:
        if self.client is None:
            return
        model = self.money_model()
        totals, summed = self.run(money_totals(self.db, ORG))
        rows, recounted = self.run(money_rows(self.db, ORG)), self.run(money_recount(self.db, ORG))
        assert totals == summed == model[0], (totals, summed, model[0])
        assert rows == recounted == (model[1], model[2], *owed_rollups(model[2])), (rows, recounted, model[1:])
        # version: +1 per transaction that changed any count or money value (the counts are
        # the invoices' statuses and the loads, which this machine only adds and deletes)
        stats = self.stats()
        now = (model, self.counts_model())
        self.version += now != self.last
        self.last = now
        assert stats["version"] == self.version, (stats["version"], self.version)
        assert stats["money"]["invoiced"] == format_cents(model[0]["money_invoiced"])
        assert stats["money"]["outstanding"] == format_cents(model[0]["money_invoiced"] - model[0]["money_collected"])
        months = {m["month"]: m for m in self.ok(REVENUE)["revenueByMonth"]}
        for month, (count, invoiced, paid_count, collected) in model[1].items():
            if "2024-01" <= month <= "2026-12":
                expected = [count, format_cents(invoiced), paid_count, format_cents(collected)]
                got = months[month]
                assert [got["invoicedCount"], got["invoiced"], got["paidCount"], got["collected"]] == expected
        aging = self.ok(AGING)["receivablesAging"]
        assert aging["buckets"]["total"] == format_cents(sum(b for _, b in model[2].values()))


@pytest.mark.slow
def test_money_aggregates_under_random_writes(databases: Databases) -> None:
    MoneyMachine.databases = databases
    MoneyMachine.shared_url = databases.migrated() if databases.backend == "postgresql" else None
    run_state_machine_as_test(
        MoneyMachine,
        settings=settings(
            max_examples=25 if databases.backend == "sqlite" else 12,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_the_models_day_arithmetic_agrees_with_the_aging_buckets() -> None:
    """The machine's dates straddle month ends and a leap day (its reason to exist)."""
    assert {month_of(d) for d in DAYS} == {"2024-02", "2025-12", "2026-01", "2026-03"}
    assert DAYS[0] + timedelta(days=1) == date(2024, 3, 1)
