"""The counted values, declared once.

Each enum lists the values of one counted column. Everything else is derived
from them: organization_stats' counter columns (db/models.py), the aggregate's
delta maps (db/aggregates.py), the GraphQL enums and count types (schema/) and,
through the schema, the dashboard's tiles. A new value is one enum member plus
a migration that adds its column (README, Architecture).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property


class LoadStatus(StrEnum):
    OPEN = "OPEN"
    ASSIGNED = "ASSIGNED"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


class LoadType(StrEnum):
    CONTRACT = "CONTRACT"
    SPOT = "SPOT"
    UNMAPPED = "UNMAPPED"


class InvoiceStatus(StrEnum):
    MISSING_DATA = "MISSING_DATA"
    DRAFT = "DRAFT"
    BILLED = "BILLED"
    PENDING_PAYMENT = "PENDING_PAYMENT"
    PAID = "PAID"
    VOID = "VOID"


@dataclass(frozen=True)
class CounterGroup:
    """The counters of one counted column (`table.column`): one per value of
    `values`, each a column of organization_stats named `<prefix>_<value>`."""

    values: type[StrEnum]
    table: str
    column: str
    prefix: str

    def counter(self, value: str) -> str:
        return f"{self.prefix}_{value.lower()}"

    @cached_property
    def counters(self) -> dict[str, str]:
        """The organization_stats column of each counted value."""
        return {value.value: self.counter(value.value) for value in self.values}

    @cached_property
    def fields(self) -> dict[str, str]:
        """The organization_stats column of each field of the GraphQL count type (snake case)."""
        return {value.value.lower(): self.counter(value.value) for value in self.values}


LOAD_STATUS = CounterGroup(LoadStatus, table="loads", column="status", prefix="loads")
LOAD_TYPE = CounterGroup(LoadType, table="loads", column="load_type", prefix="type")
INVOICE_STATUS = CounterGroup(InvoiceStatus, table="invoices", column="status", prefix="invoices")
GROUPS = (LOAD_STATUS, LOAD_TYPE, INVOICE_STATUS)


def counter_names(groups: Iterable[CounterGroup] = GROUPS) -> tuple[str, ...]:
    """Every counter of `groups`, in declaration order."""
    return tuple(counter for group in groups for counter in group.counters.values())


# Money (money.md). Finalized invoices count in every money aggregate, open ones in receivables.
FINALIZED = frozenset({InvoiceStatus.BILLED, InvoiceStatus.PENDING_PAYMENT, InvoiceStatus.PAID})
OPEN = frozenset({InvoiceStatus.BILLED, InvoiceStatus.PENDING_PAYMENT})
# The org's money totals, in cents, summed in organization_stats beside the counters.
MONEY_TOTALS = ("money_invoiced", "money_collected")
