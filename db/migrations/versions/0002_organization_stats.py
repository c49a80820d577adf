"""The aggregate table organization_stats, backfilled from the existing rows.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LOAD_STATUS = {"loads_open": "OPEN", "loads_assigned": "ASSIGNED", "loads_completed": "COMPLETED", "loads_canceled": "CANCELED"}
LOAD_TYPE = {"type_contract": "CONTRACT", "type_spot": "SPOT", "type_unmapped": "UNMAPPED"}
INVOICE_STATUS = {
    "invoices_missing_data": "MISSING_DATA",
    "invoices_draft": "DRAFT",
    "invoices_billed": "BILLED",
    "invoices_pending_payment": "PENDING_PAYMENT",
    "invoices_paid": "PAID",
    "invoices_void": "VOID",
}


def upgrade() -> None:
    counters = [*LOAD_STATUS, *LOAD_TYPE, *INVOICE_STATUS]
    op.create_table(
        "organization_stats",
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), primary_key=True),
        *(sa.Column(name, sa.BigInteger, nullable=False, server_default="0") for name in counters),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("last_recalculated_at", sa.DateTime(timezone=True)),
    )
    # Backfill: one row per existing org, counted from the source rows (a fresh
    # start at version 1 when the org has any rows, 0 otherwise).
    def count(table: str, column: str, value: str) -> str:
        return f"(SELECT COUNT(*) FROM {table} t WHERE t.org_id = o.org_id AND t.{column} = '{value}')"

    selects = [count("loads", "status", v) for v in LOAD_STATUS.values()]
    selects += [count("loads", "load_type", v) for v in LOAD_TYPE.values()]
    selects += [count("invoices", "status", v) for v in INVOICE_STATUS.values()]
    has_rows = "(CASE WHEN EXISTS (SELECT 1 FROM loads l WHERE l.org_id = o.org_id) THEN 1 ELSE 0 END)"
    op.execute(
        f"INSERT INTO organization_stats (org_id, {', '.join(counters)}, version, updated_at) "
        f"SELECT o.org_id, {', '.join(selects)}, {has_rows}, CURRENT_TIMESTAMP FROM organizations o"
    )


def downgrade() -> None:
    op.drop_table("organization_stats")
