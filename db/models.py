"""SQLAlchemy models. Statuses and load types are stored as the values of db/counters.py's enums (e.g. 'OPEN')."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.counters import GROUPS, MONEY_TOTALS, CounterGroup, counter_names

ReturnedRow = Row[Any]  # a row as a Core INSERT or UPDATE ... RETURNING gave it back (db.aggregates)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
Id = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    org_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"))
    name: Mapped[str] = mapped_column(String(200))


class Lane(Base):
    __tablename__ = "lanes"
    __table_args__ = (UniqueConstraint("org_id", "hcr", "trip_number"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    hcr: Mapped[str] = mapped_column(String(200))
    trip_number: Mapped[str] = mapped_column(String(200))
    rate: Mapped[float | None] = mapped_column(Float)
    rate_type: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    customer: Mapped[Customer | None] = relationship(lazy="raise")

    @property
    def is_wildcard(self) -> bool:
        return self.trip_number == "*"


class Load(Base):
    __tablename__ = "loads"
    __table_args__ = (
        UniqueConstraint("org_id", "external_source", "external_id"),
        Index("ix_loads_org_status", "org_id", "status", "id"),
        Index("ix_loads_org_type", "org_id", "load_type", "id"),
        Index("ix_loads_org_hcr", "org_id", "hcr"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"))
    status: Mapped[str] = mapped_column(String(20))
    load_type: Mapped[str] = mapped_column(String(20))
    requires_manual_review: Mapped[bool] = mapped_column(Boolean, default=False)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    lane_id: Mapped[int | None] = mapped_column(ForeignKey("lanes.id"))
    external_source: Mapped[str | None] = mapped_column(String(50))
    external_id: Mapped[str | None] = mapped_column(String(200))
    external_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    load_number: Mapped[str | None] = mapped_column(String(200))
    hcr: Mapped[str | None] = mapped_column(String(200))
    trip_number: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    customer: Mapped[Customer | None] = relationship(lazy="raise")
    lane: Mapped[Lane | None] = relationship(lazy="raise")
    invoice: Mapped[Invoice | None] = relationship(lazy="raise", back_populates="load", passive_deletes="all")


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (Index("ix_invoices_org_status", "org_id", "status", "id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"))
    load_id: Mapped[int] = mapped_column(ForeignKey("loads.id"), unique=True)
    status: Mapped[str] = mapped_column(String(20))
    missing_data_reason: Mapped[str | None] = mapped_column(String(1000))
    void_reason: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # Money (money.md), in integer cents. customer_id is the load's, copied when the invoice
    # is created (a load's customer never changes): receivables are kept per customer.
    amount_cents: Mapped[int | None] = mapped_column(BigInteger)
    paid_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    invoice_date: Mapped[date | None] = mapped_column(Date)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))

    load: Mapped[Load] = relationship(lazy="raise", back_populates="invoice")


class RevenueMonth(Base):
    """Finalized invoices of an org by month of invoice date. Written only by db/aggregates.py."""

    __tablename__ = "revenue_months"
    __table_args__ = {"sqlite_with_rowid": False}  # clustered by its key (migration 0006)

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    invoiced_count: Mapped[int] = mapped_column(BigInteger, default=0)
    invoiced: Mapped[int] = mapped_column(BigInteger, default=0)
    paid_count: Mapped[int] = mapped_column(BigInteger, default=0)
    collected: Mapped[int] = mapped_column(BigInteger, default=0)


class ReceivableDay(Base):
    """Open balances of an org per invoice date (every customer): the org's aging buckets read
    a row per date, however many invoices and customers. Written only by db/aggregates.py."""

    __tablename__ = "receivable_days"
    __table_args__ = {"sqlite_with_rowid": False}

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"), primary_key=True)
    invoice_date: Mapped[date] = mapped_column(Date, primary_key=True)
    invoices: Mapped[int] = mapped_column(BigInteger, default=0)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class CustomerBalance(Base):
    """Open balance of an org per customer (`customer_key` 0: none): the aging query's top customers
    are the first rows of an index, not a sum over every open invoice. Written only by db/aggregates.py."""

    __tablename__ = "customer_balances"
    __table_args__ = (Index("ix_customer_balances_rank", "org_id", "balance"), {"sqlite_with_rowid": False})

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"), primary_key=True)
    customer_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    invoices: Mapped[int] = mapped_column(BigInteger, default=0)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class Receivable(Base):
    """Open balances of an org per (customer, invoice date): `customer_key` is the customer's
    id, 0 for invoices with none. Rows back at zero stay: they add nothing to the
    aging query's range sums, and no index names the balance (migration 0007), so a change
    of it rewrites one row. Written only by db/aggregates.py."""

    __tablename__ = "receivables"
    __table_args__ = {"sqlite_with_rowid": False}

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"), primary_key=True)
    customer_key: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    invoice_date: Mapped[date] = mapped_column(Date, primary_key=True)
    invoices: Mapped[int] = mapped_column(BigInteger, default=0)
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class OrganizationStats(Base):
    """The aggregate row. Written only by db/aggregates.py. Its counter columns,
    one per counted value (db/counters.py), are added below the class."""

    __tablename__ = "organization_stats"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.org_id"), primary_key=True)
    # A hot org may spread its counters over several rows (TALLY_STATS_SHARDS);
    # its stats are the sums. With one shard, every org has exactly shard 0.
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    corrections: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_recalculated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def add_counter_columns(model: type[Base], groups: Iterable[CounterGroup] = GROUPS) -> None:
    """One BIGINT column, 0 by default, per counter of `groups`, added to a mapped class."""
    for name in counter_names(groups):
        setattr(model, name, mapped_column(BigInteger, nullable=False, default=0))


add_counter_columns(OrganizationStats)
for _name in MONEY_TOTALS:  # cents, over finalized invoices (money.md)
    setattr(OrganizationStats, _name, mapped_column(BigInteger, nullable=False, default=0))


class RecalculationRun(Base):
    """One recalculation of one or every org: by the scheduler, the API or the CLI."""

    __tablename__ = "recalculation_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    trigger: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    orgs_checked: Mapped[int] = mapped_column(Integer, default=0)
    corrections: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(2000))


class StatsCorrection(Base):
    """A counter that a recalculation found wrong: evidence of a bug, kept."""

    __tablename__ = "stats_corrections"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("recalculation_runs.id"), index=True)
    org_id: Mapped[str] = mapped_column(String(200), index=True)
    counter: Mapped[str] = mapped_column(String(50))
    stored: Mapped[int] = mapped_column(BigInteger)
    actual: Mapped[int] = mapped_column(BigInteger)
    corrected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SchedulerLease(Base):
    """Who may run a periodic job now, and when it is next due (one row per job)."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    next_run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
