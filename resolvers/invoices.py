"""Invoice reads and writes: single and bulk status changes, voids, deletes (money: resolvers/money.py)."""

from __future__ import annotations

from datetime import date

import strawberry

from db import invoices, models, queries
from db.errors import BadInput
from db.money import parse_cents
from schema.context import Info
from schema.enums import InvoiceStatus
from schema.inputs import CreateInvoiceInput
from schema.scalars import Date
from schema.types import (
    BulkResult,
    DeleteResult,
    Invoice,
    InvoiceConnection,
    OrganizationStats,
    PageInfo,
)


async def invoice(info: Info, id: strawberry.ID) -> Invoice | None:
    scope = info.context.principal.scope
    row = await info.context.db.read(lambda s: queries.find(s, models.Invoice, id, scope))
    return Invoice.of(row) if row else None


async def invoices_page(
    info: Info,
    org_id: strawberry.ID,
    status: InvoiceStatus | None = None,
    first: int | None = 50,
    after: str | None = None,
) -> InvoiceConnection:
    filters = {"status": status.value if status else None}
    rows, has_next = await info.context.db.read(
        lambda s: queries.page(s, models.Invoice, org_id, filters, 50 if first is None else first, after)
    )
    end = queries.encode_cursor(rows[-1].id) if rows else None
    return InvoiceConnection(
        nodes=[Invoice.of(r) for r in rows], page_info=PageInfo(has_next_page=has_next, end_cursor=end)
    )


async def create_invoice(info: Info, input: CreateInvoiceInput) -> Invoice:
    scope = info.context.principal.scope
    status = (input.status or InvoiceStatus.DRAFT).value
    amount = None if input.amount is None else parse_cents(input.amount, "amount")
    row = await info.context.db.write(
        lambda s: invoices.create_invoice(s, input.load_id, status, input.missing_data_reason, scope, amount)
    )
    return Invoice.of(row)


async def update_invoice_status(
    info: Info, id: strawberry.ID, status: InvoiceStatus, invoice_date: Date | None = None
) -> Invoice:
    """`invoiceDate`: the date a DRAFT -> BILLED move bills on (default: today, UTC); other moves ignore it."""
    scope = info.context.principal.scope
    row = await info.context.db.write_row(lambda: invoices.set_invoice_status(id, status.value, scope, invoice_date))
    return Invoice.of(row)


async def _bulk(
    info: Info, ids: list[strawberry.ID], status: str, reason: str | None, invoice_date: date | None = None
) -> BulkResult:
    scope = info.context.principal.scope
    if len(ids) > info.context.limits.bulk_ids:
        raise BadInput(f"At most {info.context.limits.bulk_ids} ids per request")
    outcome, stats = await info.context.db.write_with_stats(
        lambda s: invoices.bulk_set_invoice_status(
            s, list(ids), status, scope, void_reason=reason, invoice_date=invoice_date
        ),
        lambda outcome: outcome.org_id,
    )
    return BulkResult(updated=outcome.updated, unchanged=outcome.unchanged, stats=OrganizationStats.of(stats))


async def bulk_update_invoice_status(
    info: Info, ids: list[strawberry.ID], status: InvoiceStatus, invoice_date: Date | None = None
) -> BulkResult:
    return await _bulk(info, ids, status.value, None, invoice_date)


async def bulk_void_invoices(info: Info, ids: list[strawberry.ID], reason: str | None = None) -> BulkResult:
    return await _bulk(info, ids, "VOID", reason)


async def delete_invoice(info: Info, id: strawberry.ID) -> DeleteResult:
    scope = info.context.principal.scope
    row, stats = await info.context.db.write_with_stats(
        lambda s: invoices.delete_invoice(s, id, scope), lambda row: row.org_id
    )
    return DeleteResult(id=strawberry.ID(str(row.id)), stats=OrganizationStats.of(stats))
