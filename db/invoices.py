"""Invoice writes. Counters follow from the ORM changes and the counted updates (db/aggregates.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.errors import BadInput, Conflict, InvalidTransition
from db.models import Invoice, Load
from db.queries import lock_one, lock_rows
from db.row_writes import Lock, Plan, Update
from db.rules import INVOICE_TRANSITIONS, can_move, check_text, check_transition

MAX_REASON = 1000


@dataclass(frozen=True)
class BulkOutcome:
    org_id: str
    updated: int
    unchanged: int


def _entered(current: str, status: str, *, void_reason: str | None = None) -> dict[str, Any]:
    """The columns an invoice in `current` changes to enter `status` (none if it is there)."""
    if current == status:
        return {}
    values: dict[str, Any] = {"status": status}
    if status != "MISSING_DATA":
        values["missing_data_reason"] = None
    if status == "VOID":
        values["void_reason"] = void_reason
    return values


async def create_invoice(
    session: AsyncSession,
    load_id: str,
    status: str,
    missing_data_reason: str | None,
    scope: str | None,
) -> Invoice:
    reason = check_text(missing_data_reason, "missingDataReason", max_len=MAX_REASON)
    if status == "MISSING_DATA" and not (reason and reason.strip()):
        raise BadInput("missingDataReason is required for a MISSING_DATA invoice")
    load = await lock_one(session, Load, load_id, scope)
    existing = await session.scalar(select(Invoice.id).where(Invoice.load_id == load.id))
    if existing is not None:
        raise Conflict(f"Load {load_id} already has invoice {existing}", ids=[existing])
    invoice = Invoice(
        org_id=load.org_id,
        load_id=load.id,
        status=status,
        missing_data_reason=reason if status == "MISSING_DATA" else None,
    )
    session.add(invoice)
    await session.flush()
    return invoice


def set_invoice_status(invoice_id: str, status: str, scope: str | None) -> Plan:
    invoice = yield Lock(Invoice, invoice_id, scope)
    check_transition("Invoice", INVOICE_TRANSITIONS, invoice.status, status, invoice_id)
    return Update(Invoice, invoice, _entered(invoice.status, status))


async def bulk_set_invoice_status(
    session: AsyncSession,
    ids: list[str],
    status: str,
    scope: str | None,
    *,
    void_reason: str | None = None,
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
        for column, value in _entered(invoice.status, status, void_reason=reason).items():
            setattr(invoice, column, value)
    await session.flush()
    return BulkOutcome(orgs.pop(), len(changed), len(invoices) - len(changed))


async def delete_invoice(session: AsyncSession, invoice_id: str, scope: str | None) -> Invoice:
    invoice = await lock_one(session, Invoice, invoice_id, scope)
    await session.delete(invoice)
    await session.flush()
    return invoice
