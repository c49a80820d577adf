"""Recalculation: run history, recorded corrections, scheduler lease, correction epoch.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("organization_stats") as batch:
        batch.add_column(sa.Column("corrections", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "recalculation_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
        sa.Column("orgs_checked", sa.Integer, nullable=False, server_default="0"),
        sa.Column("corrections", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.String(2000)),
    )
    op.create_table(
        "stats_corrections",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", Id, sa.ForeignKey("recalculation_runs.id"), nullable=False, index=True),
        sa.Column("org_id", sa.String(200), nullable=False, index=True),
        sa.Column("counter", sa.String(50), nullable=False),
        sa.Column("stored", sa.BigInteger, nullable=False),
        sa.Column("actual", sa.BigInteger, nullable=False),
        sa.Column("corrected_at", TZ, nullable=False),
    )
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(50), primary_key=True),
        sa.Column("holder", sa.String(100)),
        sa.Column("expires_at", TZ),
        sa.Column("next_run_at", TZ, nullable=False),
    )
    # Due at once: the first server to start checks every org.
    op.execute("INSERT INTO scheduler_leases (name, next_run_at) VALUES ('recalculate', '1970-01-01 00:00:00')")


def downgrade() -> None:
    op.drop_table("scheduler_leases")
    op.drop_table("stats_corrections")
    op.drop_table("recalculation_runs")
    with op.batch_alter_table("organization_stats") as batch:
        batch.drop_column("corrections")
