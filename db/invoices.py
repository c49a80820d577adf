"""Invoice writes: statuses and money (money.md). The aggregates follow from the ORM changes and
the counted updates (db/aggregates.py); here only what each move does to the invoice itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.counters import FINALIZED, OPEN
from db.errors import BadInput, Conflict, InvalidTransition
from db.models import Invoice, Load, utcnow
from db.money import format_cents
from db.queries import lock_one, lock_rows
from db.row_writes import Lock, Plan, Update
from db.rules import INVOICE_TRANSITIONS, can_move, check_text, check_transition

MAX_REASON = 1000


@dataclass(frozen=True)
class BulkOutcome:
    org_id: str
    updated: int
    unchanged: int


def today() -> date:
    """ "Today" of money.md: the UTC date of the write."""
    return utcnow().date()


def _entered(
    invoice: Any, status: str, *, void_reason: str | None = None, invoice_date: date | None = None
) -> dict[str, Any]:
    """The columns `invoice` changes to enter `status` (none if it is there): the reasons,
    and money.md's rules. Entering a finalized status undated (DRAFT -> BILLED) dates it
    (`invoice_date`, else today) and prices it at 0.00 if it has no amount; PAID by status is
    paid in full; PAID -> PENDING_PAYMENT undoes the payment; a reset to DRAFT clears the
    payment and the date; VOID keeps every money column for the record."""
    current = invoice.status
    if current == status:
        return {}
    values: dict[str, Any] = {"status": status}
    if status != "MISSING_DATA":
        values["missing_data_reason"] = None
    if status == "VOID":
        values["void_reason"] = void_reason
        return values
    amount = invoice.amount_cents
    if status in FINALIZED and invoice.invoice_date is None:
        values["invoice_date"] = invoice_date or today()
        if amount is None:
            amount = values["amount_cents"] = 0
    if status == "PAID":
        values["paid_cents"] = amount or 0
    elif status == "PENDING_PAYMENT" and current == "PAID":
        values["paid_cents"] = 0
    elif status == "DRAFT" and current in OPEN:
        values.update(paid_cents=0, invoice_date=None)
    return values


async def create_invoice(
    session: AsyncSession,
    load_id: str,
    status: str,
    missing_data_reason: str | None,
    scope: str | None,
    amount_cents: int | None = None,
) -> Invoice:
    """An invoice of a load that has none. Created in a finalized status, it is dated today and
    priced at 0.00 if no amount is given (a PAID one is paid in full)."""
    reason = check_text(missing_data_reason, "missingDataReason", max_len=MAX_REASON)
    if status == "MISSING_DATA" and not (reason and reason.strip()):
        raise BadInput("missingDataReason is required for a MISSING_DATA invoice")
    load = await lock_one(session, Load, load_id, scope)
    existing = await session.scalar(select(Invoice.id).where(Invoice.load_id == load.id))
    if existing is not None:
        raise Conflict(f"Load {load_id} already has invoice {existing}", ids=[existing])
    new = SimpleNamespace(status=None, amount_cents=amount_cents, invoice_date=None)  # entering its first status
    values = {"amount_cents": amount_cents, "paid_cents": 0, **_entered(new, status)}
    invoice = Invoice(org_id=load.org_id, load_id=load.id, customer_id=load.customer_id, **values)
    invoice.missing_data_reason = reason if status == "MISSING_DATA" else None
    session.add(invoice)
    await session.flush()
    return invoice


def set_invoice_status(invoice_id: str, status: str, scope: str | None, invoice_date: date | None = None) -> Plan:
    invoice = yield Lock(Invoice, invoice_id, scope)
    check_transition("Invoice", INVOICE_TRANSITIONS, invoice.status, status, invoice_id)
    return Update(Invoice, invoice, _entered(invoice, status, invoice_date=invoice_date))


def set_invoice_amount(invoice_id: str, amount_cents: int, scope: str | None) -> Plan:
    """Price an invoice: only while MISSING_DATA or DRAFT (the amount is frozen once billed)."""
    invoice = yield Lock(Invoice, invoice_id, scope)
    if invoice.status not in ("MISSING_DATA", "DRAFT"):
        raise InvalidTransition(
            f"Invoice {invoice_id} is {invoice.status}: its amount can change only while MISSING_DATA or DRAFT "
            "(move it back to DRAFT first)",
            ids=[invoice_id],
        )
    return Update(Invoice, invoice, {"amount_cents": amount_cents})


def record_payment(invoice_id: str, amount_cents: int, scope: str | None) -> Plan:
    """A payment of a BILLED or PENDING_PAYMENT invoice, never more than its balance: PAID when
    nothing is left to pay, else PENDING_PAYMENT."""
    invoice = yield Lock(Invoice, invoice_id, scope)
    if invoice.status not in OPEN:
        raise InvalidTransition(
            f"Invoice {invoice_id} is {invoice.status}: payments are recorded only while BILLED or PENDING_PAYMENT",
            ids=[invoice_id],
        )
    balance = (invoice.amount_cents or 0) - invoice.paid_cents
    if amount_cents <= 0:
        raise BadInput("amount must be greater than 0.00", ids=[invoice_id])
    if amount_cents > balance:
        raise BadInput(
            f"amount {format_cents(amount_cents)} is more than the balance {format_cents(balance)} "
            f"of invoice {invoice_id}",
            ids=[invoice_id],
        )
    paid = invoice.paid_cents + amount_cents
    status = "PAID" if paid == invoice.amount_cents else "PENDING_PAYMENT"
    return Update(Invoice, invoice, {"paid_cents": paid, **_entered(invoice, status)})


async def bulk_set_invoice_status(
    session: AsyncSession,
    ids: list[str],
    status: str,
    scope: str | None,
    *,
    void_reason: str | None = None,
    invoice_date: date | None = None,
) -> BulkOutcome:
    """All or nothing: one org, every id known, every transition legal."""
    unique_ids = list(dict.fromkeys(ids))
    if not unique_ids:
        raise BadInput("ids must not be empty")
    reason = check_text(void_reason, "reason", max_len=MAX_REASON)
    invoices = await lock_rows(session, Invoice, unique_ids, scope)
    orgs = {invoice.org_id for invoice in invoices}
    if len(orgs) > 1:
        raise BadInput("ids must all belong to one organization", ids=unique_ids)
    illegal = [i for i in invoices if not can_move(INVOICE_TRANSITIONS, i.status, status)]
    if illegal:
        raise InvalidTransition(
            f"{len(illegal)} invoice(s) cannot move to {status}: " + ", ".join(f"{i.id} ({i.status})" for i in illegal),
            ids=[i.id for i in illegal],
        )
    changed = [i for i in invoices if i.status != status]
    for invoice in changed:
        for column, value in _entered(invoice, status, void_reason=reason, invoice_date=invoice_date).items():
            setattr(invoice, column, value)
    await session.flush()
    return BulkOutcome(orgs.pop(), len(changed), len(invoices) - len(changed))


async def delete_invoice(session: AsyncSession, invoice_id: str, scope: str | None) -> Invoice:
    invoice = await lock_one(session, Invoice, invoice_id, scope)
    await session.delete(invoice)
    await session.flush()
    return invoice
