"""GraphQL object types, each built from a row or a stats snapshot."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Self, cast

import strawberry

from db import models
from db.aggregates import StatsSnapshot
from db.counters import INVOICE_STATUS, LOAD_STATUS, LOAD_TYPE, CounterGroup
from db.money import format_cents
from schema.enums import InvoiceStatus, LoadStatus, LoadType
from schema.scalars import Date, Money

# Field resolvers take the plain `strawberry.Info`: schema.context imports this module.
Info = strawberry.Info


def as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def maybe_utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value else None


class Counts:
    """A count type: one Int! field per value of `group` (db/counters.py), then `total`.

    Declared as `@strawberry.type class XCounts(Counts, group=...): pass`; the fields
    are the group's values in snake case (`MISSING_DATA` -> `missing_data` -> `missingData`).
    """

    group: ClassVar[CounterGroup]

    def __init_subclass__(cls, group: CounterGroup, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.group = group
        cls.__annotations__ = {**dict.fromkeys(group.fields, int), "total": int}

    @classmethod
    def of(cls, s: StatsSnapshot) -> Self:
        counts = {field: s.counts[counter] for field, counter in cls.group.fields.items()}
        counts["total"] = sum(counts.values())
        return cls(**counts)


@strawberry.type
class LoadStatusCounts(Counts, group=LOAD_STATUS):
    pass


@strawberry.type
class LoadTypeCounts(Counts, group=LOAD_TYPE):
    pass


@strawberry.type
class InvoiceStatusCounts(Counts, group=INVOICE_STATUS):
    pass


# Cents as a Money string. Money is a NewType of str, so this is format_cents itself: no call
# in between (an aging answer formats ~100 amounts).
money = cast(Callable[[int], Money], format_cents)


@strawberry.type
class MoneyTotals:
    invoiced: Money = strawberry.field(
        description="Sum of amounts of finalized invoices (BILLED, PENDING_PAYMENT, PAID)."
    )
    collected: Money = strawberry.field(description="Sum of paid amounts of finalized invoices.")
    outstanding: Money = strawberry.field(description="invoiced - collected: the open invoices' balances.")

    @classmethod
    def of(cls, s: StatsSnapshot) -> Self:
        invoiced, collected = s.counts["money_invoiced"], s.counts["money_collected"]
        return cls(invoiced=money(invoiced), collected=money(collected), outstanding=money(invoiced - collected))


@strawberry.type(description="One row per organization, maintained in the same transaction as every write.")
class OrganizationStats:
    org_id: strawberry.ID
    loads: LoadStatusCounts
    load_types: LoadTypeCounts
    invoices: InvoiceStatusCounts
    money: MoneyTotals = strawberry.field(
        description="Maintained with the counts, in the same row read and the same event."
    )
    version: int = strawberry.field(
        description=("Increases by exactly 1 for every committed transaction that changed any count of this org.")
    )
    updated_at: datetime
    last_recalculated_at: datetime | None

    @classmethod
    def of(cls, s: StatsSnapshot) -> Self:
        return cls(
            org_id=strawberry.ID(s.org_id),
            loads=LoadStatusCounts.of(s),
            load_types=LoadTypeCounts.of(s),
            invoices=InvoiceStatusCounts.of(s),
            money=MoneyTotals.of(s),
            version=s.version,
            updated_at=maybe_utc(s.updated_at) or datetime(1970, 1, 1, tzinfo=UTC),
            last_recalculated_at=maybe_utc(s.last_recalculated_at),
        )


@strawberry.type
class Organization:
    org_id: strawberry.ID
    name: str
    created_at: datetime

    @classmethod
    def of(cls, row: models.Organization) -> Self:
        return cls(org_id=strawberry.ID(row.org_id), name=row.name, created_at=as_utc(row.created_at))


@strawberry.type
class Customer:
    id: strawberry.ID
    org_id: strawberry.ID
    name: str

    @classmethod
    def of(cls, row: models.Customer) -> Self:
        return cls(id=strawberry.ID(str(row.id)), org_id=strawberry.ID(row.org_id), name=row.name)


@strawberry.type
class Lane:
    id: strawberry.ID
    org_id: strawberry.ID
    hcr: str
    trip_number: str = strawberry.field(
        description="'*' marks a wildcard lane (any trip on this route): loads matched by it are SPOT."
    )
    rate: float | None
    rate_type: str | None
    is_wildcard: bool
    customer_id: strawberry.Private[int | None]

    @strawberry.field
    async def customer(self, info: Info) -> Customer | None:
        return await info.context.loaders.customer(self.customer_id)

    @classmethod
    def of(cls, row: models.Lane) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            org_id=strawberry.ID(row.org_id),
            hcr=row.hcr,
            trip_number=row.trip_number,
            rate=row.rate,
            rate_type=row.rate_type,
            is_wildcard=row.is_wildcard,
            customer_id=row.customer_id,
        )


@strawberry.type
class Load:
    id: strawberry.ID
    org_id: strawberry.ID
    status: LoadStatus
    load_type: LoadType
    requires_manual_review: bool
    external_id: str | None = strawberry.field(description="the FourKites shipment id, when imported")
    load_number: str | None
    hcr: str | None
    trip_number: str | None
    created_at: datetime
    updated_at: datetime
    row_id: strawberry.Private[int]
    customer_id: strawberry.Private[int | None]
    lane_id: strawberry.Private[int | None]

    @strawberry.field
    async def customer(self, info: Info) -> Customer | None:
        return await info.context.loaders.customer(self.customer_id)

    @strawberry.field
    async def lane(self, info: Info) -> Lane | None:
        return await info.context.loaders.lane(self.lane_id)

    @strawberry.field
    async def invoice(self, info: Info) -> Invoice | None:
        return await info.context.loaders.invoice_of_load(self.row_id)

    @classmethod
    def of(cls, row: models.Load | models.ReturnedRow) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            org_id=strawberry.ID(row.org_id),
            status=LoadStatus(row.status),
            load_type=LoadType(row.load_type),
            requires_manual_review=row.requires_manual_review,
            external_id=row.external_id,
            load_number=row.load_number,
            hcr=row.hcr,
            trip_number=row.trip_number,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            row_id=row.id,
            customer_id=row.customer_id,
            lane_id=row.lane_id,
        )


@strawberry.type
class Invoice:
    id: strawberry.ID
    org_id: strawberry.ID
    status: InvoiceStatus
    missing_data_reason: str | None
    void_reason: str | None
    created_at: datetime
    updated_at: datetime
    amount: Money | None
    paid_amount: Money
    balance: Money = strawberry.field(description="amount - paidAmount (0.00 while amount is null).")
    invoice_date: Date | None = strawberry.field(description="Set when billed.")
    load_id: strawberry.Private[int]

    @strawberry.field
    async def load(self, info: Info) -> Load:
        load = await info.context.loaders.load(self.load_id)
        assert load is not None  # an invoice always has its load (foreign key)
        return load

    @classmethod
    def of(cls, row: models.Invoice | models.ReturnedRow) -> Self:
        return cls(
            id=strawberry.ID(str(row.id)),
            org_id=strawberry.ID(row.org_id),
            status=InvoiceStatus(row.status),
            missing_data_reason=row.missing_data_reason,
            void_reason=row.void_reason,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            amount=None if row.amount_cents is None else money(row.amount_cents),
            paid_amount=money(row.paid_cents),
            balance=money((row.amount_cents or 0) - row.paid_cents),
            invoice_date=None if row.invoice_date is None else Date(row.invoice_date),
            load_id=row.load_id,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class LoadConnection:
    nodes: list[Load]
    page_info: PageInfo


@strawberry.type
class InvoiceConnection:
    nodes: list[Invoice]
    page_info: PageInfo


@strawberry.type
class CounterDrift:
    counter: str
    stored: int
    actual: int


@strawberry.type
class MoneyDrift:
    name: str
    stored: Money
    actual: Money


@strawberry.type
class DriftReport:
    org_id: strawberry.ID
    ok: bool
    drift: list[CounterDrift]
    checked_at: datetime
    money_drift: list[MoneyDrift] = strawberry.field(default_factory=list)


@strawberry.type
class RecalculationResult:
    org_id: strawberry.ID
    corrected: list[CounterDrift]
    stats: OrganizationStats
    corrected_money: list[MoneyDrift] = strawberry.field(default_factory=list)


@strawberry.type
class RevenueMonth:
    month: str = strawberry.field(description="YYYY-MM")
    invoiced_count: int
    invoiced: Money
    paid_count: int
    collected: Money


@strawberry.type
class AgingBuckets:
    current: Money
    days31to60: Money
    days61to90: Money
    over90: Money
    total: Money

    @classmethod
    def of(cls, cents: tuple[int, int, int, int]) -> Self:
        current, days31to60, days61to90, over90 = cents
        return cls(
            current=money(current), days31to60=money(days31to60), days61to90=money(days61to90),
            over90=money(over90), total=money(current + days31to60 + days61to90 + over90),
        )  # fmt: skip


@strawberry.type
class CustomerAging:
    customer: Customer | None = strawberry.field(description="null: invoices with no customer")
    invoices: int
    buckets: AgingBuckets


@strawberry.type
class ReceivablesAging:
    org_id: strawberry.ID
    as_of: Date
    buckets: AgingBuckets
    customers: list[CustomerAging]


@strawberry.type
class StatsCorrection:
    org_id: strawberry.ID
    counter: str
    stored: int
    actual: int
    corrected_at: datetime

    @classmethod
    def of(cls, row: models.StatsCorrection) -> Self:
        return cls(
            org_id=strawberry.ID(row.org_id),
            counter=row.counter,
            stored=row.stored,
            actual=row.actual,
            corrected_at=as_utc(row.corrected_at),
        )


@strawberry.type(description="One recalculation run: by the scheduler, the API or the CLI.")
class RecalculationRun:
    id: strawberry.ID
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    orgs_checked: int
    corrections: int
    error: str | None
    details: list[StatsCorrection] = strawberry.field(
        description="The corrections of this run (for an admin: of the admin's org only)."
    )


@strawberry.type
class ImportResult:
    shipment_id: strawberry.ID
    outcome: str = strawberry.field(description="CREATED, UPDATED, UNCHANGED or REJECTED")
    load: Load | None
    error: str | None


@strawberry.type
class LaneBackfillResult:
    lane: Lane
    promoted_loads: int
    promoted_invoices: int


@strawberry.type
class PromotionResult:
    promoted_loads: int


@strawberry.type
class BulkResult:
    updated: int
    unchanged: int
    stats: OrganizationStats


@strawberry.type
class DeleteResult:
    id: strawberry.ID
    stats: OrganizationStats
