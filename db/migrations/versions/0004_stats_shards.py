"""organization_stats keyed by (org_id, shard): a hot org may spread its counters.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COUNTERS = [
    "loads_open", "loads_assigned", "loads_completed", "loads_canceled",
    "type_contract", "type_spot", "type_unmapped",
    "invoices_missing_data", "invoices_draft", "invoices_billed",
    "invoices_pending_payment", "invoices_paid", "invoices_void",
]
COLUMNS = ["org_id", *COUNTERS, "version", "corrections", "updated_at", "last_recalculated_at"]


def _create(name: str, with_shard: bool) -> None:
    key = ["org_id", "shard"] if with_shard else ["org_id"]
    op.create_table(
        name,
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        *([sa.Column("shard", sa.Integer, nullable=False, server_default="0")] if with_shard else []),
        *(sa.Column(c, sa.BigInteger, nullable=False, server_default="0") for c in COUNTERS),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("corrections", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.current_timestamp()),
        sa.Column("last_recalculated_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(*key, name=f"pk_{name}"),
    )


def _copy(source: str, target: str, sums: bool) -> None:
    columns = ", ".join(COLUMNS)
    if sums:
        values = ", ".join(
            ["org_id", *(f"SUM({c})" for c in [*COUNTERS, "version", "corrections"]), "MAX(updated_at)", "MAX(last_recalculated_at)"]
        )
        op.execute(f"INSERT INTO {target} ({columns}) SELECT {values} FROM {source} GROUP BY org_id")
    else:
        op.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {source}")


def upgrade() -> None:
    _create("organization_stats_sharded", with_shard=True)
    _copy("organization_stats", "organization_stats_sharded", sums=False)  # every row becomes shard 0
    op.drop_table("organization_stats")
    op.rename_table("organization_stats_sharded", "organization_stats")


def downgrade() -> None:
    _create("organization_stats_single", with_shard=False)
    _copy("organization_stats", "organization_stats_single", sums=True)
    op.drop_table("organization_stats")
    op.rename_table("organization_stats_single", "organization_stats")
