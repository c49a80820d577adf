"""Seeding: one SQLite file, migrated by Tally's migrations, filled in bulk through sqlite3 (no ORM, no
aggregate hooks); each organization's `organization_stats` row is then written from a recount."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from bench.common import human
from db.aggregates import LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.migrate import upgrade

# Status of load number x (1-based) within its org: 40% OPEN, 30% ASSIGNED,
# 20% COMPLETED, 10% CANCELED. Type: 50% CONTRACT, 30% SPOT, 20% UNMAPPED.
STATUS_SQL = (
    "CASE WHEN x % 10 < 4 THEN 'OPEN' WHEN x % 10 < 7 THEN 'ASSIGNED' "
    "WHEN x % 10 < 9 THEN 'COMPLETED' ELSE 'CANCELED' END"
)
TYPE_SQL = "CASE WHEN (x / 10) % 10 < 5 THEN 'CONTRACT' WHEN (x / 10) % 10 < 8 THEN 'SPOT' ELSE 'UNMAPPED' END"
STAMP = "2026-01-01 00:00:00.000000"
MUTATION_ORG = "org_mut"
MUTATION_ORG_LOADS = 20_000


@dataclass(frozen=True)
class Seeded:
    path: Path
    url: str
    orgs: dict[str, int]  # org_id -> number of loads
    seconds: float
    file_bytes: int


def org_name(size: int) -> str:
    return f"org_{human(size)}"


def org_names(size: int, copies: int) -> list[str]:
    """`copies` orgs of one size: org_10k, org_10k_2, org_10k_3, ..."""
    return [org_name(size), *(f"{org_name(size)}_{i}" for i in range(2, copies + 1))]


def seed(path: Path, sizes: list[int], copies: dict[int, int] | None = None) -> Seeded:
    """A fresh database at `path` holding one org per size (`copies[size]` orgs of that
    size, if given), plus the mutation org."""
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    orgs = {org_id: size for size in sizes for org_id in org_names(size, (copies or {}).get(size, 1))} | {MUTATION_ORG: MUTATION_ORG_LOADS}
    counters = {**{f"status = '{v}'": c for v, c in LOAD_STATUS_COUNTERS.items()}, **{f"load_type = '{v}'": c for v, c in LOAD_TYPE_COUNTERS.items()}}
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-262144"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN")
        # Indexes are rebuilt after the bulk insert (much faster than maintaining them row by row).
        indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='loads' AND sql IS NOT NULL").fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.executemany("INSERT INTO organizations (org_id, name, created_at) VALUES (?, ?, ?)", [(org_id, f"Bench {org_id}", STAMP) for org_id in orgs])
        conn.executemany(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) INSERT INTO loads (org_id, status, load_type, requires_manual_review,"
            f" load_number, hcr, trip_number, created_at, updated_at) SELECT ?, {STATUS_SQL}, {TYPE_SQL}, 0, 'L' || x, 'HCR' || (x % 997), 'T' || (x % 31), ?, ? FROM n",
            [(size, org_id, STAMP, STAMP) for org_id, size in orgs.items()],
        )
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("DELETE FROM organization_stats")
        recounts = ", ".join(f"(SELECT count(*) FROM loads l WHERE l.org_id = o.org_id AND l.{where})" for where in counters)
        conn.execute(f"INSERT INTO organization_stats (org_id, {', '.join(counters.values())}, version, updated_at, last_recalculated_at) SELECT o.org_id, {recounts}, 1, ?, ? FROM organizations o", (STAMP, STAMP))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Seeded(path, url, orgs, time.perf_counter() - started, path.stat().st_size)


def open_loads(path: Path, org_id: str, count: int) -> list[int]:
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT id FROM loads WHERE org_id = ? AND status = 'OPEN' ORDER BY id LIMIT ?", (org_id, count)).fetchall()
    if len(rows) < count:
        raise RuntimeError(f"only {len(rows)} OPEN loads in {org_id}")
    return [row[0] for row in rows]


def recount(path: Path, org_id: str) -> dict[str, int]:
    """The load counters of one org counted from the loads table (GROUP BY)."""
    counts = dict.fromkeys([*LOAD_STATUS_COUNTERS.values(), *LOAD_TYPE_COUNTERS.values()], 0)
    with closing(sqlite3.connect(path)) as conn:
        for column, names in (("status", LOAD_STATUS_COUNTERS), ("load_type", LOAD_TYPE_COUNTERS)):
            for value, n in conn.execute(f"SELECT {column}, count(*) FROM loads WHERE org_id = ? GROUP BY {column}", (org_id,)):
                counts[names[value]] = n
    return counts


def stored(path: Path, org_id: str) -> tuple[dict[str, int], int]:
    """The load counters and version of the org's aggregate, summed over its rows."""
    columns = [*LOAD_STATUS_COUNTERS.values(), *LOAD_TYPE_COUNTERS.values()]
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute(f"SELECT {', '.join(f'sum({c})' for c in [*columns, 'version'])} FROM organization_stats WHERE org_id = ?", (org_id,)).fetchone()
    return dict(zip(columns, row[:-1], strict=True)), int(row[-1])
