"""The money aggregates' reads (money.md): revenue by month and receivables aging, each one
statement over the rows db/aggregates.py keeps, never the invoices."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, NamedTuple, cast

from sqlalchemy import BigInteger, Table, and_, bindparam, func, literal_column, null, select, true, union_all
from sqlalchemy import cast as sql_cast

from db.errors import BadInput
from db.models import Customer, CustomerBalance, OrganizationStats, Receivable, ReceivableDay, RevenueMonth
from db.unit_of_work import Database

MAX_MONTHS = 120
MAX_CUSTOMERS = 500
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
REVENUE = cast(Table, RevenueMonth.__table__)
OWED = cast(Table, Receivable.__table__)
STATS = cast(Table, OrganizationStats.__table__)
BY_DAY = cast(Table, ReceivableDay.__table__)
BY_CUSTOMER = cast(Table, CustomerBalance.__table__)
CUSTOMERS = cast(Table, Customer.__table__)
BUCKETS = ("current", "days31to60", "days61to90", "over90")


def months_between(first: str, last: str) -> list[str]:
    """Every month from `first` to `last` (YYYY-MM, inclusive, at most MAX_MONTHS)."""
    bounds = []
    for value, field in ((first, "from"), (last, "to")):
        match = _MONTH.fullmatch(value)
        if match is None:
            raise BadInput(f"{field} must be a month as YYYY-MM (got {value[:20]!r})")
        bounds.append(int(match.group(1)) * 12 + int(match.group(2)) - 1)
    start, end = bounds
    if end < start:
        raise BadInput("to must not be before from")
    if end - start + 1 > MAX_MONTHS:
        raise BadInput(f"At most {MAX_MONTHS} months per request")
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in range(start, end + 1)]


class MonthRevenue(NamedTuple):  # not a frozen dataclass: built per row of a read, and that is ~4x slower
    month: str
    invoiced_count: int = 0
    invoiced: int = 0
    paid_count: int = 0
    collected: int = 0


_REVENUE = select(REVENUE.c.month, REVENUE.c.invoiced_count, REVENUE.c.invoiced, REVENUE.c.paid_count,
                  REVENUE.c.collected).where(
    REVENUE.c.org_id == bindparam("org_id"), REVENUE.c.month.between(bindparam("first"), bindparam("last"))
)  # fmt: skip


async def revenue_by_month(db: Database, org_id: str, first: str, last: str) -> list[MonthRevenue]:
    months = months_between(first, last)
    rows = await db.read_rows(_REVENUE, {"org_id": org_id, "first": months[0], "last": months[-1]})
    found = {row.month: MonthRevenue(*row) for row in rows}
    return [found.get(month, MonthRevenue(month)) for month in months]


class Aging(NamedTuple):
    """Open balances (cents) by age: current (30 days or less, or dated after asOf), 31-60, 61-90, over 90."""

    buckets: tuple[int, int, int, int]
    invoices: int = 0
    customer_id: int | None = None  # None: the org's total, or invoices with no customer
    customer_name: str | None = None


# Constants in the SQL's text, not bound: 20 values per read instead of 32.
ZERO: Any = literal_column("0")
ONE: Any = literal_column("1")
# The closing bound of the last 90 days: every date is on or before it (asyncpg stores Python's
# last date, 9999-12-31, as 'infinity'). With it PostgreSQL's generic plan reads those days by index:
# for an open range (`>= $n`) it guesses a third of the org's days and scanned them all (1,095 for
# three years of history; 0.72 -> 0.64 ms a read at 1M invoices, session 21).
LAST_DAY: Any = literal_column("DATE 'infinity'")


def _integer(sum_: Any) -> Any:
    """PostgreSQL sums bigints as numeric: cast back, so every value arrives an int on both databases."""
    return sql_cast(sum_, BigInteger)


def _aging_statement(dialect: str) -> Any:
    """The org's total and its first customers (by balance, then name, no customer last), in one
    statement whose cost grows with customers and the last 90 days, not with invoices or history.

    Balances over 90 days old are what is left of a balance once the three recent buckets are
    taken out: the org's outstanding (its stats row) or the customer's balance (its ranking row).
    Dates are compared with `since_*` (asOf - 30, 60, 90 days, bound by the caller).

    On SQLite each recent bucket is one range sum over rows clustered by their key (org, customer,
    date): no row is tested against every bucket. On PostgreSQL the three buckets of the org and
    of each customer are one range scan of the last 90 days, each bucket a FILTER of it (the
    customers' joined LATERAL): 0.30-0.32 ms a read against 0.38-0.41 for three range sums (1M
    invoices, the plan kept). SQLite has no LATERAL, and there three range sums were the fastest
    form tried (docs/benchmarks-money.md)."""
    org: Any = bindparam("org_id")
    since: dict[int, Any] = {days: bindparam(f"since_{days}") for days in (30, 60, 90)}
    bounds = ((since[30], None), (since[60], since[30]), (since[90], since[60]))  # current, 31-60, 61-90

    def within(table: Table, start: Any, end: Any) -> list[Any]:
        dated = table.c.invoice_date
        return [dated >= start, *([] if end is None else [dated < end])]

    def recent(table: Table, *where: Any) -> list[Any]:
        def summed(start: Any, end: Any) -> Any:
            owed = select(_integer(func.coalesce(func.sum(table.c.balance), ZERO))).where(
                table.c.org_id == org, *where, *within(table, start, end)
            )
            return owed.scalar_subquery()

        return [summed(start, end).label(bucket) for (start, end), bucket in zip(bounds, BUCKETS[:3], strict=True)]

    def scanned_once(table: Table, *where: Any) -> Any:
        """The three recent buckets of `table`'s rows as one scan of the last 90 days (PostgreSQL)."""
        buckets = [
            _integer(func.coalesce(func.sum(table.c.balance).filter(and_(*within(table, start, end))), ZERO)).label(
                bucket
            )
            for (start, end), bucket in zip(bounds, BUCKETS[:3], strict=True)
        ]
        recent_days = (table.c.invoice_date >= since[90], table.c.invoice_date <= LAST_DAY)
        return select(*buckets).where(table.c.org_id == org, *where, *recent_days)

    outstanding = select(_integer(func.sum(STATS.c.money_invoiced - STATS.c.money_collected))).where(
        STATS.c.org_id == org
    )
    org_total = (ZERO.label("kind"), null().label("customer_key"), null().label("name"), ZERO.label("invoices"),
                 outstanding.scalar_subquery().label("balance"))  # fmt: skip
    if dialect == "postgresql":
        by_day = scanned_once(BY_DAY).subquery("by_day")
        total = select(*org_total, *(by_day.c[bucket] for bucket in BUCKETS[:3])).select_from(by_day)
    else:
        total = select(*org_total, *recent(BY_DAY))
    first = (
        select(BY_CUSTOMER.c.customer_key, BY_CUSTOMER.c.invoices, BY_CUSTOMER.c.balance, CUSTOMERS.c.name)
        .select_from(BY_CUSTOMER.outerjoin(CUSTOMERS, CUSTOMERS.c.id == BY_CUSTOMER.c.customer_key))
        .where(BY_CUSTOMER.c.org_id == org, BY_CUSTOMER.c.balance != ZERO)
        .order_by(BY_CUSTOMER.c.balance.desc(), (BY_CUSTOMER.c.customer_key == ZERO).asc(), CUSTOMERS.c.name)
        .limit(bindparam("first"))
        .cte("first_customers")
    )
    customer = (ONE.label("kind"), first.c.customer_key, first.c.name, first.c.invoices, first.c.balance)
    if dialect == "postgresql":
        owed = scanned_once(OWED, OWED.c.customer_key == first.c.customer_key).lateral("owed")
        by_customer = select(*customer, *(owed.c[bucket] for bucket in BUCKETS[:3])).select_from(
            first.join(owed, true())
        )
    else:
        by_customer = select(*customer, *recent(OWED, OWED.c.customer_key == first.c.customer_key))
    aged = union_all(total, by_customer).subquery("aged")
    recent_sum = aged.c.current + aged.c.days31to60 + aged.c.days61to90
    return select(
        aged.c.kind, aged.c.customer_key, aged.c.name, aged.c.invoices, aged.c.current, aged.c.days31to60,
        aged.c.days61to90, (func.coalesce(aged.c.balance, ZERO) - recent_sum).label("over90"),
    )  # fmt: skip


AGING = {dialect: _aging_statement(dialect) for dialect in ("sqlite", "postgresql")}


def aging_parameters(org_id: str, as_of: date, first: int) -> dict[str, Any]:
    """What `AGING` binds: the org, the cut, and the ages' edges (asOf - 30, 60, 90 days; no invoice
    is dated before the first day there is, so they stop there)."""
    edges = {f"since_{days}": date.fromordinal(max(1, as_of.toordinal() - days)) for days in (30, 60, 90)}
    return {"org_id": org_id, "first": first, **edges}


async def receivables_aging(db: Database, org_id: str, as_of: date, first: int) -> tuple[Aging, list[Aging]]:
    """The org's open balances by age on `as_of`, and the first `first` customers with a balance."""
    if not 0 <= first <= MAX_CUSTOMERS:
        raise BadInput(f"first must be between 0 and {MAX_CUSTOMERS}")
    rows = await db.read_rows(AGING[db.engine.dialect.name], aging_parameters(org_id, as_of, first))
    total = Aging((0, 0, 0, 0))
    customers: list[Aging] = []
    for kind, key, name, invoices, current, days31to60, days61to90, over90 in rows:  # ints, 0 for no sum
        if kind == 0:
            total = Aging((current, days31to60, days61to90, over90), invoices)
        else:
            customers.append(Aging((current, days31to60, days61to90, over90), invoices, key or None, name))
    customers.sort(key=lambda a: (-sum(a.buckets), a.customer_id is None, a.customer_name or ""))
    return total, customers
