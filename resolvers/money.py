"""Money (money.md): pricing, payments, revenue by month and receivables aging."""

from __future__ import annotations

from typing import Annotated

import strawberry

from db import invoices
from db.invoices import today
from db.money import parse_cents
from db.money_reads import receivables_aging as read_aging
from db.money_reads import revenue_by_month as read_revenue
from schema.context import Info
from schema.scalars import Date, Money
from schema.types import (
    AgingBuckets,
    Customer,
    CustomerAging,
    Invoice,
    ReceivablesAging,
    RevenueMonth,
    money,
)


async def set_invoice_amount(info: Info, id: strawberry.ID, amount: Money) -> Invoice:
    scope, cents = info.context.principal.scope, parse_cents(amount, "amount")
    row = await info.context.db.write_row(lambda: invoices.set_invoice_amount(id, cents, scope))
    return Invoice.of(row)


async def record_payment(info: Info, invoice_id: strawberry.ID, amount: Money) -> Invoice:
    scope, cents = info.context.principal.scope, parse_cents(amount, "amount")
    row = await info.context.db.write_row(lambda: invoices.record_payment(invoice_id, cents, scope))
    return Invoice.of(row)


async def revenue_by_month(
    info: Info, org_id: strawberry.ID, from_: Annotated[str, strawberry.argument(name="from")], to: str
) -> list[RevenueMonth]:
    months = await read_revenue(info.context.db, org_id, from_, to)
    return [
        RevenueMonth(
            month=m.month,
            invoiced_count=m.invoiced_count,
            invoiced=money(m.invoiced),
            paid_count=m.paid_count,
            collected=money(m.collected),
        )
        for m in months
    ]


async def receivables_aging(
    info: Info, org_id: strawberry.ID, as_of: Date | None = None, first: int | None = 20
) -> ReceivablesAging:
    day = as_of or today()
    total, customers = await read_aging(info.context.db, org_id, day, 20 if first is None else first)
    return ReceivablesAging(
        org_id=org_id,
        as_of=Date(day),
        buckets=AgingBuckets.of(total.buckets),
        customers=[
            CustomerAging(
                invoices=c.invoices,
                buckets=AgingBuckets.of(c.buckets),
                customer=None
                if c.customer_id is None
                else Customer(id=strawberry.ID(str(c.customer_id)), org_id=org_id, name=c.customer_name or ""),
            )
            for c in customers
        ],
    )
