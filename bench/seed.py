"""The data: a SQLite file migrated by Tally's migrations and filled in bulk through sqlite3 (no ORM, no
aggregate hooks; each org's `organization_stats` row written from a recount), and what the scenarios
read from a database of either kind through the app (OPEN loads, the drift of the stored counters)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bench.common import human
from db.aggregates import LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.migrate import upgrade
from db.models import Load
from db.recalculation import drift_report
from db.unit_of_work import Database

# Status of load number x (1-based) within its org: 40% OPEN, 30% ASSIGNED, 20% COMPLETED, 10% CANCELED;
# then the other columns (load_type: 50% CONTRACT, 30% SPOT, 20% UNMAPPED).
STATUS_SQL = (
    "CASE WHEN x % 10 < 4 THEN 'OPEN' WHEN x % 10 < 7 THEN 'ASSIGNED' "
    "WHEN x % 10 < 9 THEN 'COMPLETED' ELSE 'CANCELED' END"
)
TYPE_SQL = "CASE WHEN (x / 10) % 10 < 5 THEN 'CONTRACT' WHEN (x / 10) % 10 < 8 THEN 'SPOT' ELSE 'UNMAPPED' END"
LOAD_COLUMNS = (
    "org_id, status, load_type, requires_manual_review, load_number, hcr, trip_number, created_at, updated_at"
)
LOAD_VALUES = f"{TYPE_SQL}, false, 'L' || x, 'HCR' || (x % 997), 'T' || (x % 31)"
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


def org_name(size: int, copy: int = 1) -> str:
    """org_10k, then org_10k_2, org_10k_3, ... for more orgs of the same size."""
    return f"org_{human(size)}" + (f"_{copy}" if copy > 1 else "")


def seed(path: Path, copies: dict[int, int]) -> Seeded:
    """A fresh database at `path` holding `copies[size]` orgs of each size, plus the mutation org."""
    started = time.perf_counter()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    orgs = {org_name(size, k): size for size, n in copies.items() for k in range(1, n + 1)}
    orgs[MUTATION_ORG] = MUTATION_ORG_LOADS
    counters = {f"status = '{v}'": c for v, c in LOAD_STATUS_COUNTERS.items()}
    counters |= {f"load_type = '{v}'": c for v, c in LOAD_TYPE_COUNTERS.items()}
    recounts = ", ".join(f"(SELECT count(*) FROM loads l WHERE l.org_id = o.org_id AND l.{c})" for c in counters)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-262144"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("BEGIN")
        # Indexes are rebuilt after the bulk insert (much faster than maintaining them row by row).
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='loads' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.executemany(
            "INSERT INTO organizations (org_id, name, created_at) VALUES (?, ?, ?)",
            [(org_id, f"Bench {org_id}", STAMP) for org_id in orgs],
        )
        conn.executemany(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            f"INSERT INTO loads ({LOAD_COLUMNS}) SELECT ?, {STATUS_SQL}, {LOAD_VALUES}, ?, ? FROM n",
            [(size, org_id, STAMP, STAMP) for org_id, size in orgs.items()],
        )
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("DELETE FROM organization_stats")
        conn.execute(
            f"INSERT INTO organization_stats (org_id, {', '.join(counters.values())}, version, updated_at, "
            f"last_recalculated_at) SELECT o.org_id, {recounts}, 1, ?, ? FROM organizations o",
            (STAMP, STAMP),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Seeded(path, url, orgs, time.perf_counter() - started, path.stat().st_size)


@asynccontextmanager
async def database(url: str, **options: Any) -> AsyncIterator[Database]:
    db = Database(url, **options)
    try:
        yield db
    finally:
        await db.dispose()


async def open_loads(url: str, org_id: str, count: int) -> list[int]:
    """The ids of the org's first `count` OPEN loads."""

    async def work(session: AsyncSession) -> list[int]:
        query = select(Load.id).where(Load.org_id == org_id, Load.status == "OPEN").order_by(Load.id).limit(count)
        return list(await session.scalars(query))

    async with database(url) as db:
        ids = await db.read(work)
    if len(ids) < count:
        raise RuntimeError(f"only {len(ids)} OPEN loads in {org_id}")
    return ids


async def audit(url: str, orgs: list[str], bypassing: list[int], changed_org: str = "") -> list[dict[str, Any]]:
    """Every org's stored counters against a recount (the app's drift report, one snapshot each):
    equal, but in `changed_org` off by the loads of `bypassing` (changed without the aggregate)
    left ASSIGNED."""
    query = select(func.count()).where(Load.status == "ASSIGNED", Load.id.in_(bypassing))
    async with database(url) as db:
        bypassed = await db.read(lambda session: session.scalar(query))
        checks = []
        for org in orgs:
            drift = await drift_report(db, org)
            allowed = bypassed if org == changed_org else 0
            want = {"loads_open": -allowed, "loads_assigned": allowed} if allowed else {}
            checks.append({"org": org, "ok": drift.delta == want, "bypassed": allowed, "delta": drift.delta,
                           "version": drift.stored.version, "actual": drift.actual})  # fmt: skip
    return checks
