"""Source tables: organizations, customers, lanes, loads, invoices.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("org_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "customers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.UniqueConstraint("org_id", "name"),
    )
    op.create_table(
        "lanes",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("customer_id", Id, sa.ForeignKey("customers.id")),
        sa.Column("hcr", sa.String(200), nullable=False),
        sa.Column("trip_number", sa.String(200), nullable=False),
        sa.Column("rate", sa.Float),
        sa.Column("rate_type", sa.String(50)),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("org_id", "hcr", "trip_number"),
    )
    op.create_table(
        "loads",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("load_type", sa.String(20), nullable=False),
        sa.Column("requires_manual_review", sa.Boolean, nullable=False),
        sa.Column("customer_id", Id, sa.ForeignKey("customers.id")),
        sa.Column("lane_id", Id, sa.ForeignKey("lanes.id")),
        sa.Column("external_source", sa.String(50)),
        sa.Column("external_id", sa.String(200)),
        sa.Column("external_updated_at", TZ),
        sa.Column("load_number", sa.String(200)),
        sa.Column("hcr", sa.String(200)),
        sa.Column("trip_number", sa.String(200)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("org_id", "external_source", "external_id"),
    )
    op.create_index("ix_loads_org_status", "loads", ["org_id", "status", "id"])
    op.create_index("ix_loads_org_type", "loads", ["org_id", "load_type", "id"])
    op.create_index("ix_loads_org_hcr", "loads", ["org_id", "hcr"])
    op.create_table(
        "invoices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("load_id", Id, sa.ForeignKey("loads.id"), nullable=False, unique=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("missing_data_reason", sa.String(1000)),
        sa.Column("void_reason", sa.String(1000)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_invoices_org_status", "invoices", ["org_id", "status", "id"])


def downgrade() -> None:
    for table in ("invoices", "loads", "lanes", "customers", "organizations"):
        op.drop_table(table)
