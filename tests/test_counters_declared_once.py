"""Counters are declared once (db/counters.py): a new value is one enum member plus a migration.

The dry run edits a copy of the source tree exactly as the README's Architecture
section says (one enum member) and checks that everything else follows: the
model's columns, the delta map, the GraphQL enum and count type, the exported
SDL; then that the documented migration is all the database needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from db.aggregates import COUNTERS, READS
from db.counters import GROUPS
from db.engine import create_engine
from db.migrate import alembic_config
from db.models import Base, Invoice, Load, OrganizationStats
from tests.databases import Databases
from tests.server import ROOT

pytestmark = pytest.mark.slow  # a copy of the tree, subprocesses

NEW_MEMBER = '    ON_HOLD = "ON_HOLD"\n'
AFTER = '    ASSIGNED = "ASSIGNED"\n'  # LoadStatus's; the new member goes after it


def differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_the_model_matches_the_migrated_schema(databases: Databases) -> None:
    """The counter columns the model derives from the enums are the ones the migrations made."""
    engine = create_engine(databases.migrated())
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


def test_every_counter_is_derived_from_the_enums() -> None:
    expected = [f"{group.prefix}_{value.lower()}" for group in GROUPS for value in group.values]
    assert list(COUNTERS) == expected
    assert set(expected) <= set(OrganizationStats.__table__.c.keys())
    assert {
        Load: ("status", "load_type"),
        Invoice: ("status", "amount_cents", "paid_cents", "invoice_date", "customer_id"),
    } == READS


# Runs in the edited copy: what the one edit changed, before and after the documented migration.
DRY_RUN = textwrap.dedent(
    """
    import json, os, sys
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    import db.counters
    from types import SimpleNamespace
    from db.aggregates import COUNTERS, AggregateSession, StatsSnapshot, STATS_QUERY, count_inserted
    from db.migrate import upgrade
    from db.models import Base, Load, Organization, OrganizationStats
    from schema.types import OrganizationStats as StatsType

    path, migration = sys.argv[1], sys.argv[2]
    assert db.counters.__file__.startswith(os.getcwd()), db.counters.__file__  # the copy, not the repository

    def missing(engine):
        with engine.connect() as connection:
            return [
                [change[0], change[2], change[3].name]
                for change in compare_metadata(MigrationContext.configure(connection), Base.metadata)
            ]

    engine = create_engine(f"sqlite:///{path}")
    upgrade(f"sqlite+aiosqlite:///{path}")
    before = missing(engine)
    open(migration, "w").write(sys.stdin.read())
    upgrade(f"sqlite+aiosqlite:///{path}")
    after = missing(engine)

    with AggregateSession(engine) as session:
        session.add(Organization(org_id="org_a", name="A"))
        session.add(Load(org_id="org_a", status="ON_HOLD", load_type="SPOT"))
        session.commit()
    with engine.connect() as connection:
        row = connection.execute(STATS_QUERY, {"org_id": "org_a"}).one()
    loads = StatsType.of(StatsSnapshot.from_row(row)).loads
    deltas = {}
    count_inserted(deltas, Load, SimpleNamespace(org_id="org_a", status="ON_HOLD", load_type="SPOT"))
    print(json.dumps({
        "counters": list(COUNTERS),
        "columns": list(OrganizationStats.__table__.c.keys()),
        "deltas": sorted(deltas["org_a"][None]),
        "missing_before_migration": before,
        "missing_after_migration": after,
        "on_hold": loads.on_hold,
        "total": loads.total,
    }))
    """
)


def migration_adding(column: str, down_revision: str) -> str:
    """The migration the README documents for a new counted value."""
    return textwrap.dedent(
        f'''
        """{column}: the counter of a new counted value."""

        import sqlalchemy as sa
        from alembic import op

        revision = "dry_run"
        down_revision = "{down_revision}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
            # No row can have a value that did not exist: 0 is every org's exact count.
            op.add_column("organization_stats", sa.Column("{column}", sa.BigInteger, nullable=False, server_default="0"))


        def downgrade() -> None:
            op.drop_column("organization_stats", "{column}")
        '''
    )


def copy_of_the_source(target: Path) -> Path:
    ignored = shutil.ignore_patterns(
        ".git", ".venv", ".*cache", ".hypothesis", ".uv-bootstrap", "artifacts", "docs", "bench", "__pycache__", "*.db*"
    )
    shutil.copytree(ROOT, target, ignore=ignored)
    return target


def run_in(tree: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [sys.executable, *args], cwd=tree, input=stdin, capture_output=True, text=True, timeout=120, env=environment
    )


def test_a_new_status_is_one_enum_member_plus_a_migration(tmp_path: Path) -> None:
    tree = copy_of_the_source(tmp_path / "tree")
    counters = tree / "db" / "counters.py"
    source = counters.read_text()
    assert source.count(AFTER) == 1
    counters.write_text(source.replace(AFTER, AFTER + NEW_MEMBER))  # the one edit

    exported = run_in(tree, "main.py", "schema")
    assert exported.returncode == 0, exported.stderr
    old, new = (ROOT / "schema.graphql").read_text().splitlines(), exported.stdout.splitlines()
    assert [line for line in new if line not in old] == ["  ON_HOLD", "  onHold: Int!"]
    assert set(old) <= set(new)
    assert new.index("  ON_HOLD") == new.index("enum LoadStatus {") + 3
    assert new.index("  onHold: Int!") == new.index("type LoadStatusCounts {") + 3

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    migration = tree / "db" / "migrations" / "versions" / "dry_run_on_hold.py"
    database = tmp_path / "dry_run.db"
    dry_run = run_in(tree, "-c", DRY_RUN, str(database), str(migration), stdin=migration_adding("loads_on_hold", head))
    assert dry_run.returncode == 0, dry_run.stderr
    result = json.loads(dry_run.stdout.splitlines()[-1])

    assert result["counters"] == [*COUNTERS[:2], "loads_on_hold", *COUNTERS[2:]]
    assert "loads_on_hold" in result["columns"]
    assert result["deltas"] == ["loads_on_hold", "type_spot"]
    assert result["missing_before_migration"] == [["add_column", "organization_stats", "loads_on_hold"]]
    assert result["missing_after_migration"] == []
    assert (result["on_hold"], result["total"]) == (1, 1)
