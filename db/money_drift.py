"""Drift of the money aggregates: the stored values and their recount from the invoices in ONE
statement (one snapshot on any database), with the stats row's correction epoch, so a
recalculation corrects money exactly as it corrects the counters (db/recalculation.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast

from db.counters import FINALIZED, OPEN
from db.models import CustomerBalance, Invoice, OrganizationStats, Receivable, ReceivableDay, RevenueMonth
from db.work import ReadSession

STATS = cast(Table, OrganizationStats.__table__)
INVOICES = cast(Table, Invoice.__table__)
REVENUE = cast(Table, RevenueMonth.__table__)
OWED = cast(Table, Receivable.__table__)
OWED_BY_DAY = cast(Table, ReceivableDay.__table__)
OWED_BY_CUSTOMER = cast(Table, CustomerBalance.__table__)
TOTAL_NAMES = {"money_invoiced": "money.invoiced", "money_collected": "money.collected"}
# Each keyed table's columns as reported (GraphQL names), and which of them are amounts (cents).
REPORTED = {
    "revenue_months": {"invoiced_count": "invoicedCount", "invoiced": "invoiced", "paid_count": "paidCount",
                       "collected": "collected"},
    "receivables": {"invoices": "invoices", "balance": "balance"},
    "receivable_days": {"invoices": "invoices", "balance": "balance"},
    "customer_balances": {"invoices": "invoices", "balance": "balance"},
}  # fmt: skip
KINDS = {"month": "revenue_months", "aging": "receivables", "day": "receivable_days", "customer": "customer_balances"}
AMOUNTS = frozenset({"invoiced", "collected", "balance", *TOTAL_NAMES})


@dataclass(frozen=True)
class RowDrift:
    """One value of a keyed money row that differs from its recount."""

    table: str
    key: tuple[Any, ...]  # beyond org_id: (month,) or (customer_key, invoice_date)
    column: str
    stored: int
    actual: int

    @property
    def name(self) -> str:
        field = REPORTED[self.table][self.column]
        if self.table == "revenue_months":
            return f"revenue[{self.key[0]}].{field}"
        if self.table == "receivable_days":
            return f"agingByDate[{self.key[0].isoformat()}].{field}"
        if self.table == "customer_balances":
            return f"agingByCustomer[{self.key[0] or 'none'}].{field}"
        customer, day = self.key
        return f"aging[{customer or 'none'}][{day.isoformat()}].{field}"


@dataclass(frozen=True)
class MoneyState:
    epoch: int  # organization_stats' corrections, summed, in the same snapshot
    stored: dict[str, int]  # the money totals
    actual: dict[str, int]
    rows: tuple[RowDrift, ...]


def _part(kind: str, k1: Any, k2: Any, *values: Any) -> Any:
    padded = [*values, *[literal(0)] * (4 - len(values))]
    return select(
        literal(kind).label("kind"),
        sql_cast(k1, String).label("k1") if k1 is not None else null().label("k1"),
        sql_cast(k2, String).label("k2") if k2 is not None else null().label("k2"),
        *(sql_cast(v, BigInteger).label(f"v{i}") for i, v in enumerate(padded)),
    )


def _constants(values: frozenset[str]) -> list[Any]:
    """Status names written into the SQL: a list of values would be an expanding parameter,
    which a statement prepared once for the driver (the recount thread's) cannot carry."""
    return [literal_column(f"'{value}'") for value in sorted(values)]


def _money_drift_query() -> Any:
    org: Any = bindparam("org_id")
    finalized = and_(INVOICES.c.org_id == org, INVOICES.c.status.in_(_constants(FINALIZED)))
    balance = INVOICES.c.amount_cents - INVOICES.c.paid_cents
    owing = and_(INVOICES.c.org_id == org, INVOICES.c.status.in_(_constants(OPEN)), balance > 0)
    month = func.substr(sql_cast(INVOICES.c.invoice_date, String), 1, 7)
    customer = func.coalesce(INVOICES.c.customer_id, 0)
    paid = INVOICES.c.paid_cents
    return union_all(
        _part("total", None, None, func.sum(STATS.c.money_invoiced), func.sum(STATS.c.money_collected),
              func.sum(STATS.c.corrections)).where(STATS.c.org_id == org),
        _part("total_actual", None, None, func.sum(INVOICES.c.amount_cents), func.sum(paid)).where(finalized),
        _part("month", REVENUE.c.month, None, REVENUE.c.invoiced_count, REVENUE.c.invoiced, REVENUE.c.paid_count,
              REVENUE.c.collected).where(REVENUE.c.org_id == org),
        _part("month_actual", month, None, func.count(), func.sum(INVOICES.c.amount_cents),
              func.sum(case((paid > 0, 1), else_=0)), func.sum(paid)).where(finalized).group_by(month),
        _part("aging", OWED.c.customer_key, OWED.c.invoice_date, OWED.c.invoices, OWED.c.balance).where(
            OWED.c.org_id == org),
        _part("aging_actual", customer, INVOICES.c.invoice_date, func.count(), func.sum(balance)).where(owing)
        .group_by(customer, INVOICES.c.invoice_date),
        _part("day", OWED_BY_DAY.c.invoice_date, None, OWED_BY_DAY.c.invoices, OWED_BY_DAY.c.balance).where(
            OWED_BY_DAY.c.org_id == org),
        _part("day_actual", INVOICES.c.invoice_date, None, func.count(), func.sum(balance)).where(owing)
        .group_by(INVOICES.c.invoice_date),
        _part("customer", OWED_BY_CUSTOMER.c.customer_key, None, OWED_BY_CUSTOMER.c.invoices,
              OWED_BY_CUSTOMER.c.balance).where(OWED_BY_CUSTOMER.c.org_id == org),
        _part("customer_actual", customer, None, func.count(), func.sum(balance)).where(owing).group_by(customer),
    )  # fmt: skip


MONEY_DRIFT_QUERY = _money_drift_query()


async def read_money(session: ReadSession, *, org_id: str) -> MoneyState:
    return money_state((await session.execute(MONEY_DRIFT_QUERY, {"org_id": org_id})).all())


def money_state(rows: Sequence[Sequence[Any]]) -> MoneyState:
    """The money drift from MONEY_DRIFT_QUERY's rows (SQLAlchemy's, or sqlite3's plain tuples)."""
    values: dict[str, dict[tuple[Any, ...], tuple[int, ...]]] = {}
    for kind, k1, k2, *sums in rows:
        values.setdefault(kind, {})[_key(kind, k1, k2)] = tuple(int(v or 0) for v in sums)
    stored_total = values.get("total", {}).get((), (0, 0, 0, 0))
    actual_total = values.get("total_actual", {}).get((), (0, 0, 0, 0))
    drift = [
        row
        for kind, table in KINDS.items()
        for row in _rows(table, values.get(kind, {}), values.get(f"{kind}_actual", {}))
    ]
    return MoneyState(
        epoch=stored_total[2],
        stored=dict(zip(TOTAL_NAMES, stored_total[:2], strict=True)),
        actual=dict(zip(TOTAL_NAMES, actual_total[:2], strict=True)),
        rows=tuple(drift),
    )


def _key(kind: str, k1: str | None, k2: str | None) -> tuple[Any, ...]:
    """A row's key beyond org_id, typed as the table's columns (the upsert binds them)."""
    if kind.startswith("month"):
        return (k1,)
    if kind.startswith("aging"):
        return (int(cast(str, k1)), date.fromisoformat(cast(str, k2)[:10]))
    if kind.startswith("day"):
        return (date.fromisoformat(cast(str, k1)[:10]),)
    if kind.startswith("customer"):
        return (int(cast(str, k1)),)
    return ()


def _rows(
    table: str, stored: Mapping[tuple[Any, ...], tuple[int, ...]], actual: Mapping[tuple[Any, ...], tuple[int, ...]]
) -> list[RowDrift]:
    """The values that differ; a missing row counts as zeros (a row back at zero is kept)."""
    columns = list(REPORTED[table])
    out = []
    for key in sorted({*stored, *actual}, key=repr):
        had, has = stored.get(key, (0,) * 4), actual.get(key, (0,) * 4)
        out += [RowDrift(table, key, c, had[i], has[i]) for i, c in enumerate(columns) if had[i] != has[i]]
    return out
