"""Money (money.md): invoice amounts, payments and dates; the money totals on
organization_stats, revenue by month and receivables by (customer, invoice date),
by date and by customer, backfilled from the invoices that exist.

Invoices billed before this revision carry no amount: they become billed at 0.00
(money.md: an invoice billed with no amount is billed at 0.00), PAID ones paid
in full (0.00), and each finalized one is dated by the UTC day of its last change.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FINALIZED = "('BILLED', 'PENDING_PAYMENT', 'PAID')"
OPEN = "('BILLED', 'PENDING_PAYMENT')"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(sa.Column("amount_cents", sa.BigInteger))
        batch.add_column(sa.Column("paid_cents", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("invoice_date", sa.Date))
        batch.add_column(sa.Column("customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")))
        batch.create_foreign_key("fk_invoices_customer_id_customers", "customers", ["customer_id"], ["id"])
    with op.batch_alter_table("organization_stats") as batch:
        for column in ("money_invoiced", "money_collected"):
            batch.add_column(sa.Column(column, sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "revenue_months",
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        *(
            sa.Column(c, sa.BigInteger, nullable=False, server_default="0")
            for c in ("invoiced_count", "invoiced", "paid_count", "collected")
        ),
        sa.PrimaryKeyConstraint("org_id", "month", name="pk_revenue_months"),
    )
    op.create_table(
        "receivables",
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("customer_key", sa.BigInteger, nullable=False),
        sa.Column("invoice_date", sa.Date, nullable=False),
        sa.Column("invoices", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("org_id", "customer_key", "invoice_date", name="pk_receivables"),
    )
    op.create_table(
        "receivable_days",
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("invoice_date", sa.Date, nullable=False),
        sa.Column("invoices", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("org_id", "invoice_date", name="pk_receivable_days"),
    )
    op.create_index(
        "ix_receivable_days_open",
        "receivable_days",
        ["org_id", "invoice_date"],
        postgresql_where=sa.text("balance <> 0"),
        sqlite_where=sa.text("balance <> 0"),
    )
    op.create_table(
        "customer_balances",
        sa.Column("org_id", sa.String(200), sa.ForeignKey("organizations.org_id"), nullable=False),
        sa.Column("customer_key", sa.BigInteger, nullable=False),
        sa.Column("invoices", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("org_id", "customer_key", name="pk_customer_balances"),
    )
    op.create_index("ix_customer_balances_rank", "customer_balances", ["org_id", "balance"])
    op.create_index(
        "ix_receivables_open",
        "receivables",
        ["org_id", "customer_key", "invoice_date"],
        postgresql_where=sa.text("balance <> 0"),
        sqlite_where=sa.text("balance <> 0"),
    )

    day = "(updated_at AT TIME ZONE 'UTC')::date" if postgres else "date(updated_at)"
    month = "to_char(invoice_date, 'YYYY-MM')" if postgres else "strftime('%Y-%m', invoice_date)"
    op.execute("UPDATE invoices SET customer_id = (SELECT customer_id FROM loads WHERE loads.id = invoices.load_id)")
    op.execute(f"UPDATE invoices SET amount_cents = 0, invoice_date = {day} WHERE status IN {FINALIZED}")
    op.execute("UPDATE invoices SET paid_cents = amount_cents WHERE status = 'PAID'")
    for column, summed in (("money_invoiced", "amount_cents"), ("money_collected", "paid_cents")):
        op.execute(
            f"UPDATE organization_stats SET {column} = (SELECT COALESCE(SUM({summed}), 0) FROM invoices "
            f"WHERE invoices.org_id = organization_stats.org_id AND status IN {FINALIZED}) WHERE shard = 0"
        )
    op.execute(
        "INSERT INTO revenue_months (org_id, month, invoiced_count, invoiced, paid_count, collected) "
        f"SELECT org_id, {month}, COUNT(*), SUM(amount_cents), SUM(CASE WHEN paid_cents > 0 THEN 1 ELSE 0 END), "
        f"SUM(paid_cents) FROM invoices WHERE status IN {FINALIZED} GROUP BY org_id, {month}"
    )
    op.execute(
        "INSERT INTO receivables (org_id, customer_key, invoice_date, invoices, balance) "
        "SELECT org_id, COALESCE(customer_id, 0), invoice_date, COUNT(*), SUM(amount_cents - paid_cents) "
        f"FROM invoices WHERE status IN {OPEN} AND amount_cents - paid_cents > 0 "
        "GROUP BY org_id, COALESCE(customer_id, 0), invoice_date"
    )
    op.execute(
        "INSERT INTO receivable_days (org_id, invoice_date, invoices, balance) "
        "SELECT org_id, invoice_date, SUM(invoices), SUM(balance) FROM receivables GROUP BY org_id, invoice_date"
    )
    op.execute(
        "INSERT INTO customer_balances (org_id, customer_key, invoices, balance) "
        "SELECT org_id, customer_key, SUM(invoices), SUM(balance) FROM receivables GROUP BY org_id, customer_key"
    )


def downgrade() -> None:
    op.drop_index("ix_receivables_open", "receivables")
    op.drop_table("receivables")
    op.drop_index("ix_customer_balances_rank", "customer_balances")
    op.drop_table("customer_balances")
    op.drop_index("ix_receivable_days_open", "receivable_days")
    op.drop_table("receivable_days")
    op.drop_table("revenue_months")
    with op.batch_alter_table("organization_stats") as batch:
        batch.drop_column("money_collected")
        batch.drop_column("money_invoiced")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_constraint("fk_invoices_customer_id_customers", type_="foreignkey")
        for column in ("customer_id", "invoice_date", "paid_cents", "amount_cents"):
            batch.drop_column(column)
